"""The optional compiled depthwise-deconvolution / MAX-pooling / ArgMax kernels (caffelite/_native/cglue.c) against
the NumPy paths they replace: bitwise equal (NaN, signed zeros and infinities included) on many geometries (odd
sizes, pads, strides, dilations, CEIL-mode edge windows, tiled windows), on every instruction set the CPU runs and
for several thread counts; the layers reach the kernels, and fall back to NumPy for float64, non-contiguous
arrays and ``native.enabled(False)``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from caffelite.layer import TEST
from caffelite.ops import depthwise as D
from caffelite.ops import native, native_glue
from caffelite.ops import pool as P
from caffelite.ops.im2col import ConvGeometry
from helpers import bits_equal
from native_case import single_layer, using_isa

pytestmark = pytest.mark.skipif(os.environ.get("CAFFELITE_NATIVE", "1") == "0",
                                reason="compiled kernels turned off with CAFFELITE_NATIVE=0")

ISAS = native_glue._LIB.supported if native_glue.available() else []
#: (instruction set, threads) pairs: each ISA on 1 and 3 threads, the widest also on 2 and 5
RUNS = [(name, t) for name in ISAS for t in (1, 3)] + [(name, t) for name in ISAS[-1:] for t in (2, 5)]
SPECIAL = np.array([-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-39, 3e38, -3e38], np.float32)


def test_extension_is_built_and_loaded():
    assert native_glue.available(), native_glue.info()
    assert "generic" in native_glue._LIB.supported


@pytest.fixture
def split_small(monkeypatch):
    """Let the small test arrays be split over threads."""
    monkeypatch.setattr(native_glue, "MIN_PER_THREAD", 1)
    monkeypatch.setattr(native_glue, "ARGMAX_BLOCK", 8)


def _data(shape, rs, special=0.0, zeros=0.0):
    x = rs.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    if zeros:
        flat[rs.random(flat.size) < zeros] = 0.0
        flat[rs.random(flat.size) < zeros / 2] = -0.0
    if special:
        hit = rs.random(flat.size) < special
        flat[hit] = rs.choice(SPECIAL, int(hit.sum()))
    return x


def _same(got, ref) -> bool:
    """Bitwise equal except for the sign and payload of a NaN that arithmetic made from two NaNs or from inf*0
    (which operand's NaN x86 returns depends on the operand order the compiler picks for a commutative
    multiply or add; IEEE 754 leaves it open): NaN in the same places, every other value bitwise."""
    nan = np.isnan(ref)
    return bool((np.isnan(got) == nan).all()) and bits_equal(np.where(nan, 0, got), np.where(nan, 0, ref))


def _both(fn):
    """(compiled result, NumPy result) of ``fn()``, which returns a fresh array each call."""
    nat = fn()
    with native.enabled(False):
        ref = fn()
    return nat, ref


def _spy(monkeypatch, name):
    calls = []
    orig = getattr(native_glue, name)
    monkeypatch.setattr(native_glue, name, lambda *a, **k: (calls.append(name), orig(*a, **k))[1])
    return calls


# ---------------------------------------------------------------- depthwise deconvolution

DW_GEOMS = [ConvGeometry(kh, kw, sh, sw, ph, pw, dh, dw)
            for (kh, sh, ph, dh), (kw, sw, pw, dw) in [
                ((4, 2, 1, 1), (4, 2, 1, 1)),   # jsegnet21v2's bilinear 2x upsampling
                ((16, 8, 4, 1), (16, 8, 4, 1)),  # 8x upsampling
                ((3, 1, 1, 1), (3, 1, 1, 1)), ((3, 2, 0, 1), (5, 3, 2, 1)), ((1, 1, 0, 1), (2, 2, 0, 1)),
                ((3, 2, 2, 2), (3, 1, 3, 2)), ((5, 3, 4, 1), (4, 3, 0, 2)), ((2, 3, 0, 1), (1, 3, 0, 1)),
                # 2 or 3 taps per phase, and column phases with different tap counts
                ((2, 1, 0, 1), (2, 2, 0, 1)), ((3, 1, 1, 1), (1, 1, 0, 1)), ((3, 1, 0, 1), (3, 2, 1, 1)),
                ((1, 1, 0, 1), (6, 2, 2, 1))]]
DW_SIZES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 2, 9, 40), (3, 1, 4, 33)]


def _scatter(src, wk, g, h, w):
    out = np.full(src.shape[:2] + (h, w), np.nan, np.float32)
    D._dw_scatter(src, wk, g, h, w, out)
    return out


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("g", DW_GEOMS, ids=lambda g: f"k{g.kh}x{g.kw}s{g.sh}x{g.sw}p{g.ph}x{g.pw}d{g.dh}x{g.dw}")
@pytest.mark.parametrize("special", [False, True])
def test_dw_deconv_bitwise_equals_numpy(g, special, split_small, monkeypatch):
    calls = _spy(monkeypatch, "dw_deconv")
    rs = np.random.default_rng(g.kh * 131 + g.sw * 17 + g.pw + special)
    for n, c, hs, ws in DW_SIZES:
        wk = _data((c, g.kh, g.kw), rs, special=0.1 * special, zeros=0.2)
        src = _data((n, c, hs, ws), rs, special=0.05 * special, zeros=0.2)
        h, w = g.deconv_out_shape(hs, ws)
        # the full output, and the smaller / larger ones of a convolution's data gradient
        for dh, dw in ((0, 0), (-1, -2), (2, 1)):
            if h + dh <= 0 or w + dw <= 0:
                continue
            with native.enabled(False):
                ref = _scatter(src, wk, g, h + dh, w + dw)
            for name, threads in RUNS:
                with using_isa(native_glue._LIB, name, threads):
                    got = _scatter(src, wk, g, h + dh, w + dw)
                same = _same(got, ref) if special else bits_equal(got, ref)
                assert same, (name, threads, (n, c, hs, ws), (dh, dw))
    assert calls  # the comparisons above saw the kernel


def test_dw_deconv_bias_is_added_after_the_sums():
    rs = np.random.default_rng(5)
    g = ConvGeometry(4, 4, 2, 2, 1, 1)
    src, wk, b = _data((2, 3, 6, 9), rs), _data((3, 4, 4), rs), _data((3,), rs)
    out = np.empty((2, 3, 12, 18), np.float32)
    phases_h = [D._phase_taps(r, 4, 2, 1, 1) for r in range(2)]
    native_glue.dw_deconv(src, wk, phases_h, phases_h, (4, 4), out, bias=b)
    with native.enabled(False):
        ref = _scatter(src, wk, g, 12, 18)
    ref += b.reshape(1, -1, 1, 1)  # what ops/conv.py's NumPy path does
    assert bits_equal(out, ref)


# ---------------------------------------------------------------- MAX pooling

POOLS = [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 3), (2, 2), (0, 0)), ((2, 3), (1, 2), (1, 1)),
         ((1, 1), (1, 1), (0, 0)), ((3, 2), (3, 2), (0, 0)), ((1, 4), (1, 4), (0, 0)), ((4, 1), (4, 1), (0, 0)),
         ((5, 3), (3, 1), (2, 1)), ((2, 2), (3, 3), (1, 0))]
POOL_SIZES = [(1, 1, 1, 1), (2, 3, 8, 12), (1, 2, 7, 9), (2, 1, 12, 66), (1, 3, 13, 37), (1, 1, 24, 96)]


def _pool(x, k, s, p, ceil):
    ho = P.pooled_size(x.shape[2], k[0], s[0], p[0], ceil)
    wo = P.pooled_size(x.shape[3], k[1], s[1], p[1], ceil)
    out = np.full(x.shape[:2] + (ho, wo), np.nan, np.float32)
    P.max_pool_forward(x, k, s, p, ho, wo, out)
    return out


@pytest.mark.parametrize("k,s,p", POOLS, ids=lambda v: "x".join(map(str, v)))
@pytest.mark.parametrize("ceil", [True, False])
def test_max_pool_bitwise_equals_numpy(k, s, p, ceil, split_small, monkeypatch):
    calls = _spy(monkeypatch, "max_pool")
    rs = np.random.default_rng(k[0] * 7 + s[1] * 3 + p[0] + ceil)
    for shape in POOL_SIZES:
        if shape[2] + 2 * p[0] < k[0] or shape[3] + 2 * p[1] < k[1]:
            continue
        # ties and both signs of zero (the order of maximum decides which zero wins), NaN and infinities
        for x in (_data(shape, rs, zeros=0.4), _data(shape, rs, special=0.2), np.round(_data(shape, rs))):
            with native.enabled(False):
                ref = _pool(x, k, s, p, ceil)
            for name, threads in RUNS:
                with using_isa(native_glue._LIB, name, threads):
                    got = _pool(x, k, s, p, ceil)
                assert bits_equal(got, ref), (name, threads, shape)
    assert calls


def test_max_pool_signed_zeros_follow_each_numpy_route():
    """Tiled windows reduce rows first, the general path goes in window order: different zeros, each matched."""
    # first window: the tiled route ends on the top right zero, the general one on the bottom left
    x = np.array([[[[0.0, -0.0, 5, 5], [0.0, -1.0, 5, 5]]]], np.float32)
    tiled, ref_tiled = _both(lambda: _pool(x, (2, 2), (2, 2), (0, 0), True))
    general, ref_general = _both(lambda: _pool(x, (2, 2), (1, 1), (0, 0), True))
    assert bits_equal(tiled, ref_tiled) and bits_equal(general, ref_general)
    assert np.signbit(tiled[0, 0, 0, 0]) and not np.signbit(general[0, 0, 0, 0])  # the check above can tell


# ---------------------------------------------------------------- ArgMax

def _argmax(x, axis):
    layer, b, t = single_layer("ArgMax", f"argmax_param {{ axis: {axis} }}", x.shape, False, phase=TEST)
    b.data[...] = x
    layer.forward([b], [t])
    return t.data.copy()


@pytest.mark.parametrize("shape,axis", [((1, 8, 16, 32), 1), ((3, 5, 7, 9), 1), ((2, 1, 3, 5), 1),
                                        ((4, 3, 300), 1), ((2, 3, 5, 11), 2), ((2, 7, 6), 2), ((9, 4, 3), 0)])
@pytest.mark.parametrize("kind", ["normal", "ties", "nan"])
def test_argmax_bitwise_equals_numpy(shape, axis, kind, split_small, monkeypatch):
    calls = _spy(monkeypatch, "argmax_top1")
    rs = np.random.default_rng(sum(shape) + axis + len(kind))
    x = _data(shape, rs, special=0.1 if kind == "nan" else 0.0)
    if kind == "ties":  # few distinct values, and both signs of zero
        x = np.maximum(np.round(x * 1.5), 0)
        x.reshape(-1)[::3] = -0.0
    with native.enabled(False):
        ref = _argmax(x, axis)
    for name, threads in RUNS:
        with using_isa(native_glue._LIB, name, threads):
            got = _argmax(x, axis)
        assert bits_equal(got, ref), (name, threads)
    assert len(calls) == len(RUNS)


def test_argmax_nan_rule():
    """The largest index holding a NaN wins; without NaN the largest index holding the maximum."""
    x = np.zeros((1, 5, 1, 9), np.float32)
    x[0, 1, 0, 0] = x[0, 3, 0, 0] = np.nan
    x[0, 4, 0, 0] = 7
    x[0, 0, 0, 1] = np.nan
    x[0, 2, 0, 2] = x[0, 3, 0, 2] = 1
    got = _argmax(x, 1)
    assert got[0, 0, 0, :3].tolist() == [3, 0, 3] and (got[0, 0, 0, 3:] == 4).all()


# ---------------------------------------------------------------- dispatch and fallbacks

def test_layers_reach_the_kernels(monkeypatch):
    calls = {n: _spy(monkeypatch, n) for n in ("dw_deconv", "max_pool", "argmax_top1")}
    rs = np.random.default_rng(2)
    deconv, b, t = single_layer("Deconvolution", "convolution_param { num_output: 4 group: 4 kernel_size: 4 "
                                "stride: 2 pad: 1 bias_term: false }", (1, 4, 6, 8), False, phase=TEST)
    deconv.blobs[0].data[...] = _data(deconv.blobs[0].shape, rs)
    b.data[...] = _data(b.shape, rs)
    deconv.forward([b], [t])
    pool, pb, pt = single_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", (1, 4, 6, 8),
                                False, phase=TEST)
    pool.forward([pb], [pt])
    _argmax(_data((1, 4, 6, 8), rs), 1)
    assert {n: len(c) for n, c in calls.items()} == {"dw_deconv": 1, "max_pool": 1, "argmax_top1": 1}


def test_train_pooling_with_argmax_stays_on_numpy(monkeypatch):
    calls = _spy(monkeypatch, "max_pool")
    pool, pb, pt = single_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", (1, 2, 4, 4),
                                False)
    pool.forward([pb], [pt])
    assert calls == []


def test_fallbacks_float64_noncontiguous_and_disabled(monkeypatch):
    for n in ("dw_deconv", "max_pool", "argmax_top1"):
        monkeypatch.setattr(native_glue, n, lambda *a, **k: pytest.fail("compiled kernel called"))
    rs = np.random.default_rng(4)
    g = ConvGeometry(4, 4, 2, 2, 1, 1)
    x64 = rs.standard_normal((1, 2, 5, 6))
    D._dw_scatter(x64, rs.standard_normal((2, 4, 4)), g, 10, 12, np.empty((1, 2, 10, 12)))
    P.max_pool_forward(x64, (2, 2), (2, 2), (0, 0), 3, 3, np.empty((1, 2, 3, 3)))
    x = _data((1, 2, 6, 12), rs)
    P.max_pool_forward(x[..., ::2], (2, 2), (2, 2), (0, 0), 3, 3, np.empty((1, 2, 3, 3), np.float32))
    out = np.zeros((1, 2, 10, 24), np.float32)[..., ::2]
    D._dw_scatter(x[:, :, :5, :6], _data((2, 4, 4), rs), g, 10, 12, out)
    with native.enabled(False):
        _scatter(x, _data((2, 4, 4), rs), g, 12, 24)
        _pool(x, (2, 2), (2, 2), (0, 0), True)
        _argmax(x, 1)


def test_usable_reads_the_switch_and_the_arrays():
    a = np.zeros((2, 3), np.float32)
    assert native_glue.usable(a)
    with native.enabled(False):
        assert not native_glue.usable(a)
    assert not native_glue.usable(a.astype(np.float64)) and not native_glue.usable(np.zeros((2, 6), np.float32)[:, ::2])


def test_thread_split_covers_every_task_once(split_small):
    """Odd task counts over many threads: every output written (no NaN fill left) and the same as on one thread."""
    rs = np.random.default_rng(9)
    x, wk = _data((3, 5, 11, 13), rs), _data((5, 3, 3), rs)
    g = ConvGeometry(3, 3, 2, 2, 1, 1)
    runs = []
    for threads in (1, 4, 7):
        with using_isa(native_glue._LIB, ISAS[-1], threads):
            runs.append([_pool(x, (3, 3), (2, 2), (1, 1), True), _scatter(x, wk, g, 21, 25), _argmax(x, 1)])
    for res in runs:
        assert not any(np.isnan(r).any() for r in res)
        assert all(bits_equal(a, b) for a, b in zip(res, runs[0], strict=True))
