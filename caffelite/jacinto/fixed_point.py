"""caffe-jacinto's dynamic fixed point: the scale/offset estimation and the fake quantizer.

Pure functions, no Net state. Spec: ``docs/jacinto-spec.md`` §b.4 (Estimate), §b.5 (the quantizer),
§b.6 (0.16 scale formulas).

The quantizer computes ``y = x*scale + offset`` in float64, where it is exact for float32 inputs (a product of
two 24-bit mantissas fits a 53-bit one), so the rounding decision never depends on float32 rounding of ``y``;
only the final ``(y - offset) * inv`` is rounded back to the input dtype. ``inv`` is ``1/scale`` computed once
in float32, as caffe-jacinto does (§b.5), so the dequantized grid is jacinto's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import backend
from ..kernels import on_gpu
from . import fixed_point_kernel

#: rounding schemes (QuantizationParameter_Rounding)
NEAREST, STOCHASTIC = 0, 1

#: tie-breaking of NEAREST: "even" is the GPU kernel (the reference logs were made on GPUs), "away" the CPU code
TIES = ("even", "away")


def int_range(bitwidth: int, unsigned_quant: bool) -> tuple[int, int]:
    """The clip range ``(lo, hi)`` of a ``bitwidth``-bit integer (§b.5: qr = bw or bw-1)."""
    qr = int(bitwidth) if unsigned_quant else int(bitwidth) - 1
    hi = 2 ** qr - 1
    lo = 0 if unsigned_quant else -(2 ** qr)
    return lo, hi


def quantize(x, scale, offset=0.0, bitwidth=8, unsigned_quant=False, rounding=NEAREST, clip=True,
             ties="even", uniform=None, out=None):
    """Fake-quantize ``x`` (jacinto's Trim2FixedPoint, §b.5) and return the dequantized array.

    ``scale``/``offset`` are the QParams' ``scale_target``/``offset``; ``bitwidth`` and ``unsigned_quant`` give
    the integer range; ``clip`` clamps to it (jacinto clips activations and weights, not biases).
    ``rounding``: NEAREST (ties per ``ties``: "even" = the GPU kernel, "away" = the CPU code) or STOCHASTIC
    (``floor(y + u)``). ``uniform``: optional array of U[0,1) draws of ``x``'s shape for STOCHASTIC (else drawn
    from caffelite's generator). ``out``: write the result there (may be ``x`` itself: in place, as jacinto).
    """
    xp = backend.get_array_module(x)
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, not {ties!r}")
    dtype = x.dtype
    scale32 = np.float32(scale)
    off = np.float64(np.float32(offset))
    inv = np.float64(np.float32(1.0) / scale32)  # jacinto: inverse computed once, in float32
    if rounding == NEAREST and on_gpu(x):  # the named kernel: the same float64 steps in one pass
        lo, hi = int_range(bitwidth, unsigned_quant)
        return fixed_point_kernel.quantize(x, np.float64(scale32), off, inv, lo, hi, clip, ties == "even", out=out)
    y = x.astype(xp.float64)  # one float64 working array, updated in place (blobs can be large)
    y *= np.float64(scale32)
    y += off
    if rounding == STOCHASTIC:
        if uniform is None:
            uniform = _uniform(xp, x.shape)
        if ties == "even":  # GPU draws from (0, 1]
            uniform = 1.0 - uniform
        y += uniform
        xp.floor(y, out=y)
    elif rounding == NEAREST:
        if ties == "even":
            xp.rint(y, out=y)
        else:
            y = round_half_away(y, xp)
    else:
        raise ValueError(f"unknown rounding scheme {rounding!r}")
    if clip:
        lo, hi = int_range(bitwidth, unsigned_quant)
        xp.clip(y, lo, hi, out=y)  # integer bounds: clamping before or after rounding gives the same value
    y -= off
    y *= inv
    if out is None:
        return y.astype(dtype)
    out[...] = y
    return out


def _uniform(xp, shape):
    if xp is np:
        return backend.rng().random(shape)
    return xp.random.random(shape)


def round_half_away(y, xp=np):
    """Round half away from zero, exactly for float64 (no ``y + 0.5`` double rounding)."""
    r = xp.rint(y)  # half to even: differs from half-away only on exact ties rounded toward zero
    d = y - r       # exact
    r += (d == 0.5) & (y > 0)
    r -= (d == -0.5) & (y < 0)
    return r


# ------------------------------------------------------------------------------------------------------
# Estimate (§b.4) and the 0.16 formulas (§b.6)


@dataclass
class QParamValues:
    """The values Estimate writes into a QParams (names as in QuantizationParameter.QParams)."""

    bitwidth: int
    unsigned_data: bool
    unsigned_quant: bool
    min: float
    max: float
    scale_target: float
    scale_applied: float
    shiftbits: int = 0
    offset: float = 0.0
    fracbits: int = 0


def abs_bits(v: float) -> int:
    """EstimateAbsBits: ``ceil(log2(|v|))``, 0 for 0 (§b.4)."""
    v = abs(float(v))
    return int(math.ceil(math.log2(v))) if v != 0 else 0


def estimate(mn, mx, bitwidth, power2=False, unsigned_data=False, apply_offset=False, scale_applied=1.0):
    """jacinto 0.17's Estimate (§b.4): scale_target, shiftbits and offset for a range ``[mn, mx]``.

    ``scale_applied`` is the current value in the QParams (it cancels out unless ``power2``). An all-zero
    range divides by zero in jacinto; here it gives scale 1 (nothing to represent) instead of inf/NaN.
    Float arithmetic is float32, as jacinto's (all QParams fields are float).
    """
    f32 = np.float32
    mn, mx, sa = f32(mn), f32(mx), f32(scale_applied)
    unsigned_quant = bool(unsigned_data or apply_offset)
    a = f32(max(abs(mx), abs(mn)) * sa)
    r = f32(abs(f32(mx - mn)) * sa)
    shiftbits = 0
    if power2:
        eb = abs_bits(r) if apply_offset else (abs_bits(a) if unsigned_data else abs_bits(a) + 1)
        shiftbits = eb - int(bitwidth)
        st = f32(sa * f32(2.0 ** (-shiftbits)))
    else:
        q = f32(2 ** int(bitwidth) - 1)
        qh = f32(2 ** (int(bitwidth) - 1) - 1)
        num = q if (apply_offset or unsigned_data) else qh
        den = r if apply_offset else a
        st = f32(sa * f32(num / den)) if den != 0 else sa  # sa cancels: den already carries it
    offset = float(f32(-mn * st)) if apply_offset else 0.0
    return QParamValues(bitwidth=int(bitwidth), unsigned_data=bool(unsigned_data), unsigned_quant=unsigned_quant,
                        min=float(mn), max=float(mx), scale_target=float(st), scale_applied=float(sa),
                        shiftbits=int(shiftbits), offset=offset)


def estimate_016(mn, mx, bitwidth, power2_range=False, unsigned_data=False, apply_offset=False):
    """caffe-jacinto 0.16's scale/offset (§b.6): no scale_applied chaining; power2 gives ``2**fracbits``."""
    f32 = np.float32
    mn, mx = f32(mn), f32(mx)
    unsigned_quant = bool(unsigned_data or apply_offset)
    a = f32(max(abs(mx), abs(mn)))
    r = f32(abs(f32(mx - mn)))
    fracbits = 0
    if power2_range:
        eb = abs_bits(r) if apply_offset else (abs_bits(a) if unsigned_data else abs_bits(a) + 1)
        fracbits = int(bitwidth) - eb
        st = f32(2.0 ** fracbits)
    else:
        q = f32(2 ** int(bitwidth) - 1)
        qh = f32(2 ** (int(bitwidth) - 1) - 1)
        num = q if (apply_offset or unsigned_data) else qh
        den = r if apply_offset else a
        st = f32(num / den) if den != 0 else f32(1.0)
    offset = float(f32(-mn * st)) if apply_offset else 0.0
    return QParamValues(bitwidth=int(bitwidth), unsigned_data=bool(unsigned_data), unsigned_quant=unsigned_quant,
                        min=float(mn), max=float(mx), scale_target=float(st), scale_applied=1.0,
                        offset=offset, fracbits=fracbits)
