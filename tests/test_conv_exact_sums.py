"""Convolution with exact sums (``ops.conv.conv_forward_exact``) and its dispatch (``layer.exact_sums``); the
InnerProduct layer's exact sums.

Operands on power-of-two fixed-point grids (8-bit inputs, 12-bit weights) over enough taps that float32 sums
exceed 2**24 grid steps, so every float32 order rounds some sums. The reference is integer arithmetic: the
exact sum in grid steps, scaled and rounded once to float32, then the bias added in float32.
"""

from __future__ import annotations

import numpy as np
import pytest

from caffelite.ops import conv as K
from caffelite.ops import conv_dispatch, native
from caffelite.ops.im2col import ConvGeometry

FX, FW = 7, 10  # fractional bits of the inputs and of the weights
G3 = ConvGeometry(3, 3, 1, 1, 1, 1, 1, 1)


def _case(seed, cin=128, cout=16, group=1, g=G3, hw=(12, 20)):
    rng = np.random.default_rng(seed)
    qx = rng.integers(0, 256, (2, cin, *hw))
    qw = rng.integers(-512, 2048, (cout, cin // group, g.kh, g.kw))  # mostly positive: large sums
    qw[rng.random(qw.shape) < 0.3] = 0
    x = (qx * 2.0 ** -FX).astype(np.float32)
    w = (qw * 2.0 ** -FW).astype(np.float32)
    b = rng.normal(0, 3, cout).astype(np.float32)
    return qx, qw, x, w, b


def _reference(qx, qw, b, g, group, out_shape):
    """Integer sums (int64, exact) -> scaled and rounded once to float32 -> + bias in float32."""
    n, cin, h, wd = qx.shape
    cout = qw.shape[0]
    ho, wo = out_shape
    xp = np.zeros((n, cin, h + 2 * g.ph, wd + 2 * g.pw), np.int64)
    xp[:, :, g.ph:g.ph + h, g.pw:g.pw + wd] = qx
    cg, mg = cin // group, cout // group
    acc = np.zeros((n, cout, ho, wo), np.int64)
    for gi in range(group):
        for i in range(g.kh):
            for j in range(g.kw):
                r0, c0 = i * g.dh, j * g.dw
                win = xp[:, gi * cg:(gi + 1) * cg, r0:r0 + g.sh * (ho - 1) + 1:g.sh, c0:c0 + g.sw * (wo - 1) + 1:g.sw]
                acc[:, gi * mg:(gi + 1) * mg] += np.einsum("mc,nchw->nmhw", qw[gi * mg:(gi + 1) * mg, :, i, j], win)
    assert np.abs(acc).max() < 2 ** 53
    y = (acc.astype(np.float64) * 2.0 ** -(FX + FW)).astype(np.float32)  # one rounding
    return y + b.reshape(1, -1, 1, 1)


CASES = {
    "3x3": dict(),
    "grouped_dilated": dict(cin=256, cout=32, group=4, g=ConvGeometry(3, 3, 1, 1, 2, 2, 2, 2)),
    "strided_5x5": dict(cin=96, g=ConvGeometry(5, 5, 2, 2, 2, 2, 1, 1), hw=(17, 23)),
    "pointwise": dict(cin=1024, g=ConvGeometry(1, 1, 1, 1, 0, 0, 1, 1)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_sums_are_the_integer_sums_rounded_once(name):
    kw = CASES[name]
    g, group = kw.get("g", G3), kw.get("group", 1)
    qx, qw, x, w, b = _case(1, **kw)
    out_shape = g.out_shape(*x.shape[2:])
    want = _reference(qx, qw, b, g, group, out_shape)
    out = np.empty((x.shape[0], w.shape[0], *out_shape), np.float32)
    K.conv_forward_exact(x, w, b, g, group, out)
    np.testing.assert_array_equal(out, want)
    with native.enabled(False):  # another summation order: the same exact sums
        out2 = np.empty_like(out)
        K.conv_forward_exact(x, w, b, g, group, out2)
    np.testing.assert_array_equal(out2, want)
    # what makes the case a test: the float32 path rounds some of these sums to other values
    f32 = np.empty_like(out)
    K.conv_forward(x, w, b, g, group, f32)
    assert np.count_nonzero(f32 != want) > 0


class _Layer:
    """The attributes conv_dispatch reads from a Convolution layer."""

    def __init__(self, g, group, exact):
        self.geom, self.group, self.exact_sums = g, group, exact
        self.engine_plan = "sparse"  # exact sums take precedence over the float32 sparse kernel


def test_dispatch_honours_exact_sums():
    g = G3
    qx, qw, x, w, b = _case(2)
    want = _reference(qx, qw, b, g, 1, g.out_shape(*x.shape[2:]))
    out = np.empty(want.shape, np.float32)
    layer = _Layer(g, 1, True)
    assert conv_dispatch.conv_forward(layer, x, w, b, out)
    np.testing.assert_array_equal(out, want)
    assert layer.engine_used == "dense"
    # a fused epilogue is not taken: the net then runs the in-place layers one by one
    assert not conv_dispatch.conv_forward(layer, x, w, b, out, scale=np.ones(16, np.float32), fused=True)


def test_inner_product_exact_sums():
    """An InnerProduct flagged ``exact_sums``: the integer sums rounded once, then the bias; unflagged, BLAS's
    float32 sums round some of these (4096 taps of 8-bit x 12-bit values, mostly positive) differently."""
    import caffelite
    from caffelite import io

    rng = np.random.default_rng(3)
    qx = rng.integers(0, 256, (4, 4096))
    qw = rng.integers(-512, 2048, (24, 4096))
    b = rng.normal(0, 3, 24).astype(np.float32)
    p, _ = io.parse_net_text("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 4096 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 24 } }
    """)
    net = caffelite.Net(p, caffelite.TEST)
    net.params["fc"][0].data[...] = qw * 2.0 ** -FW
    net.params["fc"][1].data[...] = b
    x = (qx * 2.0 ** -FX).astype(np.float32)
    want = ((qx @ qw.T).astype(np.float64) * 2.0 ** -(FX + FW)).astype(np.float32) + b
    f32 = np.array(net.forward(x=x)["y"])
    assert np.count_nonzero(f32 != want) > 0
    net.layer_dict["fc"].exact_sums = True
    np.testing.assert_array_equal(net.forward(x=x)["y"], want)
