"""Engine behaviour around the Net/layer contract: the solver iteration reaching caffe-jacinto's BatchNorm,
backward-only buffers skipped where no backward runs, layers without backward under force_backward, and
options a layer does not read raising instead of being silently ignored."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
from google.protobuf import text_format

import caffelite
from caffelite.errors import NetError, UnsupportedError
from caffelite.layer import create_layer, layer_class, registered_types
from caffelite.proto import caffe_pb2

from test_net import inp, ip, layer, make

JBN = 'batch_norm_param { scale_bias: true moving_average_fraction: 0.9 eps: 1e-4 }'


def bn_net(in_place_bn=True, relu=True, force=True, phase=caffelite.TEST):
    """data -> BatchNorm (jacinto, scale_bias) [-> in-place ReLU] -> InnerProduct -> Euclidean loss."""
    top = "data" if in_place_bn else "bn"
    text = ("force_backward: true\n" if force else "") + inp("data", 2, 3, 4, 4) + inp("t", 2, 2)
    text += layer("bn", "BatchNorm", ["data"], [top], JBN)
    if relu:
        text += layer("relu", "ReLU", [top], [top])
    text += ip("ip", top, 2) + layer("loss", "EuclideanLoss", ["ip", "t"])
    return make(text, phase, dtype=np.float64)


@contextlib.contextmanager
def captured(caplog, level):
    """caplog for the caffelite logger even after log.setup_logging turned its propagation off."""
    lg = logging.getLogger("caffelite")
    lg.addHandler(caplog.handler)
    try:
        with caplog.at_level(level, logger="caffelite"):
            yield
    finally:
        lg.removeHandler(caplog.handler)


def feed(net, seed=0):
    r = np.random.default_rng(seed)
    for name in net.inputs:
        net.blobs[name].data[...] = r.standard_normal(net.blobs[name].shape)


def set_bn(net, seed=1):
    r = np.random.default_rng(seed)
    bn = net.layer_dict["bn"]
    bn.blobs[0].data[...] = r.standard_normal(3)
    bn.blobs[1].data[...] = r.uniform(0.5, 2, 3)
    bn.blobs[3].data[...] = r.uniform(0.5, 1.5, 3)
    bn.blobs[4].data[...] = r.standard_normal(3)


# ---------------------------------------------------------------------------------------------------- iteration
def batch_stats(x):
    return x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))


def test_set_iteration_drives_jacinto_batchnorm_running_average():
    """§d.3: every forward of iteration 0 overwrites the running statistics (iter_size > 1 included); later
    iterations blend with 1 - maf. Without set_iteration the layer's own forward count stands in."""
    net = bn_net(force=False, phase=caffelite.TRAIN)
    assert net.iter is None
    bn = net.layer_dict["bn"]
    x1 = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    x2 = x1 * 0.5 + 1
    m = x1.size / 3
    net.set_iteration(0)
    assert net.iter == 0 and bn.solver_iter == 0
    for x in (x1, x2):  # two forwards in iteration 0 (iter_size 2): both overwrite
        net.forward(data=x)
    mean2, var2 = batch_stats(x2)
    np.testing.assert_allclose(bn.blobs[0].data, mean2, rtol=1e-12)
    np.testing.assert_allclose(bn.blobs[1].data, var2 * m / (m - 1), rtol=1e-12)
    net.set_iteration(5)  # e.g. after a resume: blend from the first forward on
    net.forward(data=x1)
    mean1, var1 = batch_stats(x1)
    maf = float(np.float32(0.9))  # the proto field is a float
    np.testing.assert_allclose(bn.blobs[0].data, maf * mean2 + (1 - maf) * mean1, rtol=1e-12)
    np.testing.assert_allclose(bn.blobs[1].data, (maf * var2 + (1 - maf) * var1) * m / (m - 1), rtol=1e-12)

    counting = bn_net(force=False, phase=caffelite.TRAIN)  # no solver: the second forward already blends
    for x in (x1, x2):
        counting.forward(data=x)
    np.testing.assert_allclose(counting.layer_dict["bn"].blobs[0].data, maf * mean1 + (1 - maf) * mean2,
                               rtol=1e-12)


