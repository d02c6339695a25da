"""Engine selection (caffelite/ops/engine.py): names, CAFFELITE_ENGINE, Net.engine, auto's threshold, when packed
weights are (not) used and rebuilt, the plug-in interface, and the CLI's --engine / info column / bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

import caffelite
from caffelite import cli
from caffelite.ops import engine, sparse_conv

from conftest import FIXTURES

pytestmark = pytest.mark.skipif(not sparse_conv.available(), reason="sparse kernel not built")

NET = """
name: "e"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 16 dim: 12 dim: 40 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 group: 4 weight_filler { type: "gaussian" std: 0.3 } } }
"""


@pytest.fixture
def proto(tmp_path):
    p = tmp_path / "net.prototxt"
    p.write_text(NET)
    return str(p)


def _prune(w, fraction, seed=0):
    flat = w.reshape(w.shape[0], -1)
    k = int(round(fraction * flat.shape[1]))
    order = np.argsort(np.abs(flat) + np.random.default_rng(seed).random(flat.shape) * 1e-9, axis=1)[:, :k]
    np.put_along_axis(flat, order, 0.0, axis=1)


def _net(proto, phase=caffelite.TEST, c1=0.9, c2=0.1):
    net = caffelite.Net(proto, phase)
    _prune(net.layer_dict["c1"].blobs[0].data, c1)
    _prune(net.layer_dict["c2"].blobs[0].data, c2)
    net.repack()
    net.blobs["data"].data[...] = np.random.default_rng(1).standard_normal(net.blobs["data"].shape)
    return net


def test_resolve_names_and_env(monkeypatch):
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    assert engine.resolve(None) == "auto"
    assert engine.resolve("Dense") == "dense"
    monkeypatch.setenv(engine.ENV_VAR, "sparse")
    assert engine.resolve(None) == "sparse"
    assert engine.resolve("dense") == "dense"  # an explicit request wins over the environment
    monkeypatch.setenv(engine.ENV_VAR, "fast")
    with pytest.raises(engine.EngineError, match="CAFFELITE_ENGINE='fast': unknown engine"):
        engine.resolve(None)
    with pytest.raises(engine.EngineError, match="unknown engine"):
        engine.resolve("gpu")


def test_sparse_without_kernels_is_an_error_not_a_fallback(monkeypatch, proto):
    monkeypatch.setattr(sparse_conv, "_LIB", None)
    with pytest.raises(engine.EngineError, match="needs the compiled sparse kernels.*pip install"):
        engine.resolve("sparse")
    net = caffelite.Net(proto, caffelite.TEST)
    with pytest.raises(engine.EngineError):
        net.engine = "sparse"
    monkeypatch.setenv(engine.ENV_VAR, "sparse")
    with pytest.raises(engine.EngineError):
        caffelite.Net(proto, caffelite.TEST)


def test_auto_picks_by_zero_fraction(monkeypatch, proto):
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    net = _net(proto)
    assert net.engine == "auto"
    c1, c2 = net.layer_dict["c1"], net.layer_dict["c2"]
    assert c1.engine_plan == "sparse" and c2.engine_plan == "dense"
    net.forward()
    assert (c1.engine_used, c2.engine_used) == ("sparse", "dense")
    assert net.layer_dict["r1"].__dict__.get("engine_used") is None
    net.engine = "dense"
    net.forward()
    assert (c1.engine_used, c2.engine_used) == ("dense", "dense")
    net.engine = "sparse"
    net.forward()
    assert (c1.engine_used, c2.engine_used) == ("sparse", "sparse")


def test_env_var_pins_new_nets(monkeypatch, proto):
    monkeypatch.setenv(engine.ENV_VAR, "dense")
    net = _net(proto)
    assert net.engine == "dense" and net.layer_dict["c1"].engine_plan == "dense"


def test_train_and_shared_weight_nets_run_dense(monkeypatch, proto):
    monkeypatch.setenv(engine.ENV_VAR, "sparse")
    train = _net(proto, caffelite.TRAIN)
    assert all(layer.engine_plan == "dense" for layer in train.layers if layer.type == "Convolution")
    test = _net(proto)
    assert test.layer_dict["c1"].engine_plan == "sparse"
    test.share_weights_from(train)  # a solver's test net: the train net changes the weights under it
    assert test.layer_dict["c1"].engine_plan == "dense"


def test_packs_follow_weight_changes(monkeypatch, proto, tmp_path):
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    net = _net(proto)
    c1 = net.layer_dict["c1"]
    ref = net.forward()["c2"].copy()
    # a replaced weight array is repacked at the next forward
    w = c1.blobs[0].data.copy()
    w *= 2
    c1.blobs[0].set_data_array(w)
    doubled = net.forward()["c2"].copy()
    net.engine = "dense"
    np.testing.assert_array_equal(net.forward()["c2"], doubled)
    assert not np.array_equal(doubled, ref)
    # an in-place edit needs net.repack()
    net.engine = "sparse"
    c1.blobs[0].data[...] *= 0.5
    net.repack()
    np.testing.assert_array_equal(net.forward()["c2"], ref)
    # copy_from repacks
    path = str(tmp_path / "w.caffemodel")
    c1.blobs[0].data[...] *= 3
    net.save(path)
    other = _net(proto)
    other.engine = "sparse"
    other.copy_from(path)
    net.repack()
    np.testing.assert_array_equal(other.forward()["c2"], net.forward()["c2"])


def test_weight_rewriting_hooks_suspend_packed_engines(monkeypatch, proto):
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    net = _net(proto)
    c1 = net.layer_dict["c1"]

    def rewrite(_net, i, layer, *_):
        pass

    for event in ("before_forward", "after_forward"):
        net.add_hook(event, rewrite)
        net.forward()
        assert c1.engine_used == "dense"
        net.remove_hook(event, rewrite)

    def watch(_net, i, layer, *_):
        pass

    watch.observer = True
    net.add_hook("before_forward", watch)
    net.add_hook("after_forward", watch)
    net.forward()
    assert c1.engine_used == "sparse"


def test_suspension_is_per_net(monkeypatch, proto):
    """Another net's forward, here run from inside a weight-rewriting hook of this one, does not lift this net's
    suspension: its convolutions after the hook still run dense, and the other net keeps its sparse path."""
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    net, other = _net(proto, c2=0.9), _net(proto)

    def rewrite_and_run_other(_net, i, layer, *_):
        if layer.name == "r1":
            other.forward()

    net.add_hook("before_forward", rewrite_and_run_other)
    net.forward()
    assert net.layer_dict["c2"].engine_used == "dense" and net.layer_dict["c1"].engine_used == "dense"
    assert other.layer_dict["c1"].engine_used == "sparse"
    net.remove_hook("before_forward", rewrite_and_run_other)
    net.forward()
    assert net.layer_dict["c1"].engine_used == net.layer_dict["c2"].engine_used == "sparse"


def test_registered_engine_plugs_in(monkeypatch, proto):
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    calls = []

    def chooser(net, layer, requested):
        return layer.name == "c2"

    def runner(layer, x, w, b, out, scale, shift, relu_slope):
        calls.append(layer.name)
        out[...] = 7.0
        return True

    monkeypatch.setitem(engine._REGISTRY, "int8", (chooser, runner))
    net = _net(proto)
    assert net.layer_dict["c2"].engine_plan == "int8"  # auto: c1 goes sparse, c2 to the registered engine
    assert net.layer_dict["c1"].engine_plan == "sparse"
    assert (net.forward()["c2"] == 7.0).all() and calls == ["c2"]
    assert net.layer_dict["c2"].engine_used == "int8"
    net.engine = "int8"
    assert net.layer_dict["c1"].engine_plan == "dense"


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _deploy_with_weights(tmp_path, proto):
    net = _net(proto)
    w = str(tmp_path / "w.caffemodel")
    net.save(w)
    return w


def test_cli_time_engine_table(monkeypatch, proto, tmp_path, capsys):
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    w = _deploy_with_weights(tmp_path, proto)
    rc, out, err = _run(capsys, "time", "--model", proto, "--weights", w, "--engine", "auto", "--iterations", "2")
    assert rc == 0
    text = out + err
    assert "Average Forward pass" in text
    assert "Engine per layer (requested: auto)" in text
    assert "c1\tengine: sparse (zero weights 0.903)" in text
    assert "c2\tengine: dense (zero weights 0.097)" in text
    rc, out, err = _run(capsys, "time", "--model", proto, "--weights", w, "--engine", "sparse", "--iterations", "1")
    assert rc == 0 and "c2\tengine: sparse" in out + err


def test_cli_time_sparse_without_kernels_exits_2(monkeypatch, proto, tmp_path, capsys):
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    w = _deploy_with_weights(tmp_path, proto)
    monkeypatch.setattr(sparse_conv, "_LIB", None)
    rc, out, err = _run(capsys, "time", "--model", proto, "--weights", w, "--engine", "sparse")
    assert rc == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("caffelite time: error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0]  # one line, after the net's log
    assert "sparse needs the compiled sparse kernels" in lines[0] and "pip install" in lines[0]


def test_cli_time_unknown_engine_exits_2(proto, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["time", "--model", proto, "--engine", "turbo"])
    assert e.value.code == 2


def test_cli_info_shows_auto_engine(monkeypatch, proto, tmp_path, capsys):
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    w = _deploy_with_weights(tmp_path, proto)
    rc, out, _ = _run(capsys, "info", w)
    assert rc == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert "auto" in rows["name"] and "engine" in rows["name"]
    assert rows["c1"][-1] == "sparse" and rows["c1"][-3] == "0.903"
    assert rows["c2"][-1] == "dense"
    monkeypatch.setattr(sparse_conv, "_LIB", None)
    rc, out, _ = _run(capsys, "info", w)
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("c1 ")] == ["dense"]


def test_info_on_fixture_caffemodel(capsys):
    rc, out, _ = _run(capsys, "info", os.path.join(FIXTURES, "nets", "cifar10_quick", "weights.caffemodel"))
    assert rc == 0
    conv_rows = [line.split() for line in out.splitlines() if " Convolution " in line]
    assert conv_rows and all(r[-1] == "dense" for r in conv_rows)  # trained without pruning: few zeros


QNET = """
name: "q"
quantize: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 8 dim: 6 dim: 20 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 }
                      bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "r1" }
