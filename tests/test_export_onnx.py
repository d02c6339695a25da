"""ONNX export of float nets: every mapped layer fixture and every fixture/reference/shipped deploy net run in ONNX
Runtime equals caffelite's forward (and real Caffe's outputs where the fixtures have them) within 1e-4
relative; shapes, dynamic batch, --fold-bn, opsets, metadata, sparse zeros; the CLI's bad-input errors."""

from __future__ import annotations

import glob
import json
import os
import re
import sys

import numpy as np
import pytest

import caffelite
from caffelite import io as cio
from caffelite.export import ExportError, export_onnx
from caffelite.export.onnx_layers import CONVERTERS
from caffelite.models import prototxt_dir

from conftest import FIXTURES, REFERENCE
from helpers import load_npz

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

LAYERS = os.path.join(FIXTURES, "layers")
NETS = os.path.join(FIXTURES, "nets")
#: fixture cases that are refused on purpose (tested below) or have no output
REFUSED = {"pool_max_mask": "MAX pooling mask top", "silence": "no output blob"}


def run_ort(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()}), strict=True))


def assert_close(got, want, rtol=1e-4, what=""):
    """|got - want| <= rtol*|want| + rtol*max|want| (1e-4 relative, with a floor relative to the blob's scale
    for values that cancel to near zero)."""
    want = np.asarray(want, np.float32)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def _layer_cases():
    import caffelite.export.onnx_neurons  # noqa: F401 (registers the element-wise converters)

    out = []
    for case in sorted(os.listdir(LAYERS)):
        meta_path = os.path.join(LAYERS, case, "meta.json")
        if not os.path.exists(meta_path):
            continue
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["layer_type"] in CONVERTERS and meta["phase"] == "TEST" and case not in REFUSED:
            out.append(case)
    return out


def _net(proto, weights=None):
    return caffelite.Net(proto, weights, caffelite.TEST) if weights else caffelite.Net(proto, caffelite.TEST)


@pytest.mark.parametrize("case", _layer_cases())
def test_layer_fixture_matches_caffe(case, tmp_path):
    d = os.path.join(LAYERS, case)
    w = os.path.join(d, "weights.caffemodel")
    net = _net(os.path.join(d, "net.prototxt"), w if os.path.exists(w) else None)
    with np.load(os.path.join(d, "io.npz")) as npz:
        io = dict(npz)
    feeds = {k[len("bottom/"):]: io[k] for k in io if k.startswith("bottom/")}
    ours = {k: np.array(v) for k, v in net.forward(**feeds).items()}
    path = tmp_path / "m.onnx"
    export_onnx(net, path)
    got = run_ort(path, feeds)
    assert set(got) == set(net.outputs)
    for name, v in got.items():
        assert_close(v, ours[name], what=f"{case}/{name} vs caffelite")
        if f"top/{name}" in io:
            assert_close(v, io[f"top/{name}"], what=f"{case}/{name} vs Caffe")


def test_refused_layer_fixtures_name_the_layer(tmp_path):
    net = _net(os.path.join(LAYERS, "pool_max_mask", "net.prototxt"))
    with pytest.raises(ExportError, match="layer 'pool'.*mask top"):
        export_onnx(net, tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)


def _weights(d):
    return next(p for p in (os.path.join(d, "weights.caffemodel"), os.path.join(d, "weights.caffemodel.xz"))
                if os.path.exists(p))


