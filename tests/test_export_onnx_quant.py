"""ONNX export of caffe-jacinto quantized nets (QuantizeLinear/DequantizeLinear pairs) against caffelite's
simulated quantized forward: jsegnet21v2 (the flagship's deploy net) at a small input, calibrated and frozen.

With power-of-two scales and 8-bit zero-offset weights every product and sum is exact in float32, so ONNX
Runtime must reproduce the simulation bit for bit. With jacinto's default scales (255/max, 12-bit asymmetric
weights) the default ("runtime") QDQ form leaves ONNX Runtime's float32 convolution sums (not the simulation's
exact sums) and ``x / (1/s)`` vs ``x * s``, which move an occasional value across a rounding boundary; each such
flip then propagates through the later quantized layers. So for that form the check is per layer, "teacher
forced": each quantized blob computed by ONNX Runtime from caffelite's own (quantized) inputs must match on
>= 99.9% of its elements; end to end the agreement is measured. The "exact" QDQ form removes both (the
quantizer in float64, checked at rounding boundaries; the quantized convolutions summed in float64): ONNX
Runtime then reproduces the simulation bit for bit.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import caffelite
from caffelite import io as cio
from caffelite import jacinto
from caffelite.errors import CaffeliteError
from caffelite.export import ExportError, export_onnx
from caffelite.models import prototxt_path

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

H, W = 64, 128


def quantized_jsegnet(power2=False, seed=0, h=H, w=W):
    """The shipped jsegnet21v2 deploy net with ``quantize: true``, random weights and BatchNorm statistics."""
    p = cio.read_net(prototxt_path("cityscapes5_jsegnet21v2", "deploy.prototxt"))
    p.quantize = True
    if power2:
        q = p.net_quantization_param
        q.power2_scale_activations = q.power2_scale_weights = True
        q.apply_offset_weights = False
        q.bitwidth_weights = 8
    for lp in p.layer:
        if lp.type == "Input":
            lp.input_param.shape[0].dim[:] = [1, 3, h, w]
    return random_net(p, seed)


def random_net(p, seed):
    """A TEST net of ``p`` with random weights and BatchNorm statistics."""
    caffelite.set_random_seed(seed)
    net = caffelite.Net(p, caffelite.TEST)
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        if net.layer_dict[name].param.type == "BatchNorm":
            c = blobs[0].data.size
            blobs[0].data[...] = rng.normal(0, 0.5, c)
            blobs[1].data[...] = rng.uniform(0.5, 2, c)
            blobs[3].data[...] = rng.uniform(0.5, 1.5, c)
            blobs[4].data[...] = rng.normal(0, 0.2, c)
    return net


def image(rng, h=H, w=W):
    """A blocky image plus noise: segment-like structure rather than white noise."""
    base = rng.uniform(0, 255, (1, 3, h // 8, w // 8))
    return (np.kron(base, np.ones((1, 1, 8, 8))) + rng.normal(0, 8, (1, 3, h, w))).astype(np.float32)


def calibrate(net, rng, n=4):
    hook = jacinto.attach_from_proto(net).quantization[0]
    for _ in range(n):
        net.forward(data=image(rng))
    hook.freeze_ranges(True)
    return hook


def run(path, x, extra_outputs=()):
    m = onnx.load(str(path))
    for name in extra_outputs:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": x}), strict=True))


def dq_blobs(model):
    """ONNX tensor -> Caffe blob for every activation DequantizeLinear output."""
    inits = {t.name for t in model.graph.initializer}
    return {n.output[0]: re.sub(r"/dequantized(_\d+)?$", "", n.output[0]) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] not in inits}


def flagged_final(net):
    """Blobs whose last writer quantizes them (their final value is that layer's quantized output)."""
    last = {}
    for i, tops in enumerate(net._top_ids):
        for t in tops:
            last[t] = i
    out = set()
    for blob, i in last.items():
        qp = net.layers[i].param.quantization_param
        j = net._top_ids[i].index(blob)
        if j < len(qp.qparam_out) and qp.qparam_out[j].quantize:
            out.add(blob)
    return out


def test_power2_quantized_net_is_reproduced_exactly(tmp_path):
    rng = np.random.default_rng(1)
    net = quantized_jsegnet(power2=True)
    calibrate(net, rng)
    x = image(rng)
    ours = np.array(net.forward(data=x)["argMaxOut"])
    model = export_onnx(net, tmp_path / "q.onnx")  # the parameters of the forward just run
    ops = [n.op_type for n in model.graph.node]
    flagged = sum(q.quantize for ly in net.layers if ly.param.HasField("quantization_param")
                  for q in ly.param.quantization_param.qparam_out)
    assert ops.count("QuantizeLinear") == flagged > 20
    int_weights = [t for t in model.graph.initializer if t.name.endswith("/W_quantized")]
    assert len(int_weights) == 21  # 17 convolutions, 4 deconvolutions
    for t in int_weights:  # signed, except the bilinear deconvolution kernels (no negative weight: unsigned)
        signed = "deconv" not in t.name and "up2" not in t.name
        assert t.data_type == (onnx.TensorProto.INT8 if signed else onnx.TensorProto.UINT8), t.name
    meta = {p.key: p.value for p in model.metadata_props}
    blobs = json.loads(meta["quantization_blobs"])
    assert blobs["conv1a"] == {"bits": 8, "fracbits": blobs["conv1a"]["fracbits"], "signed": False}
    assert blobs["data/bias"]["signed"] and "fracbits" in blobs["conv1a/W"]
    for q in model.graph.node:  # power-of-two scales: 2^-fracbits
        if q.op_type == "QuantizeLinear":
            s = float(onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == q.input[1])))
            assert np.log2(s) == np.round(np.log2(s))
    dq = dq_blobs(model)
    got = run(tmp_path / "q.onnx", x, list(dq))
    assert (got["argMaxOut"] == ours).mean() >= 0.999
    for t, blob in dq.items():
        if blob in flagged_final(net):
            assert np.array_equal(got[t], net.blobs[blob].data), blob  # bit for bit


