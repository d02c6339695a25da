"""The optional compiled BatchNorm / ReLU kernels (``caffelite/_native/cbn.c``), called through ctypes.

Built by ``pip install`` beside the convolution kernels (:mod:`caffelite.ops.native`) and switched with them:
``CAFFELITE_NATIVE=0`` turns both off, ``native.enabled(False)`` forces the NumPy path within a block,
``CAFFELITE_NATIVE_ISA`` forces an instruction set, ``CAFFELITE_NUM_THREADS`` sets the thread count.

What runs here (C-contiguous float32 NumPy arrays only; chosen by :mod:`.batch_norm` and :mod:`.relu`):
- :func:`bn_train_forward` / :func:`bn_train_backward`: BatchNorm with batch statistics, one task per channel,
  sums in float64 (forward: one shifted pass for both sums, see :data:`ONE_PASS`).
- :func:`relu_forward` / :func:`relu_backward`: ReLU with any negative slope, NumPy's NaN and −0 results.

ctypes releases the GIL during a call, so the task range is split over a thread pool. Each value is computed
by one task in a fixed order: results do not depend on the number of threads.
"""

from __future__ import annotations

import ctypes

import numpy as np

from . import native


#: BatchNorm forward: one pass for Σ(x − k) and Σ(x − k)² in float64, k = the channel's first value (False: two
#: passes, the mean then Σ(x − μ)²). As accurate as two passes (both round only in the final float32 variance,
#: also with means of 1e4·σ or a k 1000σ away) and, A/B-interleaved in the jsegnet21v2 step, ~20% faster
ONE_PASS = True
#: fewest elements per thread: smaller arrays run on the calling thread. On a 2-core machine, A/B-interleaved in
#: the jsegnet21v2 step, BatchNorm split over channels was as fast as or faster than one thread, but ReLU split
#: over its 0.8-6.5 M elements was 20-30% slower (its input sits in the caller's caches): splitting it only pays
#: for arrays larger than the caches
BN_MIN_PER_THREAD = 1 << 16
RELU_MIN_PER_THREAD = 1 << 22


class _Params(ctypes.Structure):
    _fields_ = [("N", ctypes.c_long), ("C", ctypes.c_long), ("S", ctypes.c_long), ("eps", ctypes.c_double),
                ("keep", ctypes.c_int), ("affine", ctypes.c_int), ("onepass", ctypes.c_int),
                ("want_dx", ctypes.c_int)]


class _Lib(native.KernelLibrary):
    """The BatchNorm/ReLU library."""

    label = "native BatchNorm/ReLU kernel"

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        if lib.cbn_params_size() != ctypes.sizeof(_Params):
            raise ImportError(f"{path}: struct layout mismatch (rebuild caffelite: pip install -e .)")
        ptr, lng, flt = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
        lib.cbn_bn_fwd.argtypes = [ctypes.c_int] + [ptr] * 9 + [lng, lng]
        lib.cbn_bn_bwd.argtypes = [ctypes.c_int] + [ptr] * 7 + [lng, lng]
        lib.cbn_relu_fwd.argtypes = [ctypes.c_int, ptr, ptr, flt, lng, lng]
        lib.cbn_relu_bwd.argtypes = [ctypes.c_int, ptr, ptr, ptr, flt, lng, lng]
        super().__init__(lib, lib.cbn_isa_mask())


_LIB = native.load_library("caffelite._native._cbn", _Lib)


def available() -> bool:
    """Whether the compiled BatchNorm/ReLU kernels are built and loaded."""
    return _LIB is not None


def info() -> str:
    """One line for logs and benchmarks."""
    if _LIB is None:
        return "native BatchNorm/ReLU kernels: off (not built, or CAFFELITE_NATIVE=0)"
    return f"native BatchNorm/ReLU kernels: {_LIB.isa}, {_LIB.threads} threads"


def usable(*arrays) -> bool:
    """Whether the kernels take these arrays now: built, enabled (:func:`caffelite.ops.native.enabled`), and
    every array a C-contiguous float32 NumPy array (None entries are ignored)."""
    return _LIB is not None and native.is_enabled() and all(
        a is None or (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous)
        for a in arrays)


def _ptr(a) -> int | None:
    return None if a is None else a.ctypes.data


def bn_train_forward(x, y, xhat, gamma, beta, eps: float):
    """BatchNorm TRAIN forward of ``x`` (N, C, S) into ``y`` (may be ``x``) and, when given, ``xhat``; with
    ``gamma``/``beta`` (C,) ``y = x̂·γ + β``, else ``y = x̂``. Returns float32 (mean, biased var, 1/sqrt(var + eps)),
    each (C,)."""
    n, c, s = x.shape
    mean, var, inv = (np.empty(c, np.float32) for _ in range(3))
    affine = gamma is not None
    p = _Params(N=n, C=c, S=s, eps=float(eps), keep=xhat is not None, affine=affine, onepass=bool(ONE_PASS))
    _LIB.run(_LIB.lib.cbn_bn_fwd, (_ptr(x), _ptr(y), _ptr(xhat), _ptr(gamma), _ptr(beta), _ptr(mean), _ptr(var),
                                   _ptr(inv), ctypes.byref(p)), c, min_per_part=-(-BN_MIN_PER_THREAD // max(1, n * s)))
    return mean, var, inv


def bn_train_backward(dy, xhat, scale, dx):
    """BatchNorm TRAIN backward: returns float32 (dγ = Σ dy·x̂, dβ = Σ dy), each (C,); when ``dx`` is given
    (may be ``dy``) writes ``dx = (dy − x̂·dγ/m − dβ/m)·scale``, ``scale`` (C,) = γ/sqrt(σ² + eps)."""
    n, c, s = xhat.shape
    dgamma, dbeta = np.empty(c, np.float32), np.empty(c, np.float32)
    p = _Params(N=n, C=c, S=s, want_dx=dx is not None)
    _LIB.run(_LIB.lib.cbn_bn_bwd, (_ptr(dy), _ptr(xhat), _ptr(scale), _ptr(dx), _ptr(dgamma), _ptr(dbeta),
                                   ctypes.byref(p)), c, min_per_part=-(-BN_MIN_PER_THREAD // max(1, n * s)))
    return dgamma, dbeta


def relu_forward(x, y, slope: float):
    """``y = x > 0 ? x : x·slope`` (slope 0: NumPy's ``maximum(x, 0)``); ``y`` may be ``x``."""
    _LIB.run(_LIB.lib.cbn_relu_fwd, (_ptr(x), _ptr(y), float(slope)), x.size, min_per_part=RELU_MIN_PER_THREAD)


def relu_backward(x, dy, dx, slope: float):
    """``dx = x > 0 ? dy : dy·slope`` (slope 0: NumPy's ``dy * (x > 0)``); ``dx`` may be ``dy``."""
    _LIB.run(_LIB.lib.cbn_relu_bwd, (_ptr(x), _ptr(dy), _ptr(dx), float(slope)), x.size,
             min_per_part=RELU_MIN_PER_THREAD)