# ---------------------------------------------------------------------------------------------------- in-place BN
def test_in_place_test_phase_batchnorm_dgamma_survives_in_place_relu():
    """TEST-phase jacinto BatchNorm in place, followed by an in-place ReLU that rewrites the top: dγ and dβ
    equal those of the same net with an out-of-place BatchNorm."""
    grads = []
    for in_place in (True, False):
        net = bn_net(in_place_bn=in_place)
        set_bn(net)
        for k, b in enumerate(net.params["ip"]):
            b.data[...] = np.random.default_rng(4 + k).standard_normal(b.shape)
        feed(net)
        net.forward()
        net.backward()
        bn = net.layer_dict["bn"]
        grads.append([bn.blobs[3].diff.copy(), bn.blobs[4].diff.copy(), net.blobs["data"].diff.copy()])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert np.abs(grads[0][0]).sum() > 0


# ---------------------------------------------------------------------------------------------------- needs_backward
DEPLOY = (inp("data", 1, 3, 4, 4) + layer("scale", "Scale", ["data"], ["data"], "scale_param { bias_term: true }")
          + layer("prelu", "PReLU", ["data"], ["data"]) + layer("lrn", "LRN", ["data"], ["data"])
          + layer("bn", "BatchNorm", ["data"], ["data"], JBN))


@pytest.mark.parametrize("train", [False, True])
def test_in_place_copies_only_when_backward_runs(train):
    text = DEPLOY + (inp("t", 1, 3, 4, 4) + layer("loss", "EuclideanLoss", ["data", "t"]) if train else "")
    net = make(text, caffelite.TRAIN if train else caffelite.TEST)
    feed(net)
    net.forward()
    layers = net.layer_dict
    assert [layers[n].needs_backward for n in ("scale", "prelu", "lrn", "bn")] == [train] * 4
    kept = [layers["scale"]._saved_x, layers["prelu"]._saved_x, layers["lrn"]._x]
    assert all((k is not None) == train for k in kept)
    assert (layers["bn"].xhat is not None) == train  # TRAIN: batch statistics; x̂ kept only for backward


