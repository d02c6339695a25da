"""MAX pooling's tiled fast paths (k == s, no padding; 2x2 argmax and backward) against a plain reference:
ties, NaN, signed zeros, N > 1, odd sizes (which take the general path) and other tile shapes."""

import numpy as np
import pytest

from caffelite.ops import native
from caffelite.ops import pool as P


@pytest.fixture(autouse=True, params=["native", "numpy"])
def _kernels(request):
    """Every test runs with the compiled kernels (when built) and on the NumPy path alone."""
    with native.enabled(request.param == "native"):
        yield request.param


def _reference(x, k, s, ho, wo):
    """Window values stacked in row-major window order; max propagates NaN; the argmax is the first offset
    equal to the max, or the last offset when none is (a NaN window); backward adds dy at the argmax."""
    n, c, h, w = x.shape
    vals = np.full((n, c, ho, wo, k[0] * k[1]), -np.inf, x.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            rows = np.arange(ho) * s[0] + i
            cols = np.arange(wo) * s[1] + j
            ok_r, ok_c = rows < h, cols < w
            sub = np.full((n, c, ho, wo), -np.inf, x.dtype)
            sub[:, :, ok_r[:, None] & ok_c[None, :]] = x[:, :, rows[ok_r]][:, :, :, cols[ok_c]].reshape(n, c, -1)
            vals[..., i * k[1] + j] = sub
    out = np.maximum.reduce(vals, axis=-1)
    hits = vals == out[..., None]
    arg = np.where(hits.any(axis=-1), hits.argmax(axis=-1), k[0] * k[1] - 1)
    return out, arg


def _ref_backward(dy, arg, k, s, h, w):
    n, c, ho, wo = dy.shape
    dx = np.zeros((n, c, h, w), dy.dtype)
    ys = np.arange(ho)[:, None] * s[0] + arg // k[1]
    xs = np.arange(wo)[None, :] * s[1] + arg % k[1]
    for a in range(n):
        for b in range(c):
            ok = (ys[a, b] < h) & (xs[a, b] < w)  # a NaN window's default offset may fall off the image
            np.add.at(dx[a, b], (ys[a, b][ok], xs[a, b][ok]), dy[a, b][ok])
    return dx


def _data(shape, kind, seed):
    rs = np.random.default_rng(seed)
    x = rs.standard_normal(shape).astype(np.float32)
    if kind == "ties":  # after a ReLU: many equal maxima, both signs of zero
        x = np.maximum(np.round(x * 1.5), 0).astype(np.float32)
        x[(x == 0) & (rs.random(shape) < 0.5)] = -0.0
    elif kind == "const":
        x = np.zeros(shape, np.float32)
    elif kind == "nan":
        x[rs.random(shape) < 0.05] = np.nan
    return x


SHAPES = [((2, 3, 8, 12), (2, 2), (2, 2)), ((1, 5, 2, 2), (2, 2), (2, 2)), ((3, 2, 6, 10), (2, 2), (2, 2)),
          ((2, 3, 9, 12), (3, 3), (3, 3)), ((1, 2, 4, 9), (2, 3), (2, 3)), ((2, 2, 7, 9), (2, 2), (2, 2)),
          ((1, 3, 6, 8), (1, 1), (1, 1)), ((2, 2, 2, 8), (2, 2), (1, 2)), ((1, 4, 64, 600), (2, 2), (2, 2))]


@pytest.fixture(params=["cached", "streaming"])
def streaming(request, monkeypatch):
    """Both sides of the size gate: small test inputs take the blocked 2x2 argmax/backward when it is 0."""
    if request.param == "streaming":
        monkeypatch.setattr(P, "_STREAM_BYTES", 0)
    return request.param


@pytest.mark.parametrize("shape,k,s", SHAPES)
@pytest.mark.parametrize("kind", ["random", "ties", "const", "nan"])
def test_max_pool_matches_reference(shape, k, s, kind, streaming):
    x = _data(shape, kind, sum(shape))
    n, c, h, w = shape
    ho, wo = P.pooled_size(h, k[0], s[0], 0), P.pooled_size(w, k[1], s[1], 0)
    want, want_arg = _reference(x, k, s, ho, wo)
    out = np.full((n, c, ho, wo), 7.0, np.float32)
    P.max_pool_forward(x, k, s, (0, 0), ho, wo, out)
    np.testing.assert_array_equal(out, want)
    arg = np.full((n, c, ho, wo), 99, P.argmax_dtype(k))
    out[...] = 7.0
    P.max_pool_forward(x, k, s, (0, 0), ho, wo, out, arg)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(arg, want_arg)
    dy = np.random.default_rng(1).standard_normal((n, c, ho, wo)).astype(np.float32)
    dx = np.full(shape, 5.0, np.float32)
    P.max_pool_backward(dy, arg, k, s, (0, 0), h, w, dx)
    np.testing.assert_array_equal(dx, _ref_backward(dy, want_arg, k, s, h, w))


def test_argmax_first_in_window_order(streaming):
    # windows (one per channel) with the maximum at several offsets: the first one in 0 1 / 2 3 order wins
    wins = [[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 1, 0],
            [np.nan, 1, 1, 1], [1, 1, 1, np.nan], [-0.0, 0.0, -1, -1]]
    x = np.array(wins, np.float32).reshape(1, len(wins), 2, 2)
    # a 2x2 image is global pooling; tile it so that the tiled path runs: 2 x 3 windows, all alike
    xt = np.tile(x, (2, 1, 2, 3))
    out = np.empty((2, len(wins), 2, 3), np.float32)
    arg = np.empty((2, len(wins), 2, 3), np.uint8)
    P.max_pool_forward(xt, (2, 2), (2, 2), (0, 0), 2, 3, out, arg)
    assert (arg == np.array([0, 1, 2, 3, 0, 1, 2, 3, 3, 0]).reshape(1, -1, 1, 1)).all()
    assert np.isnan(out[:, 7]).all() and np.isnan(out[:, 8]).all() and (out[:, 9] == 0).all()


def test_float64_and_int32_argmax_use_the_general_path():
    x = _data((2, 3, 6, 8), "ties", 3).astype(np.float64)
    want, want_arg = _reference(x, (2, 2), (2, 2), 3, 4)
    out = np.empty((2, 3, 3, 4), np.float64)
    arg = np.empty((2, 3, 3, 4), np.int32)
    P.max_pool_forward(x, (2, 2), (2, 2), (0, 0), 3, 4, out, arg)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(arg, want_arg)
    dy = np.ones((2, 3, 3, 4))
    dx = np.empty(x.shape)
    P.max_pool_backward(dy, arg, (2, 2), (2, 2), (0, 0), 6, 8, dx)
    np.testing.assert_array_equal(dx, _ref_backward(dy, want_arg, (2, 2), (2, 2), 6, 8))


def test_non_contiguous_input_and_output(streaming):
    x = _data((2, 6, 8, 10), "ties", 4)[:, ::2]
    want, want_arg = _reference(x, (2, 2), (2, 2), 4, 5)
    out = np.empty((2, 3, 4, 10), np.float32)[..., ::2]
    arg = np.empty((2, 3, 4, 5), np.uint8)
    P.max_pool_forward(x, (2, 2), (2, 2), (0, 0), 4, 5, out, arg)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(arg, want_arg)
    dx = np.empty((2, 3, 8, 20), np.float32)[..., ::2]
    dy = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    P.max_pool_backward(dy, arg, (2, 2), (2, 2), (0, 0), 8, 10, dx)
    np.testing.assert_array_equal(dx, _ref_backward(dy, want_arg, (2, 2), (2, 2), 8, 10))


def test_tiled_paths_are_taken(monkeypatch):
    monkeypatch.setattr(native, "is_enabled", lambda: False)  # the NumPy routes are what this checks
    monkeypatch.setattr(P, "_STREAM_BYTES", 0)
    used = []
    for name in ("_tiled_max", "_tiled_max_argmax_2x2", "_tiled_backward_2x2"):
        fn = getattr(P, name)
        monkeypatch.setattr(P, name, lambda *a, _fn=fn, _name=name: used.append(_name) or _fn(*a))
    x = _data((2, 3, 8, 12), "ties", 5)
    out = np.empty((2, 3, 4, 6), np.float32)
    arg = np.empty((2, 3, 4, 6), np.uint8)
    P.max_pool_forward(x, (2, 2), (2, 2), (0, 0), 4, 6, out)
    P.max_pool_forward(x, (2, 2), (2, 2), (0, 0), 4, 6, out, arg)
    P.max_pool_backward(out, arg, (2, 2), (2, 2), (0, 0), 8, 12, np.empty_like(x))
    assert used == ["_tiled_max", "_tiled_max_argmax_2x2", "_tiled_backward_2x2"]