layer { name: "conv2" type: "Convolution" bottom: "r1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
"""


def test_jacinto_quantization_rewriting_weights_is_followed(monkeypatch):
    """caffe-jacinto's quantization rewrites the weights in place during a forward: the packed copy must not
    be used (the outputs equal the dense engine's forward after forward)."""
    from google.protobuf import text_format

    from caffelite import backend, jacinto
    from caffelite.proto import caffe_pb2
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    outs = {}
    for eng in ("dense", "sparse"):
        backend.set_random_seed(3)
        net = caffelite.Net(text_format.Parse(QNET, caffe_pb2.NetParameter()), caffelite.TEST)
        for name in ("conv1", "conv2"):
            _prune(net.layer_dict[name].blobs[0].data, 0.85)
        net.engine = eng
        jacinto.attach_quantization(net)
        rng = np.random.default_rng(0)
        outs[eng] = [net.forward(data=rng.standard_normal((2, 8, 6, 20)))["conv2"].copy() for _ in range(3)]
    for a, b in zip(outs["dense"], outs["sparse"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_infer_and_eval_nets_use_auto(monkeypatch, tmp_path):
    """``caffelite infer`` / ``eval`` build their net through Segmenter: TEST phase, engine auto, so a pruned
    model runs its convolutions sparse."""
    from caffelite.segmentation.infer import Segmenter
    monkeypatch.delenv(engine.ENV_VAR, raising=False)
    d = os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy")
    net = caffelite.Net(os.path.join(d, "deploy.prototxt"), os.path.join(d, "weights.caffemodel.xz"), caffelite.TEST)
    for layer in net.layers:
        if layer.type == "Convolution":
            _prune(layer.blobs[0].data, 0.8)
    w = str(tmp_path / "pruned.caffemodel")
    net.save(w)
    seg = Segmenter(os.path.join(d, "deploy.prototxt"), w)
    assert seg.net.engine == "auto"
    n, c, h, wd = seg.shape
    seg.predict_net_size(np.random.default_rng(0).integers(0, 255, (c, h, wd)).astype(np.uint8))
    assert seg.net.layer_dict["res3a_branch2a"].engine_used == "sparse"