def teacher_forced(model_path, net, x):
    """Per quantized blob: fraction of elements where ONNX Runtime, fed caffelite's own quantized inputs of
    that layer, equals caffelite's blob."""
    from onnx.utils import Extractor

    m = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    producer = {o: n for n in m.graph.node for o in n.output}
    inits = {t.name for t in m.graph.initializer}
    dq = dq_blobs(m)
    ex = Extractor(m)
    out = {}
    for t, blob in dq.items():
        if blob not in flagged_final(net):
            continue
        ins, stack, seen = set(), list(producer[t].input), set()
        while stack:  # walk up to the nearest quantized activations (or the graph input)
            v = stack.pop()
            if v in seen or v in inits or not v:
                continue
            seen.add(v)
            if v in dq or v == "data":
                ins.add(v)
            else:
                stack.extend(producer[v].input)
        s = ort.InferenceSession(ex.extract_model(sorted(ins), [t]).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
        feeds = {v: x if v == "data" else np.array(net.blobs[dq[v]].data) for v in ins}
        out[blob] = float((s.run(None, feeds)[0] == net.blobs[blob].data).mean())
    return out


def test_jacinto_default_quantization_per_layer(tmp_path):
    rng = np.random.default_rng(2)
    net = quantized_jsegnet()
    calibrate(net, rng)
    x = image(rng)
    ours = np.array(net.forward(data=x)["argMaxOut"])
    model = export_onnx(net, tmp_path / "q.onnx")
    # 12-bit asymmetric weights (a non-integer offset) stay float: jacinto's dequantized values, exactly
    assert not [t for t in model.graph.initializer if t.name.endswith("_quantized")]
    w = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv1a/W"))
    assert np.array_equal(w, net.params["conv1a"][0].data)
    for ly in net.layers:  # every QDQ pair carries the simulation's scale and zero point
        qp = ly.param.quantization_param
        for j, q in enumerate(qp.qparam_out):
            if q.quantize:
                blob = ly.param.top[j]
                init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
                assert init[f"{blob}/q_scale"] == np.float32(1) / np.float32(q.scale_target)
                assert init[f"{blob}/q_zero"].dtype == (np.uint8 if q.unsigned_quant else np.int8)
    per_layer = teacher_forced(tmp_path / "q.onnx", net, x)
    assert len(per_layer) >= 25 and min(per_layer.values()) >= 0.999, per_layer
    assert per_layer["data/bias"] == per_layer["conv1a"] == 1.0
    end_to_end = (run(tmp_path / "q.onnx", x)["argMaxOut"] == ours).mean()
    assert end_to_end >= 0.97  # measured 0.982: random weights, rounding flips propagate (module docstring)
    # the "exact" form: jacinto's quantizer and the simulation's exact convolution sums, so every blob bit for bit
    exact = export_onnx(net, tmp_path / "e.onnx", qdq_form="exact")
    ops = [n.op_type for n in exact.graph.node]
    assert "Conv" not in ops and ops.count("ConvTranspose") == 4  # the 17 convolutions in float64 MatMuls
    assert ops.count("MatMul") == sum(ly.geom.kh * ly.geom.kw for ly in net.layers if ly.type == "Convolution")
    got = assert_blobs_reproduced(exact, tmp_path / "e.onnx", net, x, at_least=25)
    np.testing.assert_array_equal(got["argMaxOut"], ours)


def assert_blobs_reproduced(model, path, net, x, at_least):
    """ONNX Runtime's run of ``model`` (at ``path``) on ``x`` gives every quantized blob whose final value is its
    writer's quantized output (at least ``at_least`` of them) bit for bit; returns all its outputs."""
    dq = dq_blobs(model)
    got = run(path, x, list(dq))
    checked = 0
    for t, blob in dq.items():
        if blob in flagged_final(net):
            np.testing.assert_array_equal(got[t], net.blobs[blob].data, err_msg=blob)
            checked += 1
    assert checked >= at_least
    return got


def test_exact_form_reproduces_a_quantized_classifier_with_inner_product(tmp_path):
    """cifar10 jacintonet11v2 (convolutions, pooling, InnerProduct, Softmax) with jacinto's default quantization:
    the exact form sums the convolutions and the InnerProduct in double as the simulation does, so ONNX Runtime
    gives every quantized blob and the probabilities bit for bit."""
    p = cio.read_net(prototxt_path("cifar10_jacintonet11v2", "deploy.prototxt"))
    p.quantize = True
    net = random_net(p, 5)
    rng = np.random.default_rng(5)
    hook = jacinto.attach_from_proto(net).quantization[0]
    for _ in range(3):
        net.forward(data=rng.uniform(0, 255, (1, 3, 32, 32)).astype(np.float32))
    hook.freeze_ranges(True)
    x = rng.uniform(0, 255, (1, 3, 32, 32)).astype(np.float32)
    ours = np.array(net.forward(data=x)["prob"])
    assert net.layer_dict["fc10"].exact_sums
    model = export_onnx(net, tmp_path / "e.onnx", qdq_form="exact")
    ops = [n.op_type for n in model.graph.node]
    assert "Gemm" not in ops and "Conv" not in ops
    got = assert_blobs_reproduced(model, tmp_path / "e.onnx", net, x, at_least=10)
    np.testing.assert_array_equal(got["prob"], ours)
    runtime = export_onnx(net, tmp_path / "r.onnx")
    assert "Gemm" in [n.op_type for n in runtime.graph.node]


def test_exact_qdq_form_rounds_as_the_simulation_at_rounding_boundaries(tmp_path):
    """Inputs whose ``x*s`` lies within a float32 ulp of a rounding boundary: the "exact" form (``x*s`` in float64,
    Round, QuantizeLinear with scale 1) quantizes them as the simulation; the default form's ``x / (1/s)`` in
    float32 rounds most of them to the other level (which is what makes these inputs a test at all)."""
    from onnx.utils import Extractor

    from caffelite.jacinto import fixed_point as fp

    rng = np.random.default_rng(2)
    net = quantized_jsegnet()
    calibrate(net, rng)
    q = net.layer_dict["data/bias"].param.quantization_param.qparam_out[0]
    st = np.float32(q.scale_target)
    assert np.log2(st) != np.round(np.log2(st))  # jacinto's default scale 127/max: not a power of two
    bias = np.float32(net.params["data/bias"][0].data.ravel()[0])
    x = rng.uniform(0, 255, 2_000_000).astype(np.float32)
    y = x + bias  # the Bias layer, in float32 in both
    exact = np.rint(y.astype(np.float64) * np.float64(st))
    near = x[np.rint(y / (np.float32(1) / st)) != exact]  # where x / (1/s) in float32 rounds to another level
    assert near.size >= 5
    data = np.resize(near, (1, 3, H, W))
    want = fp.quantize(data + bias, st, q.offset, q.bitwidth, q.unsigned_quant)
    got = {}
    for form in ("runtime", "exact"):
        export_onnx(net, tmp_path / f"{form}.onnx", qdq_form=form)
        m = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / f"{form}.onnx")))
        assert {p.key: p.value for p in m.metadata_props}["quantization_qdq_form"] == form
        sub = Extractor(m).extract_model(["data"], ["data/bias/dequantized"])
        s = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
        got[form] = s.run(None, {"data": data})[0]
    assert np.array_equal(got["exact"], want)
    assert (got["runtime"] != want).mean() > 0.5
    ops = [n.op_type for n in onnx.load(str(tmp_path / "exact.onnx")).graph.node]
    assert ops.count("Round") == ops.count("QuantizeLinear") > 20
    with pytest.raises(CaffeliteError, match="qdq form 'fast'"):
        export_onnx(net, tmp_path / "f.onnx", qdq_form="fast")


