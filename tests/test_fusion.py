"""Inference fusion (caffelite/fusion.py): conv -> BatchNorm/Scale -> ReLU chains computed in one pass.

Every check compares a fused forward with the same net run layer by layer (``net.fusion = False``).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

import caffelite
from caffelite.net import Net
from caffelite.ops import native
from helpers import assert_close

pytestmark = pytest.mark.skipif(not native.available(), reason="fusion needs the compiled kernels")

HERE = os.path.dirname(__file__)

NET = """
name: "fusion"
input: "data" input_shape { dim: 2 dim: 5 dim: 13 dim: 37 }
force_backward: %s
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 12 kernel_size: 3 pad: 1 bias_term: true
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "c1/bn" type: "BatchNorm" bottom: "c1" top: "c1"
  batch_norm_param { scale_bias: true } }
layer { name: "c1/relu" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 16 kernel_size: 3 pad: 2 dilation: 2 group: 4 bias_term: false
    weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c2/bn" type: "BatchNorm" bottom: "c2" top: "c2" }
layer { name: "c2/scale" type: "Scale" bottom: "c2" top: "c2"
  scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 }
    bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "c2/relu" type: "ReLU" bottom: "c2" top: "c2" relu_param { negative_slope: 0.1 } }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3"
  convolution_param { num_output: 8 kernel_size: 1 stride: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c3/relu" type: "ReLU" bottom: "c3" top: "c3" }
layer { name: "pool" type: "Pooling" bottom: "c3" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def _net(tmp_path, force_backward=False, phase=caffelite.TEST):
    path = tmp_path / "net.prototxt"
    path.write_text(NET % ("true" if force_backward else "false"))
    caffelite.set_random_seed(3)
    net = Net(str(path), phase)
    rs = np.random.default_rng(0)
    for layer in net.layers:
        if layer.type == "BatchNorm":  # non-trivial running statistics
            c = layer.blobs[0].shape[0]
            layer.blobs[0].data[...] = rs.standard_normal(c)
            layer.blobs[1].data[...] = rs.uniform(0.2, 3.0, c)
            if len(layer.blobs) == 3:
                layer.blobs[2].data[...] = 1.7  # BVLC's scale factor
            else:
                layer.blobs[3].data[...] = rs.uniform(0.5, 2.0, c)
                layer.blobs[4].data[...] = rs.standard_normal(c)
    net.blobs["data"].data[...] = rs.standard_normal(net.blobs["data"].shape)
    return net


def _run(net, fused, **kw):
    net.fusion = fused
    out = net.forward(**kw)
    return {k: v.copy() for k, v in out.items()}, {k: b.data.copy() for k, b in net.blobs.items()}


#: float32 sums in another order: rtol 1e-5 plus 1e-5 of the largest magnitude (at least 1)
_close = functools.partial(assert_close, rtol=1e-5, rel_atol=1e-5, floor=1.0)


def test_plan_finds_the_chains(tmp_path):
    net = _net(tmp_path)
    chains = {net._layer_names[i]: [net._layer_names[k] for k in range(c.conv, c.last + 1)]
              for i, c in net._chains.items()}
    assert chains == {"c1": ["c1", "c1/bn", "c1/relu"], "c2": ["c2", "c2/bn", "c2/scale", "c2/relu"],
                      "c3": ["c3", "c3/relu"]}


def test_fused_forward_equals_layer_by_layer(tmp_path):
    net = _net(tmp_path)
    ref_out, ref_blobs = _run(net, False)
    assert net._fused_chains == []
    out, blobs = _run(net, True)
    assert len(net._fused_chains) == 3
    for k in ref_blobs:
        _close(blobs[k], ref_blobs[k])
    _close(out["pool"], ref_out["pool"])
    assert (blobs["c2"] < 0).any() and (blobs["c1"] >= 0).all()  # the leaky and the plain ReLU both applied


def test_partial_forward_and_hooks_run_layer_by_layer(tmp_path):
    net = _net(tmp_path)
    _, ref = _run(net, False, end="c2/scale")
    _, got = _run(net, True, end="c2/scale")
    assert [net._layer_names[c.conv] for c in net._fused_chains] == ["c1"]  # c2's chain is cut by end
    for k in ("c1", "c2"):
        _close(got[k], ref[k])
    seen = []
    net.add_hook("after_forward", lambda n, i, layer, b, t: seen.append(layer.name))
    _run(net, True)
    assert net._fused_chains == [] and "c2/bn" in seen


def test_train_phase_does_not_fuse(tmp_path):
    net = _net(tmp_path, phase=caffelite.TRAIN)
    assert net._chains == {}


def test_backward_after_fused_forward(tmp_path):
    """A backward after a fused forward re-runs the chains layer by layer first: same gradients."""
    grads = {}
    for fused in (False, True):
        net = _net(tmp_path, force_backward=True)
        _run(net, fused)
        assert bool(net._fused_chains) == fused
        net.blobs["pool"].diff[...] = np.random.default_rng(1).standard_normal(net.blobs["pool"].shape)
        net.backward()
        grads[fused] = (net.blobs["data"].diff.copy(), [p.diff.copy() for p in net.learnable_params])
    _close(grads[True][0], grads[False][0])
    for a, b in zip(grads[True][1], grads[False][1], strict=True):
        _close(a, b)


def test_float64_net_runs_layer_by_layer(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET % "false")
    net = Net(str(path), caffelite.TEST, dtype=np.float64)
    net.forward()
    assert net._chains and net._fused_chains == []


def test_jsegnet_deploy_fused_equals_unfused():
    net = Net(os.path.join(HERE, "data", "reference", "cityscapes5_jsegnet21v2", "test", "deploy.prototxt"),
              caffelite.TEST)
    rs = np.random.default_rng(0)
    net.blobs["data"].reshape(1, 3, 64, 128)
    net.reshape()
    for layer in net.layers:
        if layer.type == "BatchNorm":
            for k, b in enumerate(layer.blobs):
                b.data[...] = rs.uniform(0.5, 1.5, b.shape) if k in (1, 3) else rs.standard_normal(b.shape) * 0.1
        elif layer.type == "Convolution":
            w = layer.blobs[0]
            w.data[...] = rs.standard_normal(w.shape) * np.sqrt(2.0 / np.prod(w.shape[1:]))
    net.blobs["data"].data[...] = rs.uniform(0, 255, net.blobs["data"].shape)
    _, ref = _run(net, False)
    _, got = _run(net, True)
    assert len(net._fused_chains) >= 10
    for k in ref:
        if k != "argMaxOut":  # ties between near-equal scores may flip with rounding
            _close(got[k], ref[k])
    assert (got["argMaxOut"] == ref["argMaxOut"]).mean() > 0.999
