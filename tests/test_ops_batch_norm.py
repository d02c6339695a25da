"""caffelite/ops/batch_norm.py and caffelite/ops/relu.py: the cache-blocked CPU variants against the reference
formulas of the same module, bitwise, and the dispatchers' choice of body."""

import numpy as np
import pytest

from caffelite.ops import batch_norm as B
from caffelite.ops import native, native_bn
from caffelite.ops import relu as R
from helpers import bits_equal


def _data(shape, seed, dtype):
    rs = np.random.default_rng(seed)
    x = (rs.standard_normal(shape) * 3 + 2).astype(dtype)
    return x, rs.standard_normal(shape).astype(dtype), rs.standard_normal(shape[1]).astype(dtype), \
        rs.standard_normal(shape[1]).astype(dtype)


@pytest.mark.parametrize("block_bytes", [None, 1, 300, 5000])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 8, 143), (3, 5, 1), (1, 3, 1320), (2, 4, 7)])
def test_blocked_train_passes_bitwise_equal_the_reference(monkeypatch, block_bytes, affine, dtype, shape):
    if block_bytes is not None:  # several blocks, partial last ones, single rows
        monkeypatch.setattr(B, "BLOCK_BYTES", block_bytes)
    x, dy, gamma, beta = _data(shape, sum(shape), dtype)
    g, b = (gamma, beta) if affine else (None, None)
    y0, xhat0, mean0, var0, inv0 = B.train_forward_reference(x, g, b, 1e-4)
    y, xhat = np.empty_like(x), np.empty_like(x)
    mean, var, inv = B.train_forward_blocked(x, y, g, b, 1e-4, xhat)
    for got, want in ((y, y0), (xhat, xhat0), (mean, mean0), (var, var0), (inv, inv0)):
        assert got.dtype == want.dtype and bits_equal(got, want)
    y2 = np.empty_like(x)  # without x̂ kept: the second pass recomputes x − μ
    B.train_forward_blocked(x, y2, g, b, 1e-4)
    assert bits_equal(y2, y0)
    dx0, dg0, db0 = B.train_backward_reference(dy, xhat0, inv0, g)
    dx = np.empty_like(dy)
    dg, db = B.train_backward_blocked(dy, xhat0, inv0, g, dx)
    assert bits_equal(dx, dx0) and bits_equal(dg, dg0) and bits_equal(db, db0)
    inplace = dy.copy()  # dx written over dy (an in-place BatchNorm)
    B.train_backward_blocked(inplace, xhat0, inv0, g, inplace)
    assert bits_equal(inplace, dx0)


def test_reference_is_the_textbook_formula():
    x, dy, gamma, beta = _data((3, 4, 30), 1, np.float64)
    y, xhat, mean, var, inv = B.train_forward_reference(x, gamma, beta, 1e-5)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-12)
    want_xhat = (x - x.mean(axis=(0, 2), keepdims=True)) / np.sqrt(x.var(axis=(0, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, want_xhat * gamma[:, None] + beta[:, None], rtol=1e-12, atol=1e-12)
    dx, dg, db = B.train_backward_reference(dy, xhat, inv, gamma)
    mdy = dy.mean(axis=(0, 2), keepdims=True)
    want = gamma[:, None] * inv[:, None] * (dy - mdy - xhat * (dy * xhat).mean(axis=(0, 2), keepdims=True))
    np.testing.assert_allclose(dx, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dg, (dy * xhat).sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2)), rtol=1e-12)


def _record(monkeypatch, module, names):
    calls = []
    for fn in names:
        orig = getattr(module, fn)
        monkeypatch.setattr(module, fn, lambda *a, _o=orig, _n=fn, **k: (calls.append(_n), _o(*a, **k))[1])
    return calls


@pytest.mark.skipif(not native_bn.available(), reason="needs the compiled kernels")
def test_dispatchers_pick_native_then_blocked(monkeypatch):
    """float32 contiguous NumPy → the compiled kernels; with them switched off, or float64 → the blocked passes."""
    x, dy, gamma, beta = _data((2, 3, 50), 2, np.float32)
    nat = _record(monkeypatch, native_bn, ("bn_train_forward", "bn_train_backward", "relu_forward", "relu_backward"))
    blk = _record(monkeypatch, B, ("train_forward_blocked", "train_backward_blocked"))
    relu = _record(monkeypatch, R, ("relu_into", "relu_grad_into", "relu_reference", "relu_grad_reference"))

    def run(a):
        xhat, y, dx = np.empty_like(a), np.empty_like(a), np.empty_like(a)
        g, b = gamma.astype(a.dtype), beta.astype(a.dtype)
        _, _, inv = B.train_forward(a, y, g, b, 1e-5, xhat)
        B.train_backward(dy.astype(a.dtype), xhat, inv, g, dx)
        R.relu_forward(a, y, 0.0)
        R.relu_backward(a, y, dx, 0.0)
        R.relu_forward(a, y, 0.5)
        R.relu_backward(a, y, dx, 0.5)

    run(x)
    assert nat == ["bn_train_forward", "bn_train_backward"] + ["relu_forward", "relu_backward"] * 2 and not blk
    nat.clear()
    assert not relu
    with native.enabled(False):
        assert not native.is_enabled()
        run(x)
    run(x.astype(np.float64))
    assert not nat
    assert blk == ["train_forward_blocked", "train_backward_blocked"] * 2
    assert relu == ["relu_into", "relu_grad_into", "relu_reference", "relu_grad_reference"] * 2
    assert native.is_enabled()