def test_scale_in_place_without_learned_scale_keeps_nothing():
    """A frozen (lr_mult 0) in-place Scale below a learnable layer needs backward for its bottom only: no copy."""
    base = inp("data", 2, 3) + inp("t", 2, 3) + ip("a", "data", 3)
    frozen = layer("scale", "Scale", ["a"], ["a"], "param { lr_mult: 0 }")  # γ = 1
    nets = []
    for extra in (frozen, ""):
        caffelite.set_random_seed(7)
        net = make(base + extra + layer("loss", "EuclideanLoss", ["a", "t"]), caffelite.TRAIN)
        feed(net)
        net.forward_backward()
        nets.append(net)
    scale = nets[0].layer_dict["scale"]
    assert scale.needs_backward and scale.param_propagate_down == [False] and scale._saved_x is None
    np.testing.assert_allclose(nets[0].params["a"][0].diff, nets[1].params["a"][0].diff, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- no backward
NO_BW = (inp("data", 2, 3) + inp("label", 2) + ip("ip", "data", 3)
         + layer("thr", "Threshold", ["ip"], ["thr"]) + layer("am", "ArgMax", ["ip"], ["am"])
         + layer("acc", "Accuracy", ["ip", "label"], ["acc"])
         + layer("loss", "SoftmaxWithLoss", ["ip", "label"]))


def test_force_backward_skips_layers_without_backward():
    net = make("force_backward: true\n" + NO_BW, caffelite.TRAIN)
    need = dict(zip(net._layer_names, net._layer_need_backward, strict=True))
    assert not need["thr"] and not need["am"] and not need["acc"] and need["ip"] and need["loss"]
    feed(net)
    net.blobs["label"].data[...] = [0, 2]
    net.forward()
    net.backward()
    assert net.blobs["data"].diff.any() and not net.blobs["label"].diff.any()


def test_explicit_propagate_down_false_wins_over_force_backward():
    text = "force_backward: true\n" + inp("data", 2, 3) + ip("a", "data", 3, "propagate_down: false") \
        + inp("t", 2, 3) + layer("loss", "EuclideanLoss", ["a", "t"])
    net = make(text, caffelite.TRAIN)
    assert net._bottom_need_backward[net._layer_names.index("a")] == [False]
    feed(net)
    net.forward()
    net.backward()
    assert not net.blobs["data"].diff.any() and net.params["a"][0].diff.any()


def test_layer_without_backward_on_a_learnable_path():
    body = inp("data", 2, 3) + inp("t", 2, 3) + ip("a", "data", 3)
    tail = ip("b", "thr", 3) + layer("loss", "EuclideanLoss", ["b", "t"])
    net = make(body + layer("thr", "Threshold", ["a"], ["thr"]) + tail, caffelite.TRAIN)
    feed(net)
    net.forward()  # forward-only use of such a net is fine
    with pytest.raises(NetError, match=r"thr.*propagate_down: false"):
        net.backward()
    net = make(body + layer("thr", "Threshold", ["a"], ["thr"], "propagate_down: false") + tail, caffelite.TRAIN)
    feed(net)
    net.forward_backward()
    assert net.params["b"][0].diff.any() and not net.params["a"][0].diff.any()


# ---------------------------------------------------------------------------------------------------- options
def lp(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


@pytest.mark.parametrize("text,field", [
    ('type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" loss_param { ignore_label: 3 }',
     "loss_param.ignore_label"),
    ('type: "SigmoidCrossEntropyLoss" bottom: "a" bottom: "b" top: "l" loss_param { label_weights: 2 }',
     "loss_param.label_weights"),
    ('type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" loss_param { normalization: FULL }',
     "loss_param.normalization"),
])
def test_option_the_layer_does_not_read_raises(text, field):
    with pytest.raises(UnsupportedError, match=rf"'n'.*{field}") as e:
        create_layer(lp('name: "n" ' + text))
    assert e.value.layer == "n"


def test_option_at_its_default_and_foreign_params(caplog):
    create_layer(lp('name: "n" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" loss_param { normalize: false }'))
    with captured(caplog, logging.WARNING):
        create_layer(lp('name: "r" type: "ReLU" bottom: "a" top: "a" convolution_param { num_output: 3 }'))
    assert "convolution_param" in caplog.text and "r" in caplog.text


def test_float16_math_is_unsupported():
    with pytest.raises(UnsupportedError, match=r"forward_type = FLOAT16"):
        make(inp("data", 2, 3) + layer("r", "ReLU", ["data"], ["r"], "forward_type: FLOAT16"))
    make(inp("data", 2, 3) + layer("r", "ReLU", ["data"], ["r"], "forward_type: FLOAT forward_math: FLOAT"))
    with pytest.raises(UnsupportedError, match=r"default_backward_math = FLOAT16"):
        make("default_backward_math: FLOAT16\n" + inp("data", 2, 3))


def test_debug_info_logs_mean_abs_values(caplog):
    text = "debug_info: true\n" + inp("data", 2, 3) + inp("t", 2, 2) + ip("a", "data", 2) \
        + layer("loss", "EuclideanLoss", ["a", "t"])
    net = make(text, caffelite.TRAIN)
    feed(net)
    with captured(caplog, logging.INFO):
        net.forward_backward()
    a = net.blobs["a"].data
    assert f"    [Forward] Layer a, top blob a data: {np.abs(a).mean():g}" in caplog.text
    assert f"    [Forward] Layer a, param blob 0 data: {np.abs(net.params['a'][0].data).mean():g}" in caplog.text
    assert f"    [Backward] Layer loss, bottom blob a diff: {np.abs(net.blobs['a'].diff).mean():g}" in caplog.text
    assert "    [Backward] Layer a, param blob 1 diff: " in caplog.text
    assert "bottom blob data diff" not in caplog.text  # the Input needs no diff
    ps = net.learnable_params
    l1 = sum(np.abs(p.data).sum() for p in ps)
    assert f"    [Backward] All net params (data, diff): L1 norm = ({l1:g}, " in caplog.text


MINE = {"Input", "Split", "ReLU", "PReLU", "Sigmoid", "TanH", "ELU", "AbsVal", "BNLL", "Power", "Exp", "Log",
        "Threshold", "Clip", "Swish", "Dropout", "Eltwise", "Bias", "Scale", "Concat", "Slice", "Crop", "Flatten",
        "Reshape", "Tile", "Silence", "Filter", "Reduction", "ArgMax", "Softmax", "SoftmaxWithLoss",
        "SigmoidCrossEntropyLoss", "EuclideanLoss", "Accuracy", "LRN", "MVN", "BatchNorm"}


def test_param_fields_declared_and_real():
    """Every declared option exists in the schema (no typo silently disables the check), and the engine's
    layers all declare theirs."""
    for t in registered_types():
        fields = layer_class(t).param_fields
        if t in MINE:
            assert fields is not None, t
        for msg, names in (fields or {}).items():
            desc = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name[msg].message_type
            assert set(names) <= set(desc.fields_by_name), (t, msg, set(names) - set(desc.fields_by_name))


def test_blobs_inside_the_net_definition_initialise_the_layers():
    """A NetParameter carrying blobs (e.g. a caffemodel's) initialises the layers, as Caffe's Layer does."""
    caffelite.set_random_seed(1)
    src = make(inp("data", 2, 3) + ip("a", "data", 4) + layer("r", "ReLU", ["a"], ["a"]))
    with_blobs = src.to_proto()
    caffelite.set_random_seed(2)
    net = caffelite.Net(with_blobs, caffelite.TEST)
    for k in range(2):
        np.testing.assert_array_equal(net.params["a"][k].data, src.params["a"][k].data)
    assert not len(net.layers[1].param.blobs) and not len(net._param.layer[1].blobs)  # not held twice
    assert len(net.to_proto().layer[1].blobs) == 2
    x = np.random.default_rng(0).standard_normal((2, 3))
    np.testing.assert_array_equal(net.forward(data=x)["a"], src.forward(data=x)["a"])


def test_pycaffe_legacy_blob_accessors():
    net = make(inp("data", 2, 3, 5, 7) + ip("a", "data", 4))
    d, a = net.blobs["data"], net.blobs["a"]
    assert (d.num, d.channels, d.height, d.width) == (2, 3, 5, 7)
    assert (a.num, a.channels, a.height, a.width) == (2, 4, 1, 1)  # Caffe's LegacyShape pads with 1
    d.reshape(4, 3, 5, 7)
    net.reshape()
    assert (d.num, a.num) == (4, 4) and d.count == 420


def test_solver_iteration_reaches_batchnorm_with_iter_size():
    """End to end: the solver tells the net its iteration, so with iter_size 2 both forwards of iteration 0
    overwrite the jacinto running statistics and those of iteration 1 blend (§d.3)."""
    from caffelite.solvers import get_solver
    net = bn_net(force=False, phase=caffelite.TRAIN)
    xs = [np.random.default_rng(k).standard_normal((2, 3, 4, 4)) * (k + 1) for k in range(4)]
    fed = []

    def next_batch(n):
        n.blobs["data"].data[...] = xs[len(fed)]
        fed.append(len(fed))

    net.add_hook("forward_start", next_batch)
    sp = text_format.Parse('type: "SGD" base_lr: 0 lr_policy: "fixed" iter_size: 2 max_iter: 2 display: 0 '
                           'snapshot: 0', caffe_pb2.SolverParameter())
    solver = get_solver(sp, net=net)
    bn = net.layer_dict["bn"]
    m = xs[0].size / 3
    solver.step(1)
    mean, var = batch_stats(xs[1])
    np.testing.assert_allclose(bn.blobs[0].data, mean, rtol=1e-12)
    np.testing.assert_allclose(bn.blobs[1].data, var * m / (m - 1), rtol=1e-12)
    solver.step(1)
    maf = float(np.float32(0.9))
    for x in xs[2:]:
        mean = maf * mean + (1 - maf) * batch_stats(x)[0]
    np.testing.assert_allclose(bn.blobs[0].data, mean, rtol=1e-12)
    assert fed == [0, 1, 2, 3]
