"""Quantization hook (§b.1-§b.7) on the real jsegnet21v2 deploy net of the fixtures (BVLC BN+Scale form)."""

import os
import re

import numpy as np
import pytest

from caffelite.errors import NetError
from caffelite.layer import TEST
from caffelite.proto import caffe_pb2

from conftest import FIXTURES
from helpers import load_npz

JSEG = os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy")


def _net(quantize=True, version="0.17", size=(64, 128), with_weights=True, edit=None):
    from caffelite import io, jacinto
    from caffelite.net import Net
    p = io.read_net(os.path.join(JSEG, "deploy.prototxt"))
    p.layer[0].input_param.shape[0].dim[:] = [1, 3, *size]
    p.quantize = quantize
    if edit:
        edit(p)
    net = Net(p, TEST)
    if with_weights:
        net.copy_from(os.path.join(JSEG, "weights.caffemodel.xz"))
    hook = jacinto.attach_quantization(net, version=version)
    return net, hook


def _input(size=(64, 128), seed=0):
    x = load_npz(os.path.join(JSEG, "input.npz"))["data"]
    return np.ascontiguousarray(x[:, :, :size[0], :size[1]]) if seed == 0 else \
        np.ascontiguousarray(np.roll(x, 7 * seed, axis=3)[:, :, :size[0], :size[1]])


def _quantized_tops(net):
    return [ly.param.name for ly in net.layers if ly.param.HasField("quantization_param")
            and any(q.quantize for q in ly.param.quantization_param.qparam_out)]


@pytest.fixture(scope="module")
def float_outputs():
    net, hook = _net(quantize=False)
    assert hook is None
    # layer by layer: a quantizing net's per-layer hooks switch inference fusion off, and the first forward
    # must equal the float forward exactly (fusion rounds conv -> BN -> ReLU chains differently)
    net.fusion = False
    outs = []
    for k in range(2):
        net.forward(data=_input(seed=k))
        outs.append(net.blobs["out_deconv_final_up8"].data.copy())
    return outs


def test_first_forward_equals_float_then_quantized(float_outputs):
    net, hook = _net()
    net.forward(data=_input(seed=0))
    np.testing.assert_array_equal(net.blobs["out_deconv_final_up8"].data, float_outputs[0])  # §b.2
    assert _quantized_tops(net) == []
    net.forward(data=_input(seed=1))
    q1 = net.blobs["out_deconv_final_up8"].data
    assert not np.array_equal(q1, float_outputs[1])
    # fake quantization changes the scores only a little
    err = np.abs(q1 - float_outputs[1]).max() / np.abs(float_outputs[1]).max()
    assert err < 0.1
    # §b.3: which outputs are quantized on jsegnet21v2 (conv/BN/Scale outputs are merged)
    names = _quantized_tops(net)
    relus = [ly.param.name for ly in net.layers if ly.param.type == "ReLU"]
    want = {"data/bias", "pool1", "pool2", "pool3", "pool4", "out5a_up2", "out3_out5_combined",
            "out_deconv_final_up2", "out_deconv_final_up4", "out_deconv_final_up8", *relus}
    assert set(names) == want and len(relus) == 17
    assert names[:4] == ["data/bias", "conv1a/relu", "conv1b/relu", "pool1"]
    # a quantized ReLU output sits on an 8-bit unsigned grid: x*scale are integers in [0, 255]
    i = net._layer_names.index("ctx_conv1/relu")
    qo = net.layers[i].param.quantization_param.qparam_out[0]
    assert qo.unsigned_quant and qo.bitwidth == 8
    y = net.blobs[net._top_ids[i][0]].data.astype(np.float64) * np.float32(qo.scale_target)
    assert np.allclose(y, np.round(y), atol=1e-3) and y.min() >= 0 and y.max() <= 255.001
    # weights quantized once (k == start) onto the 12-bit asymmetric grid, biases 16-bit
    j = net._layer_names.index("res3a_branch2a")
    qw = net.layers[j].param.quantization_param.qparam_w
    assert qw[0].quantize and qw[1].quantize and qw[0].bitwidth == 12 and qw[1].bitwidth == 16
    w = net.layers[j].blobs[0].data.astype(np.float64) * np.float32(qw[0].scale_target) + qw[0].offset
    assert np.allclose(w, np.round(w), atol=2e-2) and w.min() > -0.5 and w.max() < 4095.5


