"""The optional compiled non-convolution steps of the int8 engine (``caffelite/_native/ci8glue.c``), via ctypes.

Built by ``pip install`` beside the other kernels and switched with them (``CAFFELITE_NATIVE=0`` turns it off,
``CAFFELITE_NATIVE_ISA`` caps the instruction set, ``CAFFELITE_NUM_THREADS`` sets the thread count). When it is
not built the engine (:mod:`caffelite.jacinto.int8_engine`) runs these steps on its NumPy path, with the same
integers. What runs here (int16 integers, C-contiguous NumPy arrays):

- :func:`deconv`: a depthwise Deconvolution on integer inputs, requantized to its output grid, optionally fused
  with an ArgMax over the channels (:class:`DeconvSpec` says which arithmetic: the float simulation's float32
  one, or exact int32 sums where :func:`integer_form` proves them equal);
- :func:`pool_max`: MAX pooling (Caffe's windows) with an optional requantising table;
- :func:`argmax`: ArgMax over axis 1 (top_k 1), ties to the larger index, float32 indices;
- :func:`lut2`: a two-input Eltwise as a 2-D table;
- :func:`bias_quantize`: the float32 Bias ``x + b[channel]`` followed by the engine's quantizer.

Each output value is computed by one task in a fixed order: results do not depend on the thread count.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from . import native


class _Deconv(ctypes.Structure):
    _fields_ = [(k, ctypes.c_long) for k in ("N", "C", "H", "W", "Ho", "Wo")]
    _fields_ += [(k, ctypes.c_int) for k in ("kh", "kw", "sh", "sw", "ph", "pw", "mode", "qlo", "nq")]
    _fields_ += [(k, ctypes.c_void_p) for k in ("tabf", "tabi", "wf", "wi")]
    _fields_ += [(k, ctypes.c_double) for k in ("scale", "st", "off", "lo", "hi")]
    _fields_ += [("away", ctypes.c_int), ("fthr", ctypes.c_float), ("inv", ctypes.c_float),
                 ("inp", ctypes.c_void_p), ("out", ctypes.c_void_p), ("amax", ctypes.c_void_p)]


class _BiasQuant(ctypes.Structure):
    _fields_ = [("x", ctypes.c_void_p), ("b", ctypes.c_void_p), ("dim", ctypes.c_long), ("inner", ctypes.c_long)]
    _fields_ += [(k, ctypes.c_double) for k in ("st", "off", "lo", "hi")]
    _fields_ += [("away", ctypes.c_int), ("fthr", ctypes.c_float), ("out", ctypes.c_void_p)]


class _Pool(ctypes.Structure):
    _fields_ = [(k, ctypes.c_long) for k in ("P", "H", "W", "Ho", "Wo")]
    _fields_ += [(k, ctypes.c_int) for k in ("kh", "kw", "sh", "sw", "ph", "pw", "qlo", "nq")]
    _fields_ += [(k, ctypes.c_void_p) for k in ("lut", "inp", "out")]


class _Lib(native.KernelLibrary):
    """The int8 glue library."""

    label = "native int8 glue kernel"

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        if lib.ci8g_deconv_size() != ctypes.sizeof(_Deconv) or lib.ci8g_pool_size() != ctypes.sizeof(_Pool) or \
                lib.ci8g_bq_size() != ctypes.sizeof(_BiasQuant):
            raise ImportError(f"{path}: struct layout mismatch (rebuild caffelite: pip install -e .)")
        ptr, lng, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
        lib.ci8g_deconv.argtypes = [i, ptr, lng, lng, lng]
        lib.ci8g_pool.argtypes = [i, ptr, lng, lng]
        lib.ci8g_argmax.argtypes = [i, ptr, lng, lng, ptr, lng, lng]
        lib.ci8g_lut2.argtypes = [i, ptr, ptr, ptr, lng, lng, lng, lng, ptr, lng, lng]
        lib.ci8g_bias_quant.argtypes = [i, ptr, lng, lng]
        super().__init__(lib, lib.ci8g_isa_mask())


_LIB = native.load_library("caffelite._native._ci8glue", _Lib)

#: fewest output elements per thread (smaller calls run on the calling thread)
MIN_PER_THREAD = 1 << 15
#: ArgMax positions per task (the kernel's block)
_AM_BLOCK = 4096
#: Bias values per task (the kernel's block)
_BIAS_BLOCK = 2048
#: the most kernel taps (kh * kw) of a deconvolution the kernel takes
MAX_TAPS = 64
#: Deconvolution output rows per task (fewer when that leaves under 4 tasks per thread): a block's source rows
#: are converted once per channel
DECONV_ROWS = 16


#: quantize float32 values in float32 where that provably rounds as the double quantizer (fast_threshold); the
#: others, and everything when False, go through the double quantizer. Same integers either way
FAST_QUANT = True


def fast_threshold(st: float, off: float, lo: float, hi: float) -> float:
    """The kernels' float32 quantizer threshold for the grid ``st, off, lo, hi`` (0.0: use the double one).

    With st and off float32 values, g = fl32(fl32(a*st) + off), clamped to [lo - 1, hi + 1], is within
    2**-23 * (M + 2|off|) (slightly more) of the double value a*st + off (M = max(|lo|, |hi|) + 1); this allows
    E = 2**-20 * (M + 2|off| + 1), 8 times that. Where |g - rint(g)| <= 0.5 - 2E (another factor for the
    float32 threshold itself) both round to the same integer; the kernel sends the other values to the double
    quantizer."""
    if not FAST_QUANT or float(np.float32(st)) != st or float(np.float32(off)) != off:
        return 0.0
    m = max(abs(lo), abs(hi)) + 1
    e = 2.0 ** -20 * (m + 2 * abs(off) + 1)
    return float(np.float32(0.5 - 2 * e)) if e < 0.0625 else 0.0


def available() -> bool:
    """Whether the compiled glue kernels are built and loaded."""
    return _LIB is not None


def info() -> str:
    """One line for logs and benchmarks."""
    if _LIB is None:
        return "native int8 glue kernels: off (not built, or CAFFELITE_NATIVE=0)"
    return f"native int8 glue kernels: {_LIB.isa}, {_LIB.threads} threads"


def _run(fn, args, ntasks, per_task):
    _LIB.run(fn, args, ntasks, min_per_part=max(1, MIN_PER_THREAD // max(1, per_task)), dynamic=True)


def _i16(q):
    return np.ascontiguousarray(q, dtype=np.int16)


@dataclass
class DeconvSpec:
    """A depthwise Deconvolution (weights (C, 1, kh, kw), no bias, dilation 1) between two grids.

    ``mode`` "float": ``tab`` float32 (values of the input integers lo..hi), ``w`` float32 (C, kh, kw): the
    float simulation's arithmetic; "int": ``tab`` and ``w`` int32 and ``scale`` the power of two that gives
    the float value of a sum (:func:`integer_form`). ``st, off, lo, hi, away``: the output quantizer.
    ``inv``: the input grid's step, a hint: where the table is float32(q) * inv for every entry (a grid without
    offset: float32 rounds the exact product once, as the double dequantization does) the kernel multiplies
    instead of looking up; it is set to 0 otherwise (checked on every entry)."""

    mode: str
    tab: np.ndarray
    qlo: int
    w: np.ndarray
    scale: float
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    st: float
    off: float
    lo: float
    hi: float
    away: bool
    inv: float = 0.0

    def __post_init__(self):
        inv = np.float32(self.inv)
        q = np.arange(self.qlo, self.qlo + self.tab.size).astype(np.float32)
        ok = self.mode == "float" and inv > 0 and float(inv) == self.inv and np.array_equal(q * inv, self.tab)
        self.inv = float(inv) if ok else 0.0


def _pow2_ints(v, limit_bits=24):
    """(integers k, e) with float values ``v`` == k * 2**-e exactly and every |k| < 2**limit_bits, else None."""
    v = np.asarray(v, np.float64)
    for e in range(0, 160):
        k = v * 2.0 ** e  # exact: a power-of-two multiple of a float32 value
        if np.all(k == np.rint(k)):
            if np.abs(k).max(initial=0) >= 2 ** limit_bits:
                return None
            return k.astype(np.int64), e
    return None


def integer_form(tab, w):
    """Integer tables for an exact int32 deconvolution, or None.

    ``tab``: the float32 values of the input integers, ``w`` (C, kh, kw) the float32 weights. Where both are
    integers times powers of two (``tab = a * 2**-ea``, ``w = k * 2**-ek``) and every sum of products of one
    output stays below 2**24 in units of 2**-(ea+ek) (max|a| * max over channels of sum |k| < 2**24), each
    float32 product and partial sum of the simulation is exact, whatever its order: the float value of an output
    is exactly the int32 sum times 2**-(ea+ek). Returns (a int32, k int32, 2**-(ea+ek)) then."""
    fa, fk = _pow2_ints(tab), _pow2_ints(w)
    if fa is None or fk is None:
        return None
    (a, ea), (k, ek) = fa, fk
    amax = int(np.abs(a).max(initial=0))
    l1 = int(np.abs(k.reshape(k.shape[0], -1)).sum(axis=1).max(initial=0))
    if amax * l1 >= 2 ** 24 or ea + ek > 1000:
        return None
    return a.astype(np.int32), k.astype(np.int32), 2.0 ** -(ea + ek)


def deconv(q, spec: DeconvSpec, out_shape, want_ints=True, want_argmax=False):
    """The deconvolution of integers ``q`` (N, C, H, W) to ``out_shape`` (N, C, Ho, Wo): returns (integers or
    None, float32 ArgMax indices (N, 1, Ho, Wo) over the channels or None)."""
    qc = _i16(q)
    n, c, h, w = qc.shape
    ho, wo = int(out_shape[2]), int(out_shape[3])
    out = np.empty((n, c, ho, wo), np.int16) if want_ints else None
    amax = np.empty((n, 1, ho, wo), np.float32) if want_argmax else None
    isf = spec.mode == "float"
    p = _Deconv(N=n, C=c, H=h, W=w, Ho=ho, Wo=wo, kh=spec.kh, kw=spec.kw, sh=spec.sh, sw=spec.sw, ph=spec.ph,
                pw=spec.pw, mode=0 if isf else 1, qlo=spec.qlo, nq=spec.tab.size,
                tabf=spec.tab.ctypes.data if isf else None, tabi=None if isf else spec.tab.ctypes.data,
                wf=spec.w.ctypes.data if isf else None, wi=None if isf else spec.w.ctypes.data,
                scale=spec.scale, st=spec.st, off=spec.off, lo=spec.lo, hi=spec.hi, away=int(spec.away),
                fthr=fast_threshold(spec.st, spec.off, spec.lo, spec.hi) if isf else 0.0, inv=spec.inv,
                inp=qc.ctypes.data, out=None if out is None else out.ctypes.data,
                amax=None if amax is None else amax.ctypes.data)
    if n * ho:
        rb = max(1, min(DECONV_ROWS, ho // max(1, 4 * _LIB.threads)))
        nblk = -(-ho // rb)
        _run(_LIB.lib.ci8g_deconv, (ctypes.byref(p), rb), n * nblk, c * wo * rb)
    return out, amax


def pool_max(q, out_shape, kernel, stride, pad, lut=None, qlo=0):
    """MAX pooling of integers ``q`` (N, C, H, W) to ``out_shape`` with Caffe's windows; ``lut`` (int16) maps
    the maxima (index: integer - ``qlo``) when given."""
    qc = _i16(q)
    n, c, h, w = qc.shape
    ho, wo = int(out_shape[2]), int(out_shape[3])
    out = np.empty((n, c, ho, wo), np.int16)
    lt = None if lut is None else _i16(lut)
    p = _Pool(P=n * c, H=h, W=w, Ho=ho, Wo=wo, kh=kernel[0], kw=kernel[1], sh=stride[0], sw=stride[1], ph=pad[0],
              pw=pad[1], qlo=qlo, nq=0 if lt is None else lt.size, lut=None if lt is None else lt.ctypes.data,
              inp=qc.ctypes.data, out=out.ctypes.data)
    if n * c * ho:
        _run(_LIB.lib.ci8g_pool, (ctypes.byref(p),), n * c * ho, wo)
    return out


def argmax(q, out):
    """ArgMax over axis 1 of integers ``q`` (N, C, ...) into float32 ``out`` (N, 1, ...), C-contiguous."""
    qc = _i16(q)
    outer, c = qc.shape[0], qc.shape[1]
    inner = int(np.prod(qc.shape[2:], dtype=np.int64))
    nb = -(-inner // _AM_BLOCK)
    if outer * nb:
        _run(_LIB.lib.ci8g_argmax, (qc.ctypes.data, c, inner, out.ctypes.data), outer * nb, c * _AM_BLOCK)
    return out


def lut2(a, b, lut, lo1, lo2):
    """``lut[a - lo1, b - lo2]`` for integers ``a``, ``b`` of one shape (int16 ``lut`` (n1, n2))."""
    ac, bc, lt = _i16(a), _i16(b), _i16(lut)
    out = np.empty(ac.shape, np.int16)
    if ac.size:
        _run(_LIB.lib.ci8g_lut2, (ac.ctypes.data, bc.ctypes.data, lt.ctypes.data, int(lo1), lt.shape[0], int(lo2),
                                  lt.shape[1], out.ctypes.data), ac.size, 1)
    return out


def bias_quantize(x, b, dims, st, off, lo, hi, away):
    """Integers of the float32 ``x + b`` (x seen as (outer, dim, inner), b (dim,)) on the grid ``st, off,
    lo, hi`` (ties away from zero when ``away``)."""
    outer, dim, inner = dims
    xc = np.ascontiguousarray(x, dtype=np.float32)
    bc = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    out = np.empty(xc.shape, np.int16)
    if xc.size:
        nb = -(-inner // _BIAS_BLOCK)
        p = _BiasQuant(xc.ctypes.data, bc.ctypes.data, dim, inner, float(st), float(off), float(lo), float(hi),
                       int(bool(away)), fast_threshold(st, off, lo, hi), out.ctypes.data)
        _run(_LIB.lib.ci8g_bias_quant, (ctypes.byref(p),), outer * dim * nb, _BIAS_BLOCK)
    return out