@pytest.mark.parametrize("name", ["lenet", "cifar10_quick", "jsegnet21v2_deploy"])
def test_fixture_nets_match_caffe(name, tmp_path):
    d = os.path.join(NETS, name)
    net = _net(os.path.join(d, "deploy.prototxt"), _weights(d))
    x = load_npz(os.path.join(d, "input.npz"))["data"]
    ours = {k: np.array(v) for k, v in net.forward(data=x).items()}
    caffe = load_npz(os.path.join(d, "blobs.npz"))
    model = export_onnx(net, tmp_path / "m.onnx")
    if name == "jsegnet21v2_deploy":  # also expose the logits the ArgMax reads
        model.graph.output.append(onnx.helper.make_tensor_value_info("out_deconv_final_up8", 1, None))
        onnx.save(model, tmp_path / "m.onnx")
    got = run_ort(tmp_path / "m.onnx", {"data": x})
    if name != "jsegnet21v2_deploy":
        assert_close(got["prob"], ours["prob"], what="vs caffelite")
        assert_close(got["prob"], caffe["prob"], what="vs Caffe")
        return
    logits = got["out_deconv_final_up8"]
    assert_close(logits, net.blobs["out_deconv_final_up8"].data, what="logits vs caffelite")
    assert_close(logits, caffe["out_deconv_final_up8"], rtol=1e-3, what="logits vs Caffe (its meta.json: 1e-3)")
    top2 = np.sort(caffe["out_deconv_final_up8"], axis=1)
    clear = (top2[:, -1] - top2[:, -2]) >= 1e-4  # the fixture's rule: near-ties may go either way
    for want in (ours["argMaxOut"], caffe["argMaxOut"]):
        assert np.array_equal(got["argMaxOut"][:, 0][clear], want[:, 0][clear])


def _random_weights(net, seed=0):
    """Realistic random BatchNorm statistics (the fillers leave mean 0, var 0) so the nets compute something."""
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        if net.layer_dict[name].param.type == "BatchNorm":
            c = blobs[0].data.size
            if len(blobs) > 3:  # jacinto: mean, var, 1, gamma, beta
                blobs[0].data[...] = rng.normal(0, 0.5, c)
                blobs[1].data[...] = rng.uniform(0.5, 2, c)
                blobs[3].data[...] = rng.uniform(0.5, 1.5, c)
                blobs[4].data[...] = rng.normal(0, 0.2, c)
            else:  # BVLC sums and scale factor
                blobs[2].data[...] = 2.0
                blobs[0].data[...] = 2 * rng.normal(0, 0.5, c)
                blobs[1].data[...] = 2 * rng.uniform(0.5, 2, c)


def _deploys():
    paths = sorted(glob.glob(os.path.join(prototxt_dir(), "*", "deploy.prototxt")))
    paths += sorted(glob.glob(os.path.join(REFERENCE, "*", "test_quantize", "deploy.prototxt")))
    return paths


def _small_float_net(path):
    p = cio.read_net(path)
    p.quantize = False  # the quantized ones are exported as float here (test_export_onnx_quant.py does QDQ)
    for lp in p.layer:
        if lp.type == "Input":
            dims = list(lp.input_param.shape[0].dim)
            if dims[2] * dims[3] > 128 * 256:
                dims[2], dims[3] = dims[2] // 8, dims[3] // 8
            lp.input_param.shape[0].dim[:] = [2] + dims[1:]
    caffelite.set_random_seed(1)
    net = caffelite.Net(p, caffelite.TEST)
    _random_weights(net)
    return net


@pytest.mark.parametrize("path", _deploys(), ids=lambda p: "/".join(p.split(os.sep)[-3:-1]))
def test_reference_and_shipped_deploy_nets(path, tmp_path):
    net = _small_float_net(path)
    name = net.inputs[0]
    x = np.random.default_rng(2).uniform(0, 255, net.blobs[name].shape).astype(np.float32)
    net.forward(**{name: x})
    pre = {}  # ArgMax outputs -> the scores they read
    for i, layer in enumerate(net.layers):
        if layer.param.type == "ArgMax" and net._top_ids[i][0] in net.outputs:
            pre[net._top_ids[i][0]] = np.array(net._bottom_vecs[i][0].data)
    ours = {k: np.array(net.blobs[k].data) for k in net.outputs}
    export_onnx(net, tmp_path / "m.onnx")
    got = run_ort(tmp_path / "m.onnx", {name: x})
    for k, v in got.items():
        if k in pre:  # ArgMax: equal wherever the top-2 margin is not a float32 near-tie
            top2 = np.sort(pre[k], axis=1)
            clear = (top2[:, -1] - top2[:, -2]) >= 1e-4 * np.abs(pre[k]).max()
            assert clear.mean() > 0.99
            assert np.array_equal(v[:, 0][clear], ours[k][:, 0][clear])
        else:
            assert_close(v, ours[k], what=k)