def test_not_ready_and_unsupported_flags_are_refused(tmp_path):
    net = quantized_jsegnet(h=32, w=64)
    with pytest.raises(ExportError, match="no quantization ranges"):
        export_onnx(net, tmp_path / "q.onnx")
    hook = jacinto.attach_from_proto(net).quantization[0]
    net.forward(data=image(np.random.default_rng(0), 32, 64))  # forward 0 only measures
    with pytest.raises(ExportError, match="no quantization ranges"):
        export_onnx(net, tmp_path / "q.onnx")
    net.forward(data=image(np.random.default_rng(1), 32, 64))  # forward 1 quantizes the weights at its end
    assert hook.infer_count == 2
    export_onnx(net, tmp_path / "q.onnx")
    qp = net.layer_dict["pool1"].param.quantization_param
    qp.qparam_in[0].quantize = True
    with pytest.raises(ExportError, match="layer 'pool1'.*qparam_in"):
        export_onnx(net, tmp_path / "q2.onnx")
    qp.qparam_in[0].quantize = False
    qp.qparam_out[0].bitwidth = 6
    with pytest.raises(ExportError, match="layer 'pool1'.*6 bits"):
        export_onnx(net, tmp_path / "q2.onnx")
    with pytest.raises(ExportError, match="--fold-bn"):
        export_onnx(net, tmp_path / "q2.onnx", fold_bn=True)
    assert not os.path.exists(tmp_path / "q2.onnx")


