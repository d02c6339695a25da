"""Net construction as Caffe does it: wiring, in-place layers, split insertion, parameter sharing, phase /
level / stage rules, loss weights, need-backward analysis, reshape, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

import caffelite
from caffelite import graph
from caffelite.errors import NetError
from caffelite.proto import caffe_pb2


def param_of(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def make(text, phase=caffelite.TEST, **kw):
    return caffelite.Net(param_of(text), phase, **kw)


def inp(name, *shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def layer(name, type_, bottoms=(), tops=None, extra=""):
    tops = [name] if tops is None else tops
    b = "".join(f' bottom: "{x}"' for x in bottoms)
    t = "".join(f' top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}"{b}{t} {extra} }}\n'


def ip(name, bottom, n, extra=""):
    return layer(name, "InnerProduct", [bottom], None,
                 f'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.5 }} '
                 f'bias_filler {{ type: "gaussian" std: 0.5 }} }} {extra}')


FAN_OUT = inp("data", 2, 3) + ip("ip1", "data", 4) + ip("a", "ip1", 2) + ip("b", "ip1", 2) \
    + layer("sum", "Eltwise", ["a", "b"])


# ---------------------------------------------------------------------------------------------------- splits
def test_split_inserted_with_caffe_names():
    net = make(FAN_OUT)
    assert net._layer_names == ["data", "ip1", "ip1_ip1_0_split", "a", "b", "sum"]
    assert net.layer_dict["ip1_ip1_0_split"].type == "Split"
    assert net.top_names["ip1_ip1_0_split"] == ["ip1_ip1_0_split_0", "ip1_ip1_0_split_1"]
    assert net.bottom_names["a"] == ["ip1_ip1_0_split_0"]
    assert net.bottom_names["b"] == ["ip1_ip1_0_split_1"]
    net.forward(data=np.ones((2, 3)))
    assert np.shares_memory(net.blobs["ip1_ip1_0_split_1"].data, net.blobs["ip1"].data)


def test_no_split_without_fan_out():
    p = param_of(inp("data", 2, 3) + ip("ip1", "data", 4))
    assert [lp.name for lp in graph.insert_splits(p).layer] == ["data", "ip1"]


def test_split_after_in_place_layer_uses_last_writer_name():
    net = make(inp("data", 2, 3) + ip("ip1", "data", 4) + layer("relu", "ReLU", ["ip1"], ["ip1"])
               + ip("a", "ip1", 2) + ip("b", "ip1", 2))
    assert "ip1_relu_0_split" in net.layer_dict
    assert net.bottom_names["a"] == ["ip1_relu_0_split_0"]


def test_split_carries_loss_weight_of_fanned_out_top():
    p = param_of(inp("data", 2, 3) + ip("ip1", "data", 4, "loss_weight: 2") + ip("a", "ip1", 2))
    out = graph.insert_splits(p)
    names = [lp.name for lp in out.layer]
    assert names == ["data", "ip1", "ip1_ip1_0_split", "a"]
    assert list(out.layer[1].loss_weight) == []
    assert list(out.layer[2].loss_weight) == [2.0, 0.0]
    assert out.layer[3].bottom[0] == "ip1_ip1_0_split_1"  # split top 0 is the loss


def test_split_backward_sums_branch_diffs():
    net = make("force_backward: true\n" + inp("data", 2, 3)
               + layer("p2", "Power", ["data"], None, "power_param { scale: 2 }")
               + layer("p3", "Power", ["data"], None, "power_param { scale: 3 }")
               + layer("sum", "Eltwise", ["p2", "p3"], None, "loss_weight: 1"))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["data"].data[...] = x
    loss = net.forward_backward()
    assert loss == pytest.approx(5 * x.sum())
    np.testing.assert_allclose(net.blobs["data"].diff, 5.0)


# ---------------------------------------------------------------------------------------------------- in-place
def test_in_place_shares_the_blob():
    net = make(inp("data", 2, 3) + ip("ip1", "data", 4) + layer("relu", "ReLU", ["ip1"], ["ip1"]))
    assert list(net.blobs) == ["data", "ip1"]
    assert net.layers[2]  # relu exists
    out = net.forward(data=np.random.default_rng(0).normal(size=(2, 3)))
    assert (out["ip1"] >= 0).all()


def test_duplicate_top_not_in_place_is_an_error():
    with pytest.raises(NetError, match="layer 'b'.*Top blob 'x' produced by multiple sources"):
        make(inp("data", 2, 3) + layer("a", "ReLU", ["data"], ["x"]) + layer("b", "ReLU", ["data"], ["x"]))


def test_unknown_bottom_is_an_error():
    with pytest.raises(NetError, match="layer 'ip'.*Unknown bottom blob 'nothere'"):
        make(inp("data", 2, 3) + ip("ip", "nothere", 2))


def test_unknown_type_lists_known_types():
    with pytest.raises(NetError, match="layer 'x'.*unknown layer type 'Frobnicate'.*Convolution.*ReLU"):
        make(inp("data", 2, 3) + layer("x", "Frobnicate", ["data"]))


def test_eltwise_shape_mismatch_names_layer():
    with pytest.raises(NetError, match="layer 'sum'"):
        make(inp("data", 2, 3) + ip("a", "data", 4) + ip("b", "data", 5) + layer("sum", "Eltwise", ["a", "b"]))


def test_concat_shape_mismatch_names_layer():
    with pytest.raises(NetError, match="layer 'cat'"):
        make(inp("x", 2, 3, 4, 4) + inp("y", 2, 3, 5, 5) + layer("cat", "Concat", ["x", "y"]))


def test_inner_product_after_reshape_names_layer():
    net = make(inp("data", 2, 3) + ip("ip", "data", 4))
    with pytest.raises(NetError, match="layer 'ip'"):
        net.forward(data=np.zeros((2, 5), np.float32))


def test_propagate_down_count_checked():
    with pytest.raises(NetError, match="propagate_down"):
        make(inp("data", 2, 3) + layer("r", "ReLU", ["data"], None, "propagate_down: true propagate_down: false"))


def test_include_and_exclude_together_is_an_error():
    with pytest.raises(NetError, match="either include rules or exclude rules"):
        make(inp("data", 2, 3) + layer("r", "ReLU", ["data"], None,
                                       "include { phase: TEST } exclude { phase: TRAIN }"))


# ---------------------------------------------------------------------------------------------------- rules
RULES = inp("data", 2, 3) \
    + layer("train_only", "ReLU", ["data"], None, "include { phase: TRAIN }") \
    + layer("test_only", "ReLU", ["data"], None, "include { phase: TEST }") \
    + layer("not_deploy", "ReLU", ["data"], None, 'exclude { stage: "deploy" }') \
    + layer("deploy_and_x", "ReLU", ["data"], None, 'include { stage: "deploy" stage: "x" }') \
    + layer("lvl", "ReLU", ["data"], None, "include { min_level: 1 max_level: 2 }") \
    + layer("notstage", "ReLU", ["data"], None, 'include { not_stage: "deploy" phase: TRAIN }')


@pytest.mark.parametrize("phase,level,stages,want", [
    (caffelite.TRAIN, None, None, ["train_only", "not_deploy", "notstage"]),
    (caffelite.TEST, None, None, ["test_only", "not_deploy"]),
    (caffelite.TEST, None, ["deploy"], ["test_only"]),
    (caffelite.TEST, None, ["deploy", "x"], ["test_only", "deploy_and_x"]),
    (caffelite.TRAIN, 1, ["deploy"], ["train_only", "lvl"]),
    (caffelite.TEST, 3, None, ["test_only", "not_deploy"]),
])
def test_phase_level_stage_rules(phase, level, stages, want):
    net = make(RULES, phase, level=level, stages=stages)
    assert [n for n in net._layer_names if net.layer_dict[n].type != "Split"] == ["data"] + want
    assert net.phase == phase


def test_layers_get_the_net_phase():
    net = make(inp("data", 2, 3) + layer("r", "ReLU", ["data"]), caffelite.TRAIN)
    assert net.layers[1].phase == caffelite.TRAIN
    assert net.layers[1].param.phase == caffelite.TRAIN


# ---------------------------------------------------------------------------------------------------- sharing
def shared(mode_a="", mode_b="", n_b=4, extra_b=""):
    return (inp("x", 2, 3) + inp("y", 2, 3)
            + ip("ip_a", "x", 4, f'param {{ name: "w" {mode_a} }} param {{ name: "bias" }} loss_weight: 1')
            + ip("ip_b", "y", n_b, f'param {{ name: "w" {mode_b} }} param {{ name: "bias" }} {extra_b} '
                                   "loss_weight: 1"))


def test_params_shared_by_name():
    net = make(shared())
    wa, wb = net.params["ip_a"][0], net.params["ip_b"][0]
    assert np.shares_memory(wa.data, wb.data)
    assert len(net.learnable_params) == 2
    assert net.learnable_param_names == ["ip_a/0", "ip_a/1"]
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    net.blobs["x"].data[...] = x
    net.blobs["y"].data[...] = y
    net.clear_param_diffs()
    net.forward_backward()
    # d(sum(W x + b) + sum(W y + b))/dW = sum over samples of (x + y), per output row
    want = np.tile((x + y).sum(axis=0), (4, 1))
    np.testing.assert_allclose(wa.diff, want, rtol=1e-5)
    np.testing.assert_allclose(net.learnable_params[1].diff, 4.0, rtol=1e-6)


def test_shared_shape_mismatch():
    with pytest.raises(NetError, match="Cannot share param 'w' owned by layer 'ip_a' with layer 'ip_b'; "
                                       "shape mismatch.*\\[4, 3\\].*\\[5, 3\\]"):
        make(shared(n_b=5))


def test_shared_permissive_needs_equal_count_only():
    text = inp("x", 2, 3) + inp("y", 2, 4) \
        + ip("ip_a", "x", 4, 'param { name: "w" }') \
        + ip("ip_b", "y", 3, 'param { name: "w" share_mode: PERMISSIVE }')
    net = make(text)
    assert net.params["ip_b"][0].shape == (3, 4)
    assert np.shares_memory(net.params["ip_a"][0].data, net.params["ip_b"][0].data)
    with pytest.raises(NetError, match="shape mismatch"):
        make(text.replace(" share_mode: PERMISSIVE", ""))


def test_shared_lr_mult_mismatch():
    with pytest.raises(NetError, match="Shared param 'w' has mismatched lr_mult"):
        make(shared(mode_a="lr_mult: 1", mode_b="lr_mult: 2"))


def test_lr_and_decay_multipliers():
    net = make(inp("x", 2, 3) + ip("a", "x", 4, "param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 "
                                                "decay_mult: 0 }") + ip("b", "a", 2))
    assert net.params_lr == [1.0, 2.0, 1.0, 1.0]
    assert net.params_weight_decay == [1.0, 0.0, 1.0, 1.0]
    assert net.learnable_params[2] is net.params["b"][0]


# ---------------------------------------------------------------------------------------------------- backward
def test_need_backward_analysis():
    text = (inp("data", 2, 3) + inp("label", 2, 1)
            + ip("frozen", "data", 4, "param { lr_mult: 0 } param { lr_mult: 0 }")
            + ip("ip", "frozen", 2)
            + ip("side", "frozen", 2)  # reaches no loss
            + layer("loss", "SoftmaxWithLoss", ["ip", "label"]))
    net = make(text, caffelite.TRAIN)
    need = dict(zip(net._layer_names, net._layer_need_backward, strict=True))
    assert need["ip"] and not need["frozen"] and not need["side"] and not need["data"]
    assert need["loss"]
    assert net.outputs == ["loss", "side"]
    assert net._bottom_need_backward[net._layer_names.index("loss")] == [True, False]
    frozen = net.params["frozen"][0]
    net.blobs["label"].data[...] = [[0], [1]]
    net.forward_backward()
    assert not frozen.diff.any()
    assert net.params["ip"][0].diff.any()


def test_force_backward_reaches_inputs_but_not_labels():
    text = ("force_backward: true\n" + inp("data", 2, 3) + inp("label", 2, 1) + ip("ip", "data", 2)
            + layer("loss", "SoftmaxWithLoss", ["ip", "label"]))
    net = make(text, caffelite.TRAIN)
    net.blobs["label"].data[...] = [[0], [1]]
    net.forward_backward()
    assert net.blobs["data"].diff.any()
    assert net._bottom_need_backward[-1] == [True, False]


def test_propagate_down_false_stops_backward():
    text = (inp("data", 2, 3) + ip("a", "data", 3) + ip("b", "a", 3, "propagate_down: false")
            + layer("loss", "EuclideanLoss", ["b", "a"]))
    net = make(text, caffelite.TRAIN)
    net.forward(data=np.ones((2, 3)))
    net.backward()
    assert net.params["b"][0].diff.any()
    # 'a' still gets a diff through the loss's second bottom
    assert net.params["a"][0].diff.any()
    assert net._bottom_need_backward[net._layer_names.index("b")] == [False]


def test_loss_weight_scales_gradient_and_loss():
    base = inp("data", 2, 3) + inp("t", 2, 3) + ip("a", "data", 3)
    n1 = make(base + layer("loss", "EuclideanLoss", ["a", "t"]), caffelite.TRAIN)
    n2 = make(base + layer("loss", "EuclideanLoss", ["a", "t"], None, "loss_weight: 3"), caffelite.TRAIN)
    n2.copy_from(n1.to_proto())
    rng = np.random.default_rng(3)
    feed = {"data": rng.normal(size=(2, 3)), "t": rng.normal(size=(2, 3))}
    for n in (n1, n2):
        for k, v in feed.items():
            n.blobs[k].data[...] = v
    l1, l2 = n1.forward_backward(), n2.forward_backward()
    assert l2 == pytest.approx(3 * l1, rel=1e-5)
    np.testing.assert_allclose(n2.params["a"][0].diff, 3 * n1.params["a"][0].diff, rtol=1e-5)
    # the reported top is the unweighted loss (Caffe)
    np.testing.assert_allclose(n2.blobs["loss"].data, n1.blobs["loss"].data)


# ---------------------------------------------------------------------------------------------------- reshape
CONV = inp("data", 1, 3, 8, 8) + layer(
    "conv", "Convolution", ["data"], None,
    'convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "msra" } }') \
    + layer("pool", "Pooling", ["conv"], None, "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")


def test_reshape_whole_net_from_blob():
    net = make(CONV)
    assert net.blobs["pool"].shape == (1, 4, 2, 2)
    net.blobs["data"].reshape(2, 3, 32, 16)
    net.reshape()
    assert net.blobs["conv"].shape == (2, 4, 16, 8)
    assert net.blobs["pool"].shape == (2, 4, 8, 4)


def test_forward_with_new_input_shape_reshapes():
    net = make(CONV)
    out = net.forward(data=np.ones((3, 3, 16, 16), np.float32))
    assert out["pool"].shape == (3, 4, 4, 4)


def test_edited_input_shape_in_param():
    p = param_of(CONV)
    p.layer[0].input_param.shape[0].dim[2] = 64
    net = caffelite.Net(p, caffelite.TEST)
    assert net.blobs["pool"].shape == (1, 4, 16, 2)


def test_deprecated_input_fields_are_upgraded():
    text = 'input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n' + CONV.split("\n", 1)[1]
    net = make(text)
    assert net._layer_names[0] == "input" and net.inputs == ["data"]
    assert net.blobs["pool"].shape == (1, 4, 2, 2)
    text = 'input: "data" input_dim: 1 input_dim: 3 input_dim: 16 input_dim: 8\n' + CONV.split("\n", 1)[1]
    assert make(text).blobs["pool"].shape == (1, 4, 4, 2)


# ---------------------------------------------------------------------------------------------------- gradients
GRAD_NET = ("force_backward: true\n" + inp("data", 2, 3, 5, 5) + inp("label", 2)
            + layer("conv", "Convolution", ["data"], None,
                    'convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" '
                    'std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } }')
            + layer("tanh", "TanH", ["conv"], ["conv"])
            + ip("a", "conv", 3, 'param { name: "w" } param { name: "bias" }')
            + ip("b", "conv", 3, 'param { name: "w" } param { name: "bias" }')
            + layer("sum", "Eltwise", ["a", "b"], None, "eltwise_param { coeff: 1 coeff: -0.5 }")
            + layer("loss", "SoftmaxWithLoss", ["sum", "label"])
            + layer("l2", "EuclideanLoss", ["a", "b"], None, "loss_weight: 0.3"))


def test_whole_net_gradient_float64():
    """Net backward (splits, in-place, shared params, two weighted losses) vs central differences."""
    caffelite.set_random_seed(11)
    net = make(GRAD_NET, caffelite.TRAIN, dtype=np.float64)
    rng = np.random.default_rng(11)
    net.blobs["data"].data[...] = rng.normal(size=(2, 3, 5, 5))
    net.blobs["label"].data[...] = [0, 2]
    assert np.shares_memory(net.params["a"][0].data, net.params["b"][0].data)
    net.clear_param_diffs()
    net.forward_backward()
    targets = [net.blobs["data"], net.params["conv"][0], net.params["conv"][1], net.params["a"][0],
               net.params["a"][1]]
    analytic = [np.array(t.diff) for t in targets]
    step = 1e-4
    for t, ana in zip(targets, analytic, strict=True):
        flat = t.data.reshape(-1)
        for k in rng.choice(flat.size, size=min(15, flat.size), replace=False):
            keep = flat[k]
            flat[k] = keep + step
            net.forward()
            up = net.loss
            flat[k] = keep - step
            net.forward()
            down = net.loss
            flat[k] = keep
            numeric = (up - down) / (2 * step)
            assert ana.reshape(-1)[k] == pytest.approx(numeric, rel=1e-5, abs=1e-7)