RESNET_STYLE = """
name: "resnet50_style"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 33 dim: 33 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 7 stride: 2 pad: 3 bias_term: false weight_filler { type: "msra" } } }
layer { name: "bn_conv1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "scale_conv1" type: "Scale" bottom: "conv1" top: "conv1"
  scale_param { bias_term: true filler { value: 1.2 } bias_filler { value: 0.1 } } }
layer { name: "conv1_relu" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "res2a_branch1" type: "Convolution" bottom: "pool1" top: "res2a_branch1"
  convolution_param { num_output: 32 kernel_size: 1 bias_term: false weight_filler { type: "msra" } } }
layer { name: "bn2a_branch1" type: "BatchNorm" bottom: "res2a_branch1" top: "res2a_branch1" }
layer { name: "scale2a_branch1" type: "Scale" bottom: "res2a_branch1" top: "res2a_branch1"
  scale_param { bias_term: true filler { value: 0.9 } } }
layer { name: "res2a_branch2a" type: "Convolution" bottom: "pool1" top: "res2a_branch2a"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "msra" } bias_filler { value: 0.05 } } }
layer { name: "bn2a_branch2a" type: "BatchNorm" bottom: "res2a_branch2a" top: "res2a_branch2a" }
layer { name: "scale2a_branch2a" type: "Scale" bottom: "res2a_branch2a" top: "res2a_branch2a"
  scale_param { bias_term: true filler { value: 1.1 } } }
layer { name: "res2a_branch2a_relu" type: "ReLU" bottom: "res2a_branch2a" top: "res2a_branch2a" }
layer { name: "res2a_branch2b" type: "Convolution" bottom: "res2a_branch2a" top: "res2a_branch2b"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 8 weight_filler { type: "msra" } } }
layer { name: "prelu2b" type: "PReLU" bottom: "res2a_branch2b" top: "res2a_branch2b" }
layer { name: "res2a_branch2c" type: "Convolution" bottom: "res2a_branch2b" top: "res2a_branch2c"
  convolution_param { num_output: 32 kernel_size: 1 weight_filler { type: "msra" } } }
layer { name: "res2a" type: "Eltwise" bottom: "res2a_branch1" bottom: "res2a_branch2c" top: "res2a"
  eltwise_param { operation: SUM coeff: 1 coeff: 0.5 } }
layer { name: "res2a_relu" type: "ReLU" bottom: "res2a" top: "res2a" }
layer { name: "pool5" type: "Pooling" bottom: "res2a" top: "pool5"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_global" type: "Pooling" bottom: "pool5" top: "pool_global"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc_nsfw" type: "InnerProduct" bottom: "pool_global" top: "fc_nsfw"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } bias_filler { value: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc_nsfw" top: "prob" }
"""

ALEXNET_STYLE = """
name: "alexnet_style"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 35 dim: 35 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 12 kernel_size: 5 stride: 2 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" relu_param { negative_slope: 0.1 } }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2"
  lrn_param { local_size: 3 alpha: 0.001 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "slice" type: "Slice" bottom: "norm2" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 6 } }
layer { name: "cat" type: "Concat" bottom: "s2" bottom: "s1" top: "cat" }
layer { name: "prod" type: "Eltwise" bottom: "cat" bottom: "norm2" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "cat" top: "max" eltwise_param { operation: MAX } }
layer { name: "pool2" type: "Pooling" bottom: "max" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "flat" type: "Flatten" bottom: "pool2" top: "flat" }
layer { name: "fc6" type: "InnerProduct" bottom: "flat" top: "fc6" inner_product_param { num_output: 20
  weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 10
  weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc7" top: "prob" }
layer { name: "top3" type: "ArgMax" bottom: "prob" top: "top3" argmax_param { top_k: 3 out_max_val: true } }
"""


def _text_net(tmp_path, text, name):
    p = tmp_path / f"{name}.prototxt"
    p.write_text(text)
    caffelite.set_random_seed(5)
    net = caffelite.Net(str(p), caffelite.TEST)
    _random_weights(net)
    return net, str(p)