def test_ranges_running_average():
    net, hook = _net()
    i = net._layer_names.index("pool1")
    net.forward(data=_input(seed=0))
    m0 = float(net.blobs["pool1"].data.max())
    assert hook.r_out[i][0][1] == pytest.approx(1.25 * m0, rel=1e-6)  # forward 0: beta = 1, E = 1.25
    net.forward(data=_input(seed=1))
    m1 = float(net.blobs["pool1"].data.max())
    assert hook.r_out[i][0][1] == pytest.approx(0.99 * 1.25 * m0 + 0.01 * 1.25 * m1, rel=1e-5)
    # the scale used in forward 1 came from forward 0's range: 255 / max
    qo = net.layers[i].param.quantization_param.qparam_out[0]
    assert qo.scale_target == pytest.approx(255 / (1.25 * m0), rel=1e-5)


def test_freeze_save_load_ranges(tmp_path):
    net, hook = _net()
    net.forward(data=_input(seed=0))
    net.forward(data=_input(seed=1))
    path = tmp_path / "ranges.json"
    hook.save_ranges(path)
    # a fresh net with the loaded ranges gives the same output regardless of what it saw before
    outs = []
    for first in (2, 3):
        n2, h2 = _net()
        h2.load_ranges(path)
        n2.forward(data=_input(seed=first))
        n2.forward(data=_input(seed=1))
        outs.append(n2.blobs["out_deconv_final_up8"].data.copy())
    np.testing.assert_array_equal(outs[0], outs[1])
    assert h2.frozen