def _cli(capsys, *args):
    from caffelite.cli import main

    capsys.readouterr()
    rc = main(["export", *args])
    return rc, capsys.readouterr().err


def test_cli_quantized_from_ranges_file_and_from_quantized_caffemodel(tmp_path, capsys):
    rng = np.random.default_rng(3)
    net = quantized_jsegnet(power2=True, h=32, w=64)
    deploy = tmp_path / "deploy.prototxt"
    with open(prototxt_path("cityscapes5_jsegnet21v2", "deploy.prototxt")) as f:
        text = f.read()
    q = "quantize: true\nnet_quantization_param { power2_scale_activations: true power2_scale_weights: true " \
        "apply_offset_weights: false bitwidth_weights: 8 }\n"
    deploy.write_text(q + text.replace("dim: 512", "dim: 32").replace("dim: 1024", "dim: 64"))
    net.save(str(tmp_path / "float.caffemodel"))  # the float weights, before any quantization
    hook = calibrate(net, rng)
    hook.save_ranges(str(tmp_path / "ranges.json"))
    rc, err = _cli(capsys, "--model", str(deploy), "--weights", str(tmp_path / "float.caffemodel"), "--onnx",
                   str(tmp_path / "a.onnx"), "--quant-ranges", str(tmp_path / "ranges.json"))
    assert rc == 0, err
    # the same ranges in caffelite: the simulation on a new image equals ONNX Runtime's output
    sim = caffelite.Net(str(deploy), str(tmp_path / "float.caffemodel"), caffelite.TEST)
    from caffelite.export.onnx_quant import prepare
    prepare(sim, ranges=str(tmp_path / "ranges.json"))
    x = image(rng, 32, 64)
    ours = np.array(sim.forward(data=x)["argMaxOut"])
    assert (run(tmp_path / "a.onnx", x)["argMaxOut"] == ours).mean() >= 0.999
    # a caffemodel written by the quantized run carries its ranges in quantization_param
    proto = jacinto.quantized_net_proto(sim)
    (tmp_path / "quant.caffemodel").write_bytes(proto.SerializeToString())
    rc, err = _cli(capsys, "--model", str(deploy), "--weights", str(tmp_path / "quant.caffemodel"), "--onnx",
                   str(tmp_path / "b.onnx"))
    assert rc == 0, err
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "b.onnx")).metadata_props}
    assert "fracbits" in meta["quantization_blobs"] and meta["source_dialect"] == "jacinto017"
    assert meta["quantization_qdq_form"] == "runtime"
    rc, err = _cli(capsys, "--model", str(deploy), "--weights", str(tmp_path / "quant.caffemodel"), "--onnx",
                   str(tmp_path / "c.onnx"), "--qdq-form", "exact")
    assert rc == 0, err
    c = onnx.load(str(tmp_path / "c.onnx"))
    assert {p.key: p.value for p in c.metadata_props}["quantization_qdq_form"] == "exact"
    assert (run(tmp_path / "c.onnx", x)["argMaxOut"] == ours).mean() >= 0.999


