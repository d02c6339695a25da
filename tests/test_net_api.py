"""The pycaffe-like Python API of caffelite.Net, weight copying / saving, dtype, and hooks."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from google.protobuf import text_format

import caffelite
from caffelite.errors import NetError
from caffelite.proto import caffe_pb2, dialect

from conftest import FIXTURES
from helpers import load_npz

LENET = os.path.join(FIXTURES, "nets", "lenet")
LENET_PROTO = os.path.join(LENET, "deploy.prototxt")
LENET_W = os.path.join(LENET, "weights.caffemodel.xz")
CIFAR = os.path.join(FIXTURES, "nets", "cifar10_quick")


@pytest.fixture(scope="module")
def lenet():
    return caffelite.Net(LENET_PROTO, LENET_W, caffelite.TEST)


def lenet_input():
    return load_npz(os.path.join(LENET, "input.npz"))["data"]


# ---------------------------------------------------------------------------------------------- construction
def test_constructor_forms_agree(lenet):
    a = caffelite.Net(LENET_PROTO, caffelite.TEST, weights=LENET_W)
    param = text_format.Parse(open(LENET_PROTO).read(), dialect("bvlc").NetParameter())
    b = caffelite.Net(param, caffelite.TEST)
    b.copy_from(LENET_W)
    c = caffelite.Net(LENET_PROTO, phase=caffelite.TEST)
    for net in (a, b):
        for name, blobs in lenet.params.items():
            for x, y in zip(blobs, net.params[name], strict=True):
                np.testing.assert_array_equal(x.data, y.data)
    assert c.phase == caffelite.TEST and list(c.params) == list(lenet.params)


def test_pycaffe_attributes(lenet):
    assert lenet.inputs == ["data"]
    assert lenet.outputs == ["prob"]
    assert list(lenet.blobs) == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]
    assert list(lenet.params) == ["conv1", "conv2", "ip1", "ip2"]
    assert [p.shape for p in lenet.params["conv1"]] == [(20, 1, 5, 5), (20,)]
    assert lenet._layer_names[1] == "conv1"
    assert [layer.type for layer in lenet.layers][:3] == ["Input", "Convolution", "Pooling"]
    assert lenet.layers[1].blobs[0] is lenet.params["conv1"][0]
    assert lenet.layer_dict["ip1"] is lenet.layers[lenet._layer_names.index("ip1")]
    assert lenet.top_names["conv1"] == ["conv1"] and lenet.bottom_names["conv1"] == ["data"]
    assert lenet.blobs["data"].shape == (2, 1, 28, 28)
    assert lenet.blobs["data"].data.dtype == np.float32


def test_forward_returns_outputs_and_extra_blobs(lenet):
    out = lenet.forward(data=lenet_input(), blobs=["ip1"])
    assert set(out) == {"prob", "ip1"}
    want = load_npz(os.path.join(LENET, "blobs.npz"))["prob"]
    np.testing.assert_allclose(out["prob"], want, rtol=1e-4, atol=1e-6)
    assert out["prob"] is lenet.blobs["prob"].data


def test_forward_start_end(lenet):
    lenet.forward(data=lenet_input())
    full = np.array(lenet.blobs["prob"].data)
    lenet.blobs["prob"].data[...] = 0
    out = lenet.forward(end="pool1")
    assert set(out) == {"pool1"}
    assert not lenet.blobs["prob"].data.any()
    lenet.forward(start="conv2")
    np.testing.assert_array_equal(lenet.blobs["prob"].data, full)
    with pytest.raises(NetError, match="no layer named 'nope'"):
        lenet.forward(end="nope")


def test_forward_unknown_input_name(lenet):
    with pytest.raises(NetError, match="no blob named 'image'"):
        lenet.forward(image=lenet_input())


def test_backward_returns_input_diffs():
    net = forced_lenet()
    net.forward(data=lenet_input())
    top = np.zeros((2, 10), np.float32)
    top[:, 3] = 1
    diffs = net.backward(prob=top, diffs=["ip1"])
    assert set(diffs) == {"data", "ip1"}
    assert diffs["data"].shape == (2, 1, 28, 28) and diffs["data"].any()
    # a partial backward from ip2 down to ip1 matches the full one at ip1
    ip1_diff = np.array(diffs["ip1"])
    net.blobs["ip1"].diff[...] = 0
    out = net.backward(start="prob", end="relu1", prob=top)
    np.testing.assert_allclose(net.blobs["ip1"].diff, ip1_diff)
    assert set(out) == {"ip1"}


def test_float64_net():
    net = caffelite.Net(LENET_PROTO, LENET_W, caffelite.TEST, dtype=np.float64)
    assert net.blobs["conv1"].data.dtype == np.float64
    assert net.params["conv1"][0].data.dtype == np.float64
    out = net.forward(data=lenet_input())
    want = load_npz(os.path.join(LENET, "blobs.npz"))["prob"]
    np.testing.assert_allclose(out["prob"], want, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- weights
def test_copy_from_logs_copied_and_ignored(caplog):
    net = caffelite.Net(os.path.join(CIFAR, "deploy.prototxt"), caffelite.TEST)
    src = caffelite.Net(os.path.join(CIFAR, "deploy.prototxt"), os.path.join(CIFAR, "weights.caffemodel"),
                        caffelite.TEST).to_proto()
    extra = src.layer.add()
    extra.name, extra.type = "unused_layer", "ReLU"
    lg = logging.getLogger("caffelite")
    lg.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="caffelite"):
            net.copy_from(src)
    finally:
        lg.removeHandler(caplog.handler)
    text = caplog.text
    assert "Copying source layer conv1 Type:Convolution #blobs=2" in text
    assert "Ignoring source layer unused_layer" in text


def test_weights_shape_mismatch_names_layer_and_shapes():
    net = caffelite.Net(os.path.join(CIFAR, "deploy.prototxt"), caffelite.TEST)
    with pytest.raises(NetError, match=r"layer 'conv1'.*shape mismatch. Source param shape is \[20, 1, 5, 5\]; "
                                       r"target param shape is \[32, 3, 5, 5\]"):
        net.copy_from(LENET_W)


def test_weights_for_another_net():
    text = 'layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 4 } } }\n' \
           'layer { name: "fc" type: "InnerProduct" bottom: "d" top: "fc" inner_product_param { num_output: 2 } }'
    net = caffelite.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffelite.TEST)
    with pytest.raises(NetError, match="another net"):
        net.copy_from(LENET_W)


def test_legacy_4d_blob_dims_match_right_aligned():
    net = caffelite.Net(LENET_PROTO, LENET_W, caffelite.TEST)
    src = net.to_proto(form="bvlc")
    for lp in src.layer:
        for bp in lp.blobs:
            dims = list(bp.shape.dim)
            bp.ClearField("shape")
            bp.num, bp.channels, bp.height, bp.width = [1] * (4 - len(dims)) + dims
    fresh = caffelite.Net(LENET_PROTO, caffelite.TEST)
    fresh.copy_from(src)
    np.testing.assert_array_equal(fresh.params["ip1"][1].data, net.params["ip1"][1].data)
    np.testing.assert_array_equal(fresh.params["ip1"][0].data, net.params["ip1"][0].data)
    bad = src.layer[[lp.name for lp in src.layer].index("ip1")].blobs[1]
    bad.num, bad.channels, bad.height, bad.width = 1, 1, 500, 1  # same count, wrong layout
    with pytest.raises(NetError, match="layer 'ip1'.*shape mismatch"):
        fresh.copy_from(src)


@pytest.mark.parametrize("form", ["jacinto", "bvlc"])
def test_save_and_reload(tmp_path, lenet, form):
    path = tmp_path / f"lenet_{form}.caffemodel"
    lenet.save(str(path), form=form)
    raw = caffelite.io.read_weights(str(path))
    blob = [lp for lp in raw.layer if lp.name == "conv1"][0].blobs[0]
    assert (form == "jacinto") == blob.HasField("raw_data")
    again = caffelite.Net(LENET_PROTO, str(path), caffelite.TEST)
    for name, blobs in lenet.params.items():
        for x, y in zip(blobs, again.params[name], strict=True):
            np.testing.assert_array_equal(x.data, y.data)


def test_to_proto_has_every_layer_and_blobs():
    net = caffelite.Net(os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy", "deploy.prototxt"), caffelite.TEST)
    p = net.to_proto()
    assert [lp.name for lp in p.layer] == net._layer_names
    assert any(lp.type == "Split" for lp in p.layer)
    conv = [lp for lp in p.layer if lp.name == "conv1a"][0]
    assert len(conv.blobs) == 2 and list(conv.blobs[0].shape.dim) == [32, 3, 5, 5]


def test_share_weights_from():
    a = caffelite.Net(LENET_PROTO, LENET_W, caffelite.TEST)
    b = caffelite.Net(LENET_PROTO, caffelite.TEST)
    b.share_weights_from(a)
    assert b.params["conv1"][0].data is a.params["conv1"][0].data
    a.params["ip2"][1].data[...] = 7
    assert (b.params["ip2"][1].data == 7).all()


# ---------------------------------------------------------------------------------------------- hooks
def test_hooks_called_in_order_and_can_edit_tops():
    net = caffelite.Net(LENET_PROTO, LENET_W, caffelite.TEST)
    calls = []
    net.add_hook("forward_start", lambda n: calls.append("start"))
    net.add_hook("before_forward", lambda n, i, layer, b, t: calls.append(("before", i, layer.name)))
    net.add_hook("forward_end", lambda n: calls.append("end"))

    def zero_ip2(n, i, layer, bottom, top):
        if layer.name == "ip2":
            top[0].data[...] = 0

    net.add_hook("after_forward", zero_ip2)
    out = net.forward(data=lenet_input())
    assert calls[0] == "start" and calls[-1] == "end"
    assert [c[2] for c in calls[1:-1]] == net._layer_names
    np.testing.assert_allclose(out["prob"], 0.1, rtol=1e-6)  # softmax of zeros
    net.hooks.clear()
    out = net.forward(data=lenet_input())
    assert not np.allclose(out["prob"], 0.1)


def forced_lenet():
    text = "force_backward: true\n" + open(LENET_PROTO).read()
    return caffelite.Net(text_format.Parse(text, dialect("bvlc").NetParameter()), caffelite.TEST, weights=LENET_W)


def test_deploy_net_without_loss_has_no_backward():
    net = caffelite.Net(LENET_PROTO, LENET_W, caffelite.TEST)
    net.forward(data=lenet_input())
    assert not any(net._layer_need_backward)  # as in Caffe: nothing reaches a loss
    assert not net.backward(prob=np.ones((2, 10), np.float32))["data"].any()


def test_backward_hooks_and_bad_event():
    net = forced_lenet()
    seen = []
    net.add_hook("after_backward", lambda n, i, layer, b, t: seen.append(layer.name))
    net.forward(data=lenet_input())
    net.backward(prob=np.ones((2, 10), np.float32))
    assert seen[0] == "prob" and "conv1" in seen
    with pytest.raises(ValueError, match="unknown hook event"):
        net.add_hook("before_everything", print)


def test_blob_loss_weights_and_update():
    text = ('layer { name: "d" type: "Input" top: "d" top: "t" input_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "d" top: "fc" '
            'inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "t" top: "loss" loss_weight: 0.5 }')
    net = caffelite.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffelite.TRAIN)
    assert net.blob_loss_weights == {"d": 0.0, "t": 0.0, "fc": 0.0, "loss": 0.5}
    net.blobs["d"].data[...] = 1
    before = np.array(net.params["fc"][0].data)
    loss = net.forward_backward()
    assert loss == pytest.approx(0.5 * float(net.blobs["loss"].data))
    net.update()
    np.testing.assert_allclose(net.params["fc"][0].data, before - net.params["fc"][0].diff)


def test_init_log_in_caffe_format(caplog):
    text = ('layer { name: "d" type: "Input" top: "d" top: "t" input_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "r" type: "ReLU" bottom: "d" top: "d" }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "d" bottom: "t" top: "loss" '
            'include { phase: TRAIN } }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "d" bottom: "t" top: "loss" loss_weight: 2 '
            'include { phase: TEST } }')
    lg = logging.getLogger("caffelite")
    lg.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="caffelite"):
            caffelite.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffelite.TEST)
    finally:
        lg.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records]
    for want in ["The NetState phase (1) differed from the phase (0) specified by a rule in layer loss",
                 "Creating Layer r", "r <- d", "r -> d (in-place)", "d -> t", "Setting up loss",
                 "Top shape: 2 3 (6)", "Top shape: (1)", "    with loss weight 2",
                 "Memory required for data: 76", "loss does not need backward computation.",
                 "d does not need backward computation.", "This network produces output loss",
                 "Network initialization done."]:
        assert want in lines, want
    # reported from the last layer down, as Caffe does
    assert lines.index("loss does not need backward computation.") < \
        lines.index("d does not need backward computation.")


def test_batchnorm_legacy_digits_order_is_permuted():
    """A 5-blob BatchNorm stored as [γ, β, mean, var, reserved] (NVCaffe/DIGITS) is permuted on load
    (docs/jacinto-spec.md §d.5)."""
    from conftest import REFERENCE
    proto = os.path.join(REFERENCE, "cifar10_jacintonet11v2", "test", "deploy.prototxt")
    caffelite.set_random_seed(3)
    net = caffelite.Net(proto, caffelite.TEST)
    bn = [name for name, layer in net.layer_dict.items() if layer.type == "BatchNorm"][0]
    rng = np.random.default_rng(0)
    for b in net.params[bn]:
        b.data[...] = rng.uniform(0.5, 1.5, b.shape)
    src = net.to_proto(form="bvlc")
    lp = [lp for lp in src.layer if lp.name == bn][0]
    blobs = [type(b)() for b in lp.blobs]
    for b, k in zip(blobs, [3, 4, 0, 1, 2], strict=True):
        b.CopyFrom(lp.blobs[k])
    del lp.blobs[:]
    lp.blobs.extend(blobs)
    fresh = caffelite.Net(proto, caffelite.TEST)
    fresh.copy_from(src)
    for x, y in zip(net.params[bn], fresh.params[bn], strict=True):
        np.testing.assert_array_equal(x.data, y.data)


def test_bvlc_netparameter_keeps_bvlc_only_options():
    """A BVLC-dialect NetParameter object (Clip's clip_param has no jacinto field) builds a working net."""
    d = os.path.join(FIXTURES, "layers", "clip")
    param = text_format.Parse(open(os.path.join(d, "net.prototxt")).read(), dialect("bvlc").NetParameter())
    with np.load(os.path.join(d, "io.npz")) as npz:
        io = dict(npz)
    net = caffelite.Net(param, caffelite.TEST)
    net.forward(**{k.split("/", 1)[1]: v for k, v in io.items() if k.startswith("bottom/")})
    np.testing.assert_array_equal(net.blobs["clip"].data, io["top/clip"])
