"""The optional compiled convolution kernels (caffelite/_native) against the NumPy reference path.

Every instruction set the CPU supports is checked (portable, AVX2, AVX-512), over strides, pads, dilations,
groups, channel counts that do not fill a tile, row widths that leave vector and scalar tails, and batches.
The suite installs with the extension built (``pip install -e .`` compiles it), so a missing build fails
here instead of silently testing nothing; ``CAFFELITE_NATIVE=0`` is the one documented way to turn it off.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from caffelite.ops import conv as K
from caffelite.ops import native
from caffelite.ops.im2col import ConvGeometry
from helpers import assert_close
from native_case import using_isa

pytestmark = pytest.mark.skipif(os.environ.get("CAFFELITE_NATIVE", "1") == "0",
                                reason="compiled kernels turned off with CAFFELITE_NATIVE=0")


def test_extension_is_built_and_loaded():
    assert native.available(), native.info()
    assert "generic" in native._LIB.supported


def test_a_build_that_fails_to_load_warns_and_falls_back_to_numpy():
    """By design the one warning caffelite itself raises: a stale or broken build must not break the import."""
    def broken(path):
        raise OSError(f"cannot load {os.path.basename(path)}")

    with pytest.warns(RuntimeWarning, match="compiled kernels not used: cannot load _cconv"):
        assert native.load_library("caffelite._native._cconv", broken) is None


ISAS = native._LIB.supported if native.available() else []


def isa(name, threads=None):
    return using_isa(native._LIB, name, threads)


# (N, Cin, H, W, Cout, group, k, stride, pad, dilation)
CASES = [
    (1, 3, 37, 70, 32, 1, 5, 2, 2, 1),      # conv1a-like: stride 2, 5x5, odd sizes
    (2, 8, 19, 53, 8, 4, 3, 1, 1, 1),       # 2 channels per group, N=2, tails
    (1, 32, 16, 96, 32, 4, 3, 1, 1, 1),     # jsegnet conv1b shape family
    (1, 16, 9, 40, 24, 2, 3, 1, 2, 2),      # dilation 2, Mg=12 (a partial tile of channels)
    (1, 12, 11, 17, 5, 1, 3, 3, 0, 1),      # stride 3, Cout=5
    (1, 6, 14, 33, 10, 2, 3, 2, 1, 2),      # stride 2 with dilation 2
    (1, 4, 10, 12, 7, 1, (2, 4), 1, (0, 1), 1),  # rectangular kernel and pad
    (3, 10, 8, 64, 16, 1, 1, 2, 0, 1),      # 1x1 stride 2 (not pointwise: goes to the kernel)
    (1, 64, 8, 16, 64, 1, 3, 1, 4, 4),      # ctx-like dilation 4
    (2, 16, 6, 40, 16, 1, 3, 1, 1, 1),      # width 40 (a 640 crop at 1/16): an overlapping last vector
    (1, 8, 5, 7, 8, 1, 3, 1, 1, 1),         # rows narrower than an AVX2 vector: the portable build
]


def _geom(k, s, p, d):
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (p, p) if isinstance(p, int) else p
    return ConvGeometry(kh, kw, s, s, ph, pw, d, d)


def _case(c, seed=0):
    n, cin, h, w, cout, group, k, s, p, d = c
    g = _geom(k, s, p, d)
    rs = np.random.default_rng(seed)
    x = rs.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = rs.standard_normal((cout, cin // group, g.kh, g.kw)).astype(np.float32)
    b = rs.standard_normal(cout).astype(np.float32)
    ho, wo = g.out_shape(h, w)
    dy = rs.standard_normal((n, cout, ho, wo)).astype(np.float32)
    return g, group, x, wt, b, dy


def _forward(g, group, x, wt, b, use_native):
    out = np.empty((x.shape[0], wt.shape[0]) + g.out_shape(*x.shape[2:]), np.float32)
    with native.enabled(use_native):
        K.conv_forward(x, wt, b, g, group, out)
    return out


#: float32 sums in another order: 2e-5 of the largest magnitude of the result (at least 1)
_close = functools.partial(assert_close, rtol=0, rel_atol=2e-5, floor=1.0)


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_forward_matches_numpy(name, case):
    g, group, x, wt, b, _ = _case(case)
    ref = _forward(g, group, x, wt, b, False)
    with isa(name):
        got = _forward(g, group, x, wt, b, True)
        got_nobias = _forward(g, group, x, wt, None, True)
    _close(got, ref)
    _close(got_nobias, ref - b.reshape(1, -1, 1, 1))


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_backward_matches_numpy(name, case):
    """dx (stride 1: the correlation kernel) and dw (kw 3: the weight-gradient kernel), accumulation kept."""
    g, group, x, wt, b, dy = _case(case, seed=1)
    grads = {}
    for use in (False, True):
        dx = np.full_like(x, np.nan)
        dw = np.full_like(wt, 0.5)  # the gradient is accumulated into what is there
        db = np.zeros_like(b)
        with isa(name), native.enabled(use):
            K.conv_backward(x, wt, dy, g, group, dx=dx, dw=dw, db=db)
        grads[use] = dx, dw, db
    for ref, got in zip(grads[False], grads[True], strict=True):
        _close(got, ref)


def test_weight_gradient_kernel_direct():
    """The kernel itself (not only through conv_backward's choice), on a group wider than its threshold."""
    g, group, x, wt, b, dy = _case((2, 6, 7, 41, 40, 1, 3, 2, 1, 1), seed=2)
    ref = np.zeros_like(wt)
    with native.enabled(False):
        K.conv_backward(x, wt, dy, g, group, dw=ref)
    for name in ISAS:
        with isa(name):
            got = np.zeros_like(wt)
            native.conv_weight_grad(x, dy, g, group, got)
        _close(got, ref)


def test_results_do_not_depend_on_thread_count():
    g, group, x, wt, b, dy = _case(CASES[2], seed=3)
    outs = []
    for threads in (1, 2, 3):
        with isa(native._LIB.isa, threads=threads):
            assert native._LIB.threads == threads
            outs.append(_forward(g, group, x, wt, b, True))
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


def test_non_float32_and_noncontiguous_take_numpy_path():
    g, group, x, wt, b, _ = _case(CASES[1])
    x64, w64, b64 = x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64)
    assert not native.usable(x64, w64)
    out64 = np.empty((x.shape[0], wt.shape[0]) + g.out_shape(*x.shape[2:]))
    K.conv_forward(x64, w64, b64, g, group, out64)
    ref = _forward(g, group, x, wt, b, False)
    _close(out64.astype(np.float32), ref)
    # a strided (non-contiguous) output goes to the NumPy path and still gets the right values
    big = np.zeros((x.shape[0], wt.shape[0] * 2) + ref.shape[2:], np.float32)
    K.conv_forward(x, wt, b, g, group, big[:, ::2])
    _close(big[:, ::2], ref)