def test_flagship_writes_deploy_onnx_of_its_quantized_model(tmp_path):
    """The toy flagship run writes stages/test_quantize/deploy.onnx (runtime QDQ form) and deploy_exact.onnx:
    the parameters of the last quantized forward of its evaluation. Replaying that evaluation gives the
    simulation's state at export time; the exact form reproduces that forward bit for bit."""
    import glob

    from caffelite.segmentation.infer import Segmenter, evaluate_lists, run_inference
    from caffelite.pipeline import segmentation as seg
    from test_flagship import _cfg

    cfg = _cfg(tmp_path / "run")
    seg.run_pipeline(cfg)
    stage = tmp_path / "run" / "stages" / "test_quantize"
    path = stage / "deploy.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["source_model"] == str(stage / "deploy.prototxt") and "quantization_blobs" in meta
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") > 20

    weights = sorted(glob.glob(str(tmp_path / "run" / "stages" / "sparse" / "*.caffemodel")))[-1]
    s = Segmenter(str(stage / "deploy.prototxt"), weights)
    jacinto.attach_from_proto(s.net)
    lists = tmp_path / "run" / "data" / "lists"
    evaluate_lists(s, str(lists / "val-image-list.txt"), str(lists / "val-label-list.txt"), num_classes=5,
                   num_images=cfg.eval_images or 0, progress=False)
    imgs = [ln.strip() for ln in (lists / "val-image-list.txt").read_text().splitlines() if ln.strip()]
    imgs = imgs[: cfg.overlays]
    run_inference(s, imgs, str(tmp_path / "ov"), blend=True, progress=False)
    x = np.array(s.net.blobs["data"].data)  # the last forward's input
    per_layer = teacher_forced(path, s.net, x)
    assert len(per_layer) >= 25 and min(per_layer.values()) >= 0.999, per_layer
    agree = (run(path, x)["argMaxOut"] == s.net.blobs["argMaxOut"].data).mean()
    assert agree >= 0.98  # a toy model trained for 18 iterations: flips propagate (module docstring)
    exact = stage / "deploy_exact.onnx"
    m = onnx.load(str(exact))
    onnx.checker.check_model(m, full_check=True)
    assert {p.key: p.value for p in m.metadata_props}["quantization_qdq_form"] == "exact"
    np.testing.assert_array_equal(run(exact, x)["argMaxOut"], s.net.blobs["argMaxOut"].data)


def test_jacinto_016_simulation_is_refused(tmp_path):
    net = quantized_jsegnet(h=32, w=64)
    jacinto.attach_from_proto(net, version="0.16")
    for k in range(3):
        net.forward(data=image(np.random.default_rng(k), 32, 64))
    with pytest.raises(ExportError, match="0.16's quantization"):
        export_onnx(net, tmp_path / "q.onnx")
