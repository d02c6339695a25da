"""caffe-jacinto's fixed-point quantizer (Trim2FixedPoint, docs/jacinto-spec.md §b.5) as one CUDA kernel.

The generic body (:func:`caffelite.jacinto.fixed_point.quantize`) builds a float64 copy of the blob and
makes five passes over it; the kernel computes the same float64 ``y = x·scale + offset``, rounds (half to
even = jacinto's GPU kernel, or half away from zero = its CPU code), clips to the integer range and writes
``(y − offset)·inv`` in the blob's dtype, in one pass. ``inv`` is ``1/scale`` computed in float32, as
jacinto does. STOCHASTIC rounding stays on the generic body (it needs the random draws).
"""

from __future__ import annotations

import numpy as np

from ..backend import cupy_module
from ..jacinto import fixed_point as ref
from . import kernel, on_gpu

__all__ = ["quantize", "FIXED_POINT_SRC"]

FIXED_POINT_SRC = """
    double v = (double)x * scale + off;
    v = TIES_EVEN ? rint(v) : round(v);            // CUDA round(): half away from zero
    if (CLIP) v = fmin(fmax(v, lo), hi);
    y = (T)((v - off) * inv);
"""


def quantize(x, scale, offset=0.0, bitwidth=8, unsigned_quant=False, clip=True, ties="even", out=None):
    """NEAREST fake quantization of ``x`` (see ``fixed_point.quantize``); ``out`` may be ``x`` (in place)."""
    if not on_gpu(x):
        return ref.quantize(x, scale, offset, bitwidth, unsigned_quant, ref.NEAREST, clip, ties, out=out)
    if ties not in ref.TIES:
        raise ValueError(f"ties must be one of {ref.TIES}, not {ties!r}")
    cp = cupy_module()
    scale32 = np.float32(scale)
    lo, hi = ref.int_range(bitwidth, unsigned_quant)
    if out is None:
        out = cp.empty_like(x)
    kern = kernel("fixed_point", "elementwise",
                  "T x, float64 scale, float64 off, float64 inv, float64 lo, float64 hi, int32 CLIP, int32 TIES_EVEN",
                  "T y", FIXED_POINT_SRC)
    kern(x, np.float64(scale32), np.float64(np.float32(offset)), np.float64(np.float32(1.0) / scale32),
         np.float64(lo), np.float64(hi), np.int32(bool(clip)), np.int32(ties == "even"), out)
    return out
