"""The optional compiled BatchNorm / ReLU kernels (caffelite/_native/cbn.c) against the NumPy reference path.

BatchNorm: the native TRAIN step (outputs, x̂, running statistics, bottom and parameter diffs) must agree with
the NumPy path within float32 rounding (the sums are taken in another order, in float64), for BVLC and
caffe-jacinto semantics, with and without scale/bias, in place or not, N > 1, sizes that leave vector tails,
both forward modes (one shifted pass / two passes), on every instruction set the CPU runs; with large means
it must match float64 formulas at least as well as float32 allows. ReLU: bitwise NumPy's results, special
values included. Results must not depend on the thread count. The layers fall back to NumPy for float64,
non-contiguous arrays and ``native.enabled(False)``.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from caffelite.ops import native, native_bn
from helpers import assert_max_error, bits_equal
from native_case import (check_bn_without_backward_keeps_nothing, forward_backward, set_scale_bias, single_layer,
                         using_isa)

pytestmark = pytest.mark.skipif(os.environ.get("CAFFELITE_NATIVE", "1") == "0",
                                reason="compiled kernels turned off with CAFFELITE_NATIVE=0")


def test_extension_is_built_and_loaded():
    assert native_bn.available(), native_bn.info()
    assert "generic" in native_bn._LIB.supported


ISAS = native_bn._LIB.supported if native_bn.available() else []


def isa(name, threads=None):
    return using_isa(native_bn._LIB, name, threads)


@pytest.fixture
def split_small(monkeypatch):
    """Let the small test arrays be split over threads."""
    monkeypatch.setattr(native_bn, "BN_MIN_PER_THREAD", 1)
    monkeypatch.setattr(native_bn, "RELU_MIN_PER_THREAD", 1)


JSEG = "batch_norm_param { moving_average_fraction: 0.99 eps: 0.0001 scale_bias: true }"  # jsegnet21v2
CAFFE = "batch_norm_param { scale_bias: true moving_average_fraction: 0.9 engine: CAFFE }"
JACINTO_PLAIN = "batch_norm_param { engine: CUDNN moving_average_fraction: 0.9 }"  # jacinto, no scale_bias
BVLC = "batch_norm_param { eps: 0.5 }"
SHAPES = [(2, 5, 7, 9), (3, 4, 1, 1), (1, 3, 33, 17), (2, 6), (2, 3, 37), (2, 4, 16, 16)]


def _bn(extra, shape, in_place, dtype=np.float32):
    layer, b, t = single_layer("BatchNorm", extra, shape, in_place, dtype)
    layer.needs_backward = True
    set_scale_bias(layer)
    return layer, b, t


def _bn_step(layer, b, t, x, dy, propagate=True):
    y, dx = forward_backward(layer, b, t, x, dy, propagate)
    return y, None if layer.xhat is None else layer.xhat.copy(), dx


#: within 1e-5 of the magnitude of ``want`` (float32 rounding of differently ordered sums), or of ``magnitude=``:
#: that of the terms where the result cancels (dx with m = 2 values per channel is all noise)
_close = functools.partial(assert_max_error, rel=1e-5)


def _run_bn(extra, shape, in_place, iters=3, seed=0, mean=2.0, propagate=True):
    """(native results, NumPy results), each a list per iteration of (y, x̂, dx, blobs data, blobs diff)."""
    out = []
    for use_native in (True, False):
        rs = np.random.default_rng(seed)
        layer, b, t = _bn(extra, shape, in_place)
        runs = []
        with native.enabled(use_native):
            for it in range(iters):
                x = (rs.standard_normal(shape) * 3 + mean + it).astype(np.float32)
                dy = rs.standard_normal(shape).astype(np.float32)
                y, xhat, dx = _bn_step(layer, b, t, x, dy, propagate)
                gamma = layer.blobs[3].data if layer.scale_bias else 1.0
                dx_terms = 3 * float(np.max(np.abs(dy)) * np.max(np.abs(layer.inv_std.reshape(-1) * gamma)))
                runs.append((y, xhat, dx, [bl.data.copy() for bl in layer.blobs],
                             [bl.diff.copy() for bl in layer.blobs], dx_terms))
        out.append(runs)
    return out


@pytest.mark.parametrize("one_pass", [True, False])
@pytest.mark.parametrize("extra", [JSEG, CAFFE, JACINTO_PLAIN, BVLC])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ISAS)
def test_batch_norm_train_matches_numpy(monkeypatch, split_small, name, shape, in_place, extra, one_pass):
    monkeypatch.setattr(native_bn, "ONE_PASS", one_pass)
    with isa(name):
        nat, ref = _run_bn(extra, shape, in_place, seed=sum(shape))
    for (y, xh, dx, data, diff, _), (y0, xh0, dx0, data0, diff0, mag) in zip(nat, ref, strict=True):
        _close(y, y0)
        _close(xh, xh0)
        _close(dx, dx0, magnitude=mag)
        for a, b in zip(data, data0, strict=True):  # running statistics (and γ, β: untouched)
            _close(a, b)
        for a, b in zip(diff[3:], diff0[3:], strict=True):  # dγ, dβ (accumulated or overwritten by engine)
            _close(a, b)


def test_batch_norm_calls_the_kernel(monkeypatch):
    calls = []
    for fn in ("bn_train_forward", "bn_train_backward"):
        orig = getattr(native_bn, fn)
        monkeypatch.setattr(native_bn, fn, lambda *a, _o=orig, _n=fn, **k: (calls.append(_n), _o(*a, **k))[1])
    _run_bn(JSEG, (2, 3, 4, 5), False, iters=1)
    assert calls == ["bn_train_forward", "bn_train_backward"]


@pytest.mark.parametrize("one_pass", [True, False])
@pytest.mark.parametrize("mean, sigma", [(1e3, 1.0), (1e4, 0.1), (3e4, 1.0), (5.0, 1e-3)])
def test_batch_norm_statistics_are_float64_accurate(monkeypatch, one_pass, mean, sigma):
    """Large means: the native statistics round only once, to float32 (as accurate as the float32 two-pass
    NumPy form or better), also when the shift of the one-pass form (the first value) is far from the mean."""
    monkeypatch.setattr(native_bn, "ONE_PASS", one_pass)
    rs = np.random.default_rng(11)
    shape = (2, 4, 40, 40)
    x = (rs.standard_normal(shape) * sigma + mean).astype(np.float32)
    x[0, :, 0, 0] = np.float32(mean + 1000 * sigma)
    layer, b, t = _bn("batch_norm_param { engine: CAFFE }", shape, False)  # jacinto CAFFE: biased var copied
    b.data[...] = x
    layer.forward([b], [t])
    x64 = x.astype(np.float64)
    ex_mean, ex_var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    got_mean, got_var = layer.blobs[0].data.astype(np.float64), layer.blobs[1].data.astype(np.float64)
    assert np.all(np.abs(got_mean - ex_mean) <= 2 ** -24 * np.abs(ex_mean))
    assert np.all(np.abs(got_var - ex_var) <= 2e-7 * ex_var)
    xhat64 = (x64 - ex_mean.reshape(1, -1, 1, 1)) / np.sqrt(ex_var.reshape(1, -1, 1, 1) + layer.eps)
    # x − μ is taken in float32 (as NumPy's path): the error is float32's on x, relative to σ
    tol = 2 ** -23 * (abs(mean) + 1000 * sigma) / sigma + 1e-5
    assert np.max(np.abs(layer.xhat.reshape(shape) - xhat64)) <= tol


@pytest.mark.parametrize("extra", [JSEG, BVLC])
def test_batch_norm_thread_count_does_not_change_results(split_small, extra):
    results = []
    for threads in (1, 2, 3):
        with isa(native_bn._LIB.isa, threads):
            results.append(_run_bn(extra, (2, 7, 9, 11), False)[0])
    for other in results[1:]:
        for r0, r1 in zip(results[0], other, strict=True):
            y, xh, dx, data, diff, _ = r0
            y1, xh1, dx1, data1, diff1, _ = r1
            assert bits_equal(y, y1) and bits_equal(xh, xh1) and bits_equal(dx, dx1)
            assert all(bits_equal(a, b) for a, b in zip(data + diff, data1 + diff1, strict=True))


def test_batch_norm_param_diffs_only_without_propagate_down():
    nat, ref = _run_bn(JSEG, (2, 3, 5, 6), True, iters=2, propagate=False)
    for (_y, _xh, dx, _d, diff, _m), (_y0, _xh0, dx0, _d0, diff0, _m0) in zip(nat, ref, strict=True):
        assert bits_equal(dx, dx0)  # in place: the bottom diff is the top diff, left as it was
        for a, b in zip(diff[3:], diff0[3:], strict=True):
            _close(a, b)


def test_batch_norm_without_backward_keeps_nothing():
    x = (np.random.default_rng(5).standard_normal((2, 6, 9, 7)) * 2 + 3).astype(np.float32)
    check_bn_without_backward_keeps_nothing(lambda: _bn(JSEG, x.shape, True), x)


def _no_kernel(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the native kernel must not run here")
    for fn in ("bn_train_forward", "bn_train_backward", "relu_forward", "relu_backward"):
        monkeypatch.setattr(native_bn, fn, boom)


def test_fallbacks_float64_noncontiguous_and_disabled(monkeypatch):
    _no_kernel(monkeypatch)
    rs = np.random.default_rng(3)
    shape = (2, 3, 4, 5)
    x = rs.standard_normal(shape)
    dy = rs.standard_normal(shape)
    layer, b, t = _bn(JSEG, shape, False, np.float64)  # float64
    _bn_step(layer, b, t, x, dy)
    layer, b, t = _bn(JSEG, shape, False)  # a non-contiguous top and bottom diff
    t.set_data_array(np.zeros(shape[:-1] + (2 * shape[-1],), np.float32)[..., ::2])
    b.set_diff_array(np.zeros(shape[:-1] + (2 * shape[-1],), np.float32)[..., ::2])
    _bn_step(layer, b, t, x.astype(np.float32), dy.astype(np.float32))
    with native.enabled(False):
        layer, b, t = _bn(JSEG, shape, True)
        _bn_step(layer, b, t, x.astype(np.float32), dy.astype(np.float32))
        r, rb, rt = _relu("", shape, True, np.float32)
        rb.data[...] = x
        r.forward([rb], [rt])
        r.backward([rt], [True], [rb])
    r, rb, rt = _relu("", shape, True, np.float64)
    rb.data[...] = x
    r.forward([rb], [rt])
    r.backward([rt], [True], [rb])


def test_native_off_when_disabled_reads_switch():
    a = np.zeros((2, 3), np.float32)
    assert native_bn.usable(a, None)
    with native.enabled(False):
        assert not native_bn.usable(a)
    assert not native_bn.usable(a.astype(np.float64)) and not native_bn.usable(np.zeros((2, 6), np.float32)[:, ::2])


# ---------------------------------------------------------------- ReLU

SPECIAL = np.array([-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45, 1e-39, -1e-39, 1.0, -1.0, 3e38,
                    -3e38])


def _relu(extra, shape, in_place, dtype=np.float32):
    layer, b, t = single_layer("ReLU", extra, shape, in_place, dtype)
    layer.needs_backward = True
    return layer, b, t


def _relu_data(shape, seed):
    rs = np.random.default_rng(seed)
    x = rs.standard_normal(shape).astype(np.float32)
    dy = rs.standard_normal(shape).astype(np.float32)
    for a in (x, dy):
        flat = a.reshape(-1)
        flat[::7] = rs.choice(SPECIAL, flat[::7].size).astype(np.float32)
    return x, dy


def _relu_step(layer, b, t, x, dy):
    return forward_backward(layer, b, t, x, dy)


# special values: NumPy warns of inf·slope and 0·inf in the layer and in the reference expressions
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("slope", [0.0, 0.1, -0.5, 2.5])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1,), (2, 130), (3, 67)])
@pytest.mark.parametrize("name", ISAS)
def test_relu_bitwise_equals_numpy(split_small, name, shape, in_place, slope):
    extra = f"relu_param {{ negative_slope: {slope} }}" if slope else ""
    x, dy = _relu_data(shape, seed=len(shape) + int(abs(slope) * 10))
    got = []
    for use_native in (True, False):
        layer, b, t = _relu(extra, shape, in_place)
        with isa(name), native.enabled(use_native):
            got.append([_relu_step(layer, b, t, x, dy) for _ in range(2)])
    for (y, dx), (y0, dx0) in zip(*got, strict=True):
        assert bits_equal(y, y0) and bits_equal(dx, dx0)
    s = np.float32(slope)
    y, dx = got[0][0]
    assert bits_equal(y, np.maximum(x, 0) if slope == 0 else np.where(x > 0, x, x * s))
    assert bits_equal(dx, dy * (x > 0) if slope == 0 else np.where(x > 0, dy, dy * s))


def test_relu_calls_the_kernel_and_is_thread_independent(monkeypatch, split_small):
    calls = []
    for fn in ("relu_forward", "relu_backward"):
        orig = getattr(native_bn, fn)
        monkeypatch.setattr(native_bn, fn, lambda *a, _o=orig, _n=fn, **k: (calls.append(_n), _o(*a, **k))[1])
    x, dy = _relu_data((2, 5, 31), 4)
    outs = []
    for threads in (1, 2, 3):
        layer, b, t = _relu("relu_param { negative_slope: -0.25 }", x.shape, True)
        with isa(native_bn._LIB.isa, threads), np.errstate(invalid="ignore"):
            outs.append(_relu_step(layer, b, t, x, dy))
    assert calls == ["relu_forward", "relu_backward"] * 3
    assert all(bits_equal(a, b) for o in outs[1:] for a, b in zip(o, outs[0], strict=True))


def test_relu_empty_and_in_place_negative_slope_keeps_input():
    e = np.zeros((0, 3), np.float32)
    native_bn.relu_forward(e, e, 0.0)
    native_bn.relu_backward(e, e, e, 0.5)
    # in place with a negative slope: the output's sign differs, backward must use the saved input
    layer, b, t = _relu("relu_param { negative_slope: -2 }", (4,), True)
    x = np.array([-1.0, 2.0, -3.0, 0.5], np.float32)
    y, dx = _relu_step(layer, b, t, x, np.ones(4, np.float32))
    assert y.tolist() == [2.0, 2.0, 6.0, 0.5] and dx.tolist() == [-2.0, 1.0, -2.0, 1.0]


@pytest.mark.parametrize("name", ISAS)
def test_batch_norm_keeps_the_sign_of_zero_parameters(name):
    """γ = β = -0.0 on a channel: y there is ±0 with the NumPy path's signs (a scalar splatted as {0} + s would
    have lost the sign of -0.0)."""
    shape = (2, 3, 5, 33)
    x = (np.random.default_rng(3).standard_normal(shape) * 2 + 1).astype(np.float32)
    ys = []
    for use_native in (True, False):
        layer, b, t = _bn(JSEG, shape, False)
        layer.blobs[3].data[1] = -0.0
        layer.blobs[4].data[1] = -0.0
        with isa(name), native.enabled(use_native):
            b.data[...] = x
            layer.forward([b], [t])
        ys.append(t.data[:, 1].copy())
    assert np.all(ys[0] == 0) and np.array_equal(np.signbit(ys[0]), np.signbit(ys[1]))
    assert np.signbit(ys[1]).any() and not np.signbit(ys[1]).all()