def test_info_names_the_instruction_set():
    assert native._LIB.isa in native.info()


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("slope", [None, 0.0, 0.1])
def test_forward_epilogue_scale_shift_relu(name, slope):
    """The folded inference epilogue: (conv + bias) * scale + shift, then a (leaky) ReLU, per channel."""
    for case in (CASES[1], CASES[9], CASES[10]):
        g, group, x, wt, b, _ = _case(case, seed=4)
        cout = wt.shape[0]
        rs = np.random.default_rng(5)
        scale = rs.uniform(0.5, 2.0, cout).astype(np.float32)
        shift = rs.standard_normal(cout).astype(np.float32)
        ref = _forward(g, group, x, wt, b, False) * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
        if slope is not None:
            ref = np.where(ref < 0, ref * np.float32(slope), ref)
        got = np.empty_like(ref)
        with isa(name):
            native.conv_forward(x, wt, b, g, group, got, scale=scale, shift=shift, relu_slope=slope)
        _close(got, ref)
        if slope is not None:
            relu_only = np.empty_like(ref)
            with isa(name):
                native.conv_forward(x, wt, b, g, group, relu_only, relu_slope=slope)
            plain = _forward(g, group, x, wt, b, False)
            _close(relu_only, np.where(plain < 0, plain * np.float32(slope), plain))
    with pytest.raises(ValueError):
        native.conv_forward(x, wt, b, g, group, got, scale=scale)


def test_forward_in_several_channel_passes(monkeypatch):
    """Partial sums kept in the output between passes over the input channels (wide layers), with the
    overlapping last vector of each row and a fused epilogue: same result as one pass."""
    for case in (CASES[3], CASES[9], CASES[8]):
        g, group, x, wt, b, _ = _case(case, seed=6)
        ref = _forward(g, group, x, wt, b, False)
        cout = wt.shape[0]
        scale, shift = np.full(cout, 1.5, np.float32), np.full(cout, -0.25, np.float32)
        for name in ISAS:
            for kc in (1, 3):
                monkeypatch.setattr(native, "PASS_CHANNELS", kc)
                with isa(name):
                    got = _forward(g, group, x, wt, b, True)
                    fused = np.empty_like(ref)
                    native.conv_forward(x, wt, b, g, group, fused, scale=scale, shift=shift, relu_slope=0.0)
                _close(got, ref)
                _close(fused, np.maximum(ref * 1.5 - 0.25, 0))


def test_bad_isa_request_warns_and_falls_back_to_numpy():
    """A bad CAFFELITE_NATIVE_ISA must not break `import caffelite`: one warning, then the NumPy path."""
    import subprocess
    import sys
    env = dict(os.environ, CAFFELITE_NATIVE_ISA="bogus")
    r = subprocess.run([sys.executable, "-c", "import caffelite.ops.native as n; print(n.available())"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False"
    assert "CAFFELITE_NATIVE_ISA=bogus" in r.stderr and "RuntimeWarning" in r.stderr


def _conv_in_child(q):
    g, group, x, wt, b, _ = _case(CASES[2], seed=8)
    q.put(float(_forward(g, group, x, wt, b, True).sum()))


def test_kernels_work_in_a_forked_child():
    """A forked process (multiprocessing's default on Linux) gets a thread pool of its own; the inherited one
    has no threads and would make the first call wait forever."""
    import multiprocessing as mp
    g, group, x, wt, b, _ = _case(CASES[2], seed=8)
    want = float(_forward(g, group, x, wt, b, True).sum())  # the parent's pool is running
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_conv_in_child, args=(q,))
    p.start()
    p.join(60)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive and p.exitcode == 0
    assert q.get(timeout=5) == want


def test_rows_narrower_than_a_vector_stay_on_numpy():
    """Output rows of 3 pixels: no build takes them (the kernels have no scalar path); the layer path still
    computes them, on NumPy."""
    g, group, x, wt, b, _ = _case((1, 4, 6, 3, 8, 1, 3, 1, 1, 1), seed=9)
    assert not native.supports(g, 3)
    with pytest.raises(ValueError, match="narrower than a vector"):
        native.conv_forward(x, wt, b, g, group, np.empty((1, 8, 6, 3), np.float32))
    _close(_forward(g, group, x, wt, b, True), _forward(g, group, x, wt, b, False))
