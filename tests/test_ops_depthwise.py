"""Depthwise correlation, transposed correlation (bilinear upsampling) and weight gradient against plain
per-tap references: many geometries, N > 1, odd sizes, dilation, non-contiguous outputs."""

import itertools

import numpy as np
import pytest

from caffelite.ops import depthwise as D
from caffelite.ops import native
from caffelite.ops.im2col import ConvGeometry


def _windows(x, g, ho, wo):
    """tap (i, j) -> the (N, C, ho, wo) input values it multiplies (zero padding)."""
    n, c, h, w = x.shape
    hp = max(h + 2 * g.ph, (ho - 1) * g.sh + g.dh * (g.kh - 1) + 1)
    wp = max(w + 2 * g.pw, (wo - 1) * g.sw + g.dw * (g.kw - 1) + 1)
    xpad = np.zeros((n, c, hp, wp), x.dtype)
    xpad[:, :, g.ph:g.ph + h, g.pw:g.pw + w] = x
    ey, ex = (ho - 1) * g.sh + 1, (wo - 1) * g.sw + 1
    return {(i, j): xpad[:, :, i * g.dh:i * g.dh + ey:g.sh, j * g.dw:j * g.dw + ex:g.sw]
            for i in range(g.kh) for j in range(g.kw)}


def _ref_correlate(x, wk, g, ho, wo):
    out = None
    for (i, j), v in _windows(x, g, ho, wo).items():  # row-major tap order
        term = v * wk[:, i, j].reshape(1, -1, 1, 1)
        out = term if out is None else out + term
    return out


def _ref_scatter(src, wk, g, h, w):
    """The adjoint: every source value times each tap added into a zeroed, padded output."""
    n, c, hs, ws = src.shape
    hp = max(h + 2 * g.ph, (hs - 1) * g.sh + g.dh * (g.kh - 1) + 1)
    wp = max(w + 2 * g.pw, (ws - 1) * g.sw + g.dw * (g.kw - 1) + 1)
    buf = np.zeros((n, c, hp, wp), src.dtype)
    for i in range(g.kh):
        for j in range(g.kw):
            buf[:, :, i * g.dh:i * g.dh + (hs - 1) * g.sh + 1:g.sh, j * g.dw:j * g.dw + (ws - 1) * g.sw + 1:g.sw] += \
                src * wk[:, i, j].reshape(1, -1, 1, 1)
    return buf[:, :, g.ph:g.ph + h, g.pw:g.pw + w]


def _ref_weight_grad(x, dy, g):
    ho, wo = dy.shape[2:]
    return np.stack([np.stack([(_windows(x, g, ho, wo)[i, j] * dy).sum(axis=(0, 2, 3)) for j in range(g.kw)], 1)
                     for i in range(g.kh)], 1)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


GEOMS = [ConvGeometry(k, k, s, s, p, p, d, d)
         for k, s, p, d in itertools.product([1, 2, 3, 4], [1, 2, 3], [0, 1, 2], [1, 2]) if p < d * (k - 1) + 1]
SIZES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 2, 8, 6), (3, 1, 4, 9)]


@pytest.fixture(autouse=True, params=["native", "numpy"])
def _kernels(request):
    """Every test runs with the compiled kernels (when built) and on the NumPy path alone."""
    with native.enabled(request.param == "native"):
        yield request.param


@pytest.mark.parametrize("g", GEOMS, ids=lambda g: f"k{g.kh}s{g.sh}p{g.ph}d{g.dh}")
def test_correlate_scatter_weight_grad_match_references(g):
    rs = np.random.default_rng(g.kh * 100 + g.sh * 10 + g.ph + g.dh * 1000)
    for n, c, h, w in SIZES:
        wk = rs.standard_normal((c, g.kh, g.kw)).astype(np.float32)
        # correlation (convolution forward, deconvolution dx) on h x w
        ho, wo = g.out_shape(h, w)
        if ho > 0 and wo > 0:
            x = rs.standard_normal((n, c, h, w)).astype(np.float32)
            out = np.full((n, c, ho, wo), np.nan, np.float32)
            D._dw_correlate(x, wk, g, ho, wo, out)
            np.testing.assert_array_equal(_bits(out), _bits(_ref_correlate(x, wk, g, ho, wo)))
            dy = rs.standard_normal((n, c, ho, wo)).astype(np.float32)
            dwk = rs.standard_normal(wk.shape).astype(np.float32)
            want = dwk + _ref_weight_grad(x, dy, g)
            D._dw_weight_grad(x, dy, g, dwk)
            np.testing.assert_array_equal(_bits(dwk), _bits(want))
        # transposed correlation (deconvolution forward, convolution dx) from h x w
        hd, wd = g.deconv_out_shape(h, w)
        if hd > 0 and wd > 0:
            src = rs.standard_normal((n, c, h, w)).astype(np.float32)
            out = np.full((n, c, hd, wd), np.nan, np.float32)
            D._dw_scatter(src, wk, g, hd, wd, out)
            np.testing.assert_array_equal(out, _ref_scatter(src, wk, g, hd, wd))


def test_bilinear_upsampling_takes_the_block_path(monkeypatch):
    monkeypatch.setattr(native, "is_enabled", lambda: False)  # the NumPy route is what this checks
    calls = []
    blocks = D._dw_scatter_blocks
    monkeypatch.setattr(D, "_dw_scatter_blocks", lambda *a: calls.append(1) or blocks(*a))
    monkeypatch.setattr(D, "_BLOCK", 64)  # several blocks of rows, the last one partial
    monkeypatch.setattr(D, "_MIN_SPAN", 1)
    g = ConvGeometry(4, 4, 2, 2, 1, 1)
    rs = np.random.default_rng(0)
    src = rs.standard_normal((2, 3, 13, 10)).astype(np.float32)
    wk = rs.standard_normal((3, 4, 4)).astype(np.float32)
    out = np.empty((2, 3, 26, 20), np.float32)
    D._dw_scatter(src, wk, g, 26, 20, out)
    assert calls
    np.testing.assert_array_equal(out, _ref_scatter(src, wk, g, 26, 20))
    x = rs.standard_normal((2, 3, 26, 20)).astype(np.float32)
    got = np.empty((2, 3, 13, 10), np.float32)
    D._dw_correlate(x, wk, g, 13, 10, got)
    np.testing.assert_array_equal(_bits(got), _bits(_ref_correlate(x, wk, g, 13, 10)))


def test_non_contiguous_outputs_and_larger_extents():
    rs = np.random.default_rng(1)
    g = ConvGeometry(4, 4, 2, 2, 1, 1)
    wk = rs.standard_normal((3, 4, 4)).astype(np.float32)
    src = rs.standard_normal((2, 3, 5, 6)).astype(np.float32)
    out = np.zeros((2, 3, 10, 24), np.float32)[..., ::2]
    D._dw_scatter(src, wk, g, 10, 12, out)
    np.testing.assert_array_equal(out, _ref_scatter(src, wk, g, 10, 12))
    # a convolution's dx can be taller than the windows reach (rows no window covers get zeros)
    out = np.full((2, 3, 12, 13), np.nan, np.float32)
    D._dw_scatter(src, wk, g, 12, 13, out)
    np.testing.assert_array_equal(out, _ref_scatter(src, wk, g, 12, 13))
    x = rs.standard_normal((2, 3, 10, 12)).astype(np.float32)
    got = np.zeros((2, 3, 5, 12), np.float32)[..., ::2]
    D._dw_correlate(x, wk, g, 5, 6, got)
    np.testing.assert_array_equal(_bits(got), _bits(_ref_correlate(x, wk, g, 5, 6)))