def test_loaded_ranges_quantize_like_the_calibrated_net(tmp_path):
    """Ranges saved after calibration and further forwards (the saved counter is past quantization_start) and
    loaded into a fresh net: its forwards are those of the calibrated net from forward quantization_start on,
    bit for bit (flags switched on, weights quantized at the end of the first one), not float forwards."""
    net, hook = _net()
    hook.freeze_ranges(after=hook.start)
    for k in range(hook.start):
        net.forward(data=_input(seed=k))
    ref = []
    for seed in (4, 5):
        net.forward(data=_input(seed=seed))
        ref.append(net.blobs["out_deconv_final_up8"].data.copy())
    net.forward(data=_input(seed=6))
    path = tmp_path / "ranges.json"
    hook.save_ranges(path)
    assert hook.infer_count > hook.start + 1
    fresh, fh = _net()
    fh.load_ranges(path)
    outs = []
    for seed in (4, 5):
        fresh.forward(data=_input(seed=seed))
        outs.append(fresh.blobs["out_deconv_final_up8"].data.copy())
    assert any(fh.flags_on) and fh.frozen
    for a, b in zip(outs, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    flt, _ = _net(quantize=False)
    flt.fusion = False
    flt.forward(data=_input(seed=5))
    assert not np.array_equal(outs[1], flt.blobs["out_deconv_final_up8"].data)


def test_quant_ranges_option(tmp_path):
    from caffelite.jacinto import quant_ranges_option
    # freeze: ranges measured on forward 0 only, so forward 1's output no longer depends on what came between
    outs = []
    for middle in (2, 3):
        net, hook = _net()
        quant_ranges_option([hook], "freeze")
        net.forward(data=_input(seed=0))
        net.forward(data=_input(seed=middle))
        net.forward(data=_input(seed=1))
        outs.append(net.blobs["out_deconv_final_up8"].data.copy())
        assert hook.frozen
    np.testing.assert_array_equal(outs[0], outs[1])
    net, hook = _net()
    finish = quant_ranges_option([hook], "save", str(tmp_path / "r.json"))
    net.forward(data=_input(seed=0))
    finish()
    assert (tmp_path / "r.json").exists()
    with pytest.raises(ValueError, match="FILE is required"):
        quant_ranges_option([hook], "load")


def test_written_into_caffemodel_and_read_back(tmp_path):
    from caffelite import io, jacinto
    net, hook = _net()
    net.forward(data=_input(seed=0))
    r0 = hook.r_out[net._layer_names.index("pool1")][0].copy()  # the range forward 1 quantizes with
    net.forward(data=_input(seed=1))
    p = jacinto.quantized_net_proto(net)
    assert p.name.endswith("___QUANTIZED__SEE_END_OFTHE_FILE") and p.quantize
    path = tmp_path / "q.caffemodel"
    io.write_weights(p, str(path))
    back = io.read_weights(str(path))
    lp = [lp for lp in back.layer if lp.name == "pool1"][0]
    assert lp.quantization_param.qparam_out[0].quantize
    assert lp.quantization_param.qparam_out[0].max == np.float32(r0[1])
    assert lp.quantization_param.qparam_out[0].unsigned_data

    # a prototxt that carries quantization_param min/max seeds the ranges (CopyQuantizationRangeInLayers)
    def edit(np_):
        for layer in np_.layer:
            if layer.name == "pool1":
                layer.quantization_param.CopyFrom(lp.quantization_param)
    n2, h2 = _net(edit=edit)
    i = n2._layer_names.index("pool1")
    assert h2.r_out[i][0][1] == pytest.approx(lp.quantization_param.qparam_out[0].max)
    # beyond jacinto: every layer's ranges straight from the quantized caffemodel
    n3, h3 = _net()
    assert h3.load_ranges_from_caffemodel(path) > 20 and h3.frozen
    assert h3.r_out[i][0][1] == np.float32(r0[1])


def test_display_quantization_format():
    def edit(p):
        p.net_quantization_param.display_quantization = 1
    net, hook = _net(edit=edit)
    net.forward(data=_input(seed=0))
    net.forward(data=_input(seed=1))
    lines = hook.display_lines()
    assert any(line.startswith(" Q weights:2 Name:conv1a bitwidth:12 fracbits:0 scale:") for line in lines)
    assert any(line.startswith(" Q bias:2 Name:conv1a bitwidth:16") for line in lines)
    assert any(line.startswith(" Q output:") and "unsigned_data:1" in line for line in lines)


def test_016_mode_runs_and_first_forward_is_float(float_outputs):
    net, hook = _net(version="0.16")
    net.forward(data=_input(seed=0))
    np.testing.assert_array_equal(net.blobs["out_deconv_final_up8"].data, float_outputs[0])
    i = net._layer_names.index("pool1")
    net.forward(data=_input(seed=1))
    assert hook.version == "0.16"
    # 0.16 ranges: expansion 2.0, replaced while k <= start
    assert hook.r_out1[i][1] == pytest.approx(2.0 * float(net.blobs["pool1"].data.max()), rel=1e-6)
    names = _quantized_tops(net)
    assert "pool1" in names and "conv1a/relu" in names
    err = np.abs(net.blobs["out_deconv_final_up8"].data - float_outputs[1]).max()
    assert 0 < err < 0.2 * np.abs(float_outputs[1]).max()


def test_options_ignored_layers_weights_off_power2():
    def edit(p):
        q = p.net_quantization_param
        q.ignored_layer_names.append("pool1")
        q.quantize_weights = False
        q.power2_scale_activations = True
        q.power2_scale_weights = True  # conv-like outputs chain the weights scale (§b.4)
        q.apply_offset_weights = False
    net, hook = _net(edit=edit)
    net.forward(data=_input(seed=0))
    net.forward(data=_input(seed=1))
    names = _quantized_tops(net)
    assert "pool1" not in names and "pool2" in names
    for ly in net.layers:
        qp = ly.param.quantization_param
        assert not any(q.quantize for q in qp.qparam_w)
        for q in qp.qparam_out:
            if q.quantize:  # power-of-2 scales, and shiftbits consistent with them
                assert np.log2(q.scale_target) == round(np.log2(q.scale_target))
    i = net._layer_names.index("pool2")
    q = net.layers[i].param.quantization_param.qparam_out[0]
    y = net.blobs["pool2"].data.astype(np.float64) * q.scale_target
    assert np.array_equal(y, np.round(y)) and y.max() <= 255


@pytest.mark.parametrize("field,value", [("bitwidth_weights", 40), ("bitwidth_activations", 1),
                                         ("bitwidth_bias", 33)])
def test_bad_bitwidth(field, value):
    from caffelite.jacinto import check_quantization
    p = caffe_pb2.NetParameter(quantize=True)
    setattr(p.net_quantization_param, field, value)
    with pytest.raises(NetError, match=field):
        check_quantization(p)


def test_quantization_param_on_wrong_layer():
    from caffelite.jacinto import check_quantization
    p = caffe_pb2.NetParameter()
    lp = p.layer.add(name="prob", type="Softmax")
    lp.quantization_param.qparam_out.add(quantize=True)
    with pytest.raises(NetError, match="quantization_param is not allowed on a Softmax layer"):
        check_quantization(p)
    lp.type = "ReLU"
    check_quantization(p)
    # jacinto writes an unflagged quantization_param on every layer: accepted
    lp.type = "Softmax"
    lp.quantization_param.qparam_out[0].quantize = False
    check_quantization(p)
    lp.type = "ReLU"
    lp.quantization_param.qparam_out[0].bitwidth = 64
    with pytest.raises(NetError, match=r"qparam_out\[0\]\.bitwidth: bitwidth 64 is outside 2..32"):
        check_quantization(p)


def test_017_defaults():
    """Every net_quantization_param / quantization_param default of caffe-jacinto 0.17 (§b.1)."""
    q = caffe_pb2.NetParameter().net_quantization_param
    assert (q.quantize_weights, q.quantize_activations) == (True, True)
    assert (q.bitwidth_weights, q.bitwidth_activations, q.bitwidth_bias) == (12, 8, 16)
    assert (q.power2_scale_weights, q.power2_scale_activations) == (False, False)
    assert (q.apply_offset_weights, q.apply_offset_activations) == (True, False)
    assert (q.precision, q.rounding_scheme) == (1, 0)  # DYNAMIC_FIXED_POINT, NEAREST
    assert (q.display_quantization, q.update_quantization_param, q.quantization_start) == (2000, True, 1)
    assert np.float32(q.range_update_factor) == np.float32(0.01)
    assert np.float32(q.range_expansion_factor) == np.float32(1.25) and list(q.ignored_layer_names) == []
    lq = caffe_pb2.LayerParameter().quantization_param
    assert (lq.precision, lq.rounding_scheme, lq.power2_scale_weights, lq.power2_scale_activations) == (1, 0, 0, 0)
    assert lq.quantized_infer_count == 0
    qq = lq.qparam_out.add()
    assert (qq.quantize, qq.bitwidth, qq.fracbits, qq.unsigned_data, qq.unsigned_quant) == (False, 8, 0, False, False)
    assert (qq.scale_target, qq.scale_applied, qq.shiftbits, qq.offset, qq.min, qq.max) == (1, 1, 0, 0, 0, 0)
    assert not caffe_pb2.NetParameter().quantize


def test_display_header_and_period():
    """``Quantizing the net: <name> Test`` + the dump every display_quantization forwards from start (§b.2)."""
    from test_jacinto_sparsity import capture_log

    def edit(p):
        p.net_quantization_param.display_quantization = 2
    net, hook = _net(edit=edit, size=(32, 64))
    with capture_log() as msgs:
        for k in range(5):
            net.forward(data=_input(size=(32, 64), seed=k))
    heads = [m for m in msgs if m.startswith("Quantizing the net:")]
    assert heads == [f"Quantizing the net: {net.name} Test"] * 2  # k = 2 and 4 (k = 0 is before start)
    dump = msgs[msgs.index(heads[0]) + 1:]
    line = next(m for m in dump if m.startswith(" Q output:") and "Name:pool1 " in m)
    assert re.fullmatch(r" Q output:\d+ Name:pool1 bitwidth:8 fracbits:0 scale:\S+ offset:0 unsigned_data:1 "
                        r"min:\S+ max:\S+ scale_applied:\S+ scale_target:\S+", line)


SMALL = """
name: "small"
quantize: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 }
                      bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "r1" }
layer { name: "conv2" type: "Convolution" bottom: "r1" top: "conv2"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
"""


def test_small_net_hand_values():
    """Every §b.4 formula by hand on a 3-layer net: weight and bias formats, running activation range, the
    conv-output scale_applied chain, merged conv1 output (ReLU follows), and the weights quantized once."""
    from google.protobuf import text_format

    from caffelite import backend, jacinto
    from caffelite.net import Net
    backend.set_random_seed(3)
    net = Net(text_format.Parse(SMALL, caffe_pb2.NetParameter()), TEST)
    hook = jacinto.attach_quantization(net)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, 3, 6, 6)).astype(np.float32) for _ in range(3)]
    w1 = net.layer_dict["conv1"].blobs[0].data.copy()
    b1 = net.layer_dict["conv1"].blobs[1].data.copy()
    net.forward(data=xs[0])
    r0 = float(net.blobs["r1"].data.max())
    net.forward(data=xs[1])
    f32 = np.float32
    qp1 = net.layer_dict["conv1"].param.quantization_param
    qw, qb = qp1.qparam_w
    # 12-bit asymmetric weights from the exact min/max, 16-bit asymmetric bias
    assert (qw.quantize, qw.bitwidth, qw.unsigned_quant) == (True, 12, True)
    assert qw.min == f32(w1.min()) and qw.max == f32(w1.max())
    assert qw.scale_target == f32(f32(4095) / f32(f32(w1.max()) - f32(w1.min())))
    assert qw.offset == pytest.approx(-float(w1.min()) * qw.scale_target, rel=1e-6)
    assert (qb.bitwidth, qb.min, qb.max) == (16, f32(b1.min()), f32(b1.max()))
    # the weights were quantized once, at forward k == start == 1: integers on the 12-bit grid
    w = net.layer_dict["conv1"].blobs[0].data.astype(np.float64) * f32(qw.scale_target) + f32(qw.offset)
    assert np.allclose(w, np.round(w), atol=2e-3) and not np.array_equal(net.layer_dict["conv1"].blobs[0].data, w1)
    assert qp1.quantized_infer_count == 0
    # conv1 -> ReLU: merged, not quantized; the ReLU output is 8-bit unsigned with 255 / (1.25 * max of forward 0)
    assert not qp1.qparam_out[0].quantize
    qr = net.layer_dict["relu1"].param.quantization_param.qparam_out[0]
    assert qr.quantize and qr.unsigned_data and qr.max == f32(f32(1.25) * f32(r0))
    assert qr.scale_target == pytest.approx(255 / (1.25 * r0), rel=1e-6)
    # scale_applied chain (§b.4): conv output sa = max(input sa) * weight scale; conv2's input comes from the
    # quantized ReLU, so its sa is the ReLU's scale
    assert qp1.qparam_out[0].scale_applied == f32(f32(1.0) * f32(qw.scale_target))
    qp2 = net.layer_dict["conv2"].param.quantization_param
    assert qp2.qparam_in[0].scale_applied == f32(qr.scale_target)
    # conv2 ends the net (no merging consumer): its signed output is quantized, 127/max|x|, and a quantized
    # output's scale_applied becomes its scale_target
    q2 = qp2.qparam_out[0]
    assert q2.quantize and not q2.unsigned_quant and q2.scale_applied == q2.scale_target
    assert q2.scale_target == pytest.approx(127 / max(abs(q2.min), abs(q2.max)), rel=1e-6)
    y = net.blobs["conv2"].data.astype(np.float64) * f32(q2.scale_target)
    assert np.allclose(y, np.round(y), atol=1e-3)
    # running range after forward 1: 0.99 * r(forward 0) + 0.01 * 1.25 * max(forward 1)
    i = net._layer_names.index("relu1")
    r1 = float(hook.r_out[i][0][1])
    net.forward(data=xs[2])
    assert hook.r_out[i][0][1] == pytest.approx(0.99 * r1 + 0.01 * 1.25 * float(net.blobs["r1"].data.max()), rel=1e-6)
    assert qp1.quantized_infer_count == 1


def test_016_display_lines():
    from google.protobuf import text_format

    from caffelite import backend, jacinto
    from caffelite.net import Net
    backend.set_random_seed(3)
    net = Net(text_format.Parse(SMALL, caffe_pb2.NetParameter()), TEST)
    hook = jacinto.attach_quantization(net, version="0.16")
    rng = np.random.default_rng(0)
    for _ in range(2):
        net.forward(data=rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    lines = hook.display_lines()
    assert any(re.fullmatch(r" Q weights:1 Name:conv1 bitwidth:12 fracbits:0 scale:\S+ offset:\S+ unsigned_data:0 "
                            r"min:\S+ max:\S+", ln) for ln in lines), lines
    assert not any("scale_applied" in ln or " Q bias:" in ln for ln in lines)