@pytest.mark.parametrize("text", [RESNET_STYLE, ALEXNET_STYLE], ids=["resnet50_style", "alexnet_style"])
@pytest.mark.parametrize("fold", [False, True], ids=["bn", "fold_bn"])
def test_zoo_style_nets(text, fold, tmp_path):
    net, _ = _text_net(tmp_path, text, "net")
    x = np.random.default_rng(3).normal(0, 50, net.blobs["data"].shape).astype(np.float32)
    ours = {k: np.array(v) for k, v in net.forward(data=x).items()}
    model = export_onnx(net, tmp_path / "m.onnx", fold_bn=fold)
    if net.name == "resnet50_style":  # BatchNorm + Scale folded into the convolutions, or kept
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("BatchNormalization") == (0 if fold else 3)
    got = run_ort(tmp_path / "m.onnx", {"data": x})
    for k in net.outputs:
        assert_close(got[k], ours[k], what=k)


def test_jsegnet_other_shape_and_dynamic_batch(tmp_path):
    d = os.path.join(NETS, "jsegnet21v2_deploy")
    net = _net(os.path.join(d, "deploy.prototxt"), _weights(d))
    export_onnx(net, tmp_path / "s.onnx", input_shape=(1, 3, 64, 96))
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 64, 96)).astype(np.float32)
    net.forward(data=x)
    logits = np.array(net.blobs["out_deconv_final_up8"].data)
    got = run_ort(tmp_path / "s.onnx", {"data": x})["argMaxOut"]
    assert got.shape == (1, 1, 64, 96)
    top2 = np.sort(logits, axis=1)
    clear = (top2[:, -1] - top2[:, -2]) >= 1e-4 * np.abs(logits).max()
    assert np.array_equal(got[clear[:, None]], net.blobs["argMaxOut"].data[clear[:, None]])

    net.blobs["data"].reshape(1, 3, 32, 64)
    net.reshape()
    model = export_onnx(net, tmp_path / "d.onnx", dynamic_batch=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x3 = np.random.default_rng(1).uniform(0, 255, (3, 3, 32, 64)).astype(np.float32)
    got = run_ort(tmp_path / "d.onnx", {"data": x3})["argMaxOut"]
    ours = np.array(net.forward(data=x3)["argMaxOut"])
    assert got.shape == ours.shape == (3, 1, 32, 64)
    assert (got == ours).mean() > 0.999


def test_checker_metadata_opset_and_sparse_zeros(tmp_path):
    net, proto = _text_net(tmp_path, RESNET_STYLE, "resnet")
    w = net.params["res2a_branch2c"][0].data
    w[:, ::2] = 0  # a sparse layer: half of the weights exactly zero
    model = export_onnx(net, tmp_path / "m.onnx", opset=13, metadata={"source_model": proto})
    onnx.checker.check_model(onnx.load(tmp_path / "m.onnx"), full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["source_model"] == proto and meta["caffelite_net"] == "resnet50_style"
    assert model.opset_import[0].version == 13
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    exported = init["res2a_branch2c/W"]
    assert np.array_equal(exported == 0, w == 0) and np.array_equal(exported, w)
    # opset 11 is enough for a net without Softmax-over-a-middle-axis...
    export_onnx(net, tmp_path / "o11.onnx", opset=11)
    # ...but not for Softmax over channels of a 4-D blob
    sm, _ = _text_net(tmp_path, RESNET_STYLE.replace('bottom: "fc_nsfw" top: "prob"', 'bottom: "pool5" top: "prob"')
                      .replace("layer { name: \"fc_nsfw\"", "layer { name: \"fc_nsfw_unused\""), "sm")
    with pytest.raises(ExportError, match="layer 'prob'.*opset 11 is too old.*needs opset >= 13"):
        export_onnx(sm, tmp_path / "old.onnx", opset=11)
    assert not os.path.exists(tmp_path / "old.onnx")


def test_missing_onnx_package_is_one_clear_line(monkeypatch, tmp_path):
    from caffelite.errors import CaffeliteError

    net, _ = _text_net(tmp_path, ALEXNET_STYLE, "a")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(CaffeliteError, match=r"pip install 'caffelite\[onnx\]'"):
        export_onnx(net, tmp_path / "m.onnx")
    assert not os.path.exists(tmp_path / "m.onnx")


def _cli(capsys, *args):
    """Run ``caffelite export ARGS`` in this process; returns (exit code, stdout, stderr)."""
    from caffelite.cli import main

    capsys.readouterr()
    rc = main(["export", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_writes_a_model(tmp_path, capsys):
    d = os.path.join(NETS, "lenet")
    rc, out, err = _cli(capsys, "--model", os.path.join(d, "deploy.prototxt"), "--weights", _weights(d), "--onnx",
                        str(tmp_path / "lenet.onnx"), "--dynamic-batch", "--input-shape", "4,1,28,28")
    assert rc == 0, err
    model = onnx.load(tmp_path / "lenet.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["source_dialect"] in ("bvlc", "jacinto017", "jacinto016")
    assert meta["source_weights"].endswith("weights.caffemodel.xz") and meta["source_model"].endswith(".prototxt")
    x = load_npz(os.path.join(d, "input.npz"))["data"]
    assert_close(run_ort(tmp_path / "lenet.onnx", {"data": x})["prob"], load_npz(os.path.join(d, "blobs.npz"))["prob"])


def _bad_cases(tmp_path):
    train = os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", "initial", "train.prototxt")
    mvn = tmp_path / "mvn.prototxt"
    mvn.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 '
                   'dim: 3 } } }\nlayer { name: "norm" type: "MVN" bottom: "data" top: "norm" }\n')
    quant = tmp_path / "quant.prototxt"
    with open(os.path.join(NETS, "lenet", "deploy.prototxt")) as f:
        quant.write_text("quantize: true\n" + f.read())
    lenet = os.path.join(NETS, "lenet")
    softmax = tmp_path / "softmax.prototxt"
    softmax.write_text(mvn.read_text().replace('name: "norm" type: "MVN"', 'name: "prob" type: "Softmax"'))
    return [
        (["--model", train], r"layer 'data' \(type ImageLabelData\): reads a dataset.*Input layer for top 'data'"),
        (["--model", str(mvn)], r"layer 'norm' \(type MVN\): layer type MVN has no ONNX mapping"),
        (["--model", str(quant), "--weights", _weights(lenet)], "quantized.*holds no quantization ranges"),
        (["--model", os.path.join(lenet, "deploy.prototxt"), "--opset", "9"], "--opset 9: this export supports"),
        (["--model", str(softmax), "--opset", "11"],
         r"layer 'prob' \(type Softmax\): opset 11 is too old.*needs opset >= 13"),
    ]


def test_cli_bad_input_one_line_exit_2_no_file(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for args, pattern in _bad_cases(tmp_path):
        rc, out, err = _cli(capsys, *args, "--onnx", str(out_dir / "m.onnx"))
        lines = [ln for ln in err.splitlines() if ln.startswith("caffelite export: error:")]
        assert rc == 2, (args, err)
        assert len(lines) == 1, err
        assert re.search(pattern, lines[0]), lines[0]
        assert os.listdir(out_dir) == [], (args, os.listdir(out_dir))  # no file, no temp file


@pytest.mark.parametrize("source", ["fixture_bvlc", "shipped_jacinto"])
def test_fold_bn_on_jsegnet(source, tmp_path):
    """--fold-bn: BVLC BatchNorm + Scale (the Caffe fixture) and jacinto's 5-blob BatchNorm (the shipped net)."""
    if source == "fixture_bvlc":
        d = os.path.join(NETS, "jsegnet21v2_deploy")
        net = _net(os.path.join(d, "deploy.prototxt"), _weights(d))
        net.blobs["data"].reshape(1, 3, 64, 128)
        net.reshape()
    else:
        net = _small_float_net(os.path.join(prototxt_dir(), "cityscapes5_jsegnet21v2", "deploy.prototxt"))
    x = np.random.default_rng(4).uniform(0, 255, net.blobs["data"].shape).astype(np.float32)
    net.forward(data=x)
    model = export_onnx(net, tmp_path / "f.onnx", fold_bn=True)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and "Mul" not in ops and ops.count("Conv") == 17
    model.graph.output.append(onnx.helper.make_tensor_value_info("out_deconv_final_up8", 1, None))
    onnx.save(model, tmp_path / "f.onnx")
    got = run_ort(tmp_path / "f.onnx", {"data": x})
    assert_close(got["out_deconv_final_up8"], net.blobs["out_deconv_final_up8"].data, what="folded logits")
