"""caffe-jacinto's fixed-point quantizer (Trim2FixedPoint, NEAREST, docs/jacinto-spec.md §b.5) as one CUDA kernel.

Run by :func:`caffelite.jacinto.fixed_point.quantize` on CuPy arrays. The generic body there builds a float64
copy of the blob and makes five passes over it; the kernel computes the same float64 ``y = x·scale + offset``,
rounds (half to even = jacinto's GPU kernel, or half away from zero = its CPU code), clips to the integer range
and writes ``(y − offset)·inv`` in the blob's dtype, in one pass. The caller passes the float64 values the
generic body uses (``scale`` and ``offset`` rounded to float32 first, ``inv = 1/scale`` in float32, as jacinto
does). STOCHASTIC rounding stays on the generic body (it needs the random draws).
"""

from __future__ import annotations

import numpy as np

from ..backend import cupy_module
from ..kernels import kernel

__all__ = ["quantize", "FIXED_POINT_SRC", "KERNELS"]

#: the kernel names this module builds (the parity tests check each is exercised)
KERNELS = ("fixed_point",)

FIXED_POINT_SRC = """
    double v = (double)x * scale + off;
    v = TIES_EVEN ? rint(v) : round(v);            // CUDA round(): half away from zero
    if (CLIP) v = fmin(fmax(v, lo), hi);
    y = (T)((v - off) * inv);
"""


def quantize(x, scale, off, inv, lo, hi, clip: bool, ties_even: bool, out=None):
    """NEAREST fake quantization of the CuPy ``x`` into ``out`` (may be ``x``; a new array when None):
    ``((clip(round(x·scale + off), lo, hi)) − off)·inv`` in float64, stored in ``x``'s dtype."""
    if out is None:
        out = cupy_module().empty_like(x)
    kern = kernel("fixed_point", "elementwise",
                  "T x, float64 scale, float64 off, float64 inv, float64 lo, float64 hi, int32 CLIP, int32 TIES_EVEN",
                  "T y", FIXED_POINT_SRC)
    kern(x, np.float64(scale), np.float64(off), np.float64(inv), np.float64(lo), np.float64(hi),
         np.int32(bool(clip)), np.int32(bool(ties_even)), out)
    return out
