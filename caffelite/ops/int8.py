"""Integer convolution with a requantising epilogue: the op under the integer engine for quantized nets.

For output channel m and pixel p, with integer activations ``q`` (8-bit values, stored as int16) and integer
weights ``w`` (up to 15-bit lanes: caffe-jacinto's default weights are 12-bit)::

    acc = sum(q * w) over the window            (int32, exact)
    s   = sum(q) over the window                (only when a weight zero point needs it: rq.B != 0)
    v   = (A[m]*acc + B[m]*s) + C[m]             (float64, in this order, no fused multiply-add)
    v   = v*slope where v < 0 (when rq.relu);  v = v + off;  clip to [lo, hi];  round (ties: even or away)

:func:`conv_int_reference` is the plain NumPy body (exact integer sums through a float64 GEMM, valid while the
sums stay below 2**53, which :func:`check_bounds` guarantees with room to spare); :func:`conv_int` runs the
compiled kernel of ``caffelite/_native/cint8.c`` when it is built and takes the geometry, else the reference.
Both give the same integers bit for bit (tests compare every instruction set the CPU runs).

``CAFFELITE_NATIVE=0`` turns the compiled kernel off; ``CAFFELITE_NATIVE_ISA=generic|avx2|avx512`` caps its
instruction set (avx512 means VNNI where the CPU has it).
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass

import numpy as np

from .im2col import ConvGeometry, window_view
from .native import _POOLS, _thread_count, load_library

_MAX_KW = 32
ISAS = ("generic", "avx2", "avx512bw", "vnni")


@dataclass
class Requant:
    """The per-channel epilogue: ``A``, ``B``, ``C`` float64 (Cout,) and the output quantizer's parameters."""

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    lo: float
    hi: float
    off: float = 0.0
    relu: bool = False
    slope: float = 0.0
    ties: str = "even"

    @property
    def has_sum(self) -> bool:
        return bool(np.any(self.B != 0))


def requantize(acc, s, rq: Requant):
    """The epilogue on int32/int64 ``acc`` (N, Cout, ...) and window sums ``s`` (N, Cout, ...) or None."""
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    v = rq.A.reshape(shape) * acc.astype(np.float64)
    if s is not None:
        v = v + rq.B.reshape(shape) * s.astype(np.float64)
    v = v + rq.C.reshape(shape)
    if rq.relu:
        v = np.where(v < 0, v * np.float64(rq.slope), v)
    v = v + np.float64(rq.off)
    np.clip(v, rq.lo, rq.hi, out=v)  # integer bounds: clipping before rounding gives the same value
    r = np.rint(v)
    if rq.ties == "away":
        d = v - r
        r += (d == 0.5) & (v > 0)
        r -= (d == -0.5) & (v < 0)
    return r.astype(np.int16)


def check_bounds(w, qmax: int, where: str = "convolution") -> None:
    """Raise ValueError unless every int32 sum of an output channel of integer weights ``w`` (Cout, ...) with
    activations |q| <= qmax is exact: the channel's sum of |w| times qmax below 2**31, and the 16-bit lanes."""
    w = np.asarray(w)
    wmax = int(np.abs(w).max(initial=0))
    l1 = int(np.abs(w.reshape(w.shape[0], -1).astype(np.int64)).sum(axis=1).max(initial=0))
    if wmax >= 2 ** 15 or qmax >= 2 ** 15 or l1 * qmax >= 2 ** 31:
        raise ValueError(f"{where}: integer sums of weights (largest channel sum of |w| {l1}) and activations "
                         f"|q| <= {qmax} may overflow 32 bits")


def conv_int_reference(q, w, b_unused, g: ConvGeometry, group: int, rq: Requant):
    """NumPy reference: ``q`` (N, C, H, W) integers, ``w`` (Cout, C/group, kh, kw) integers -> int16 output."""
    n, c, h, wd = q.shape
    cout = w.shape[0]
    ho, wo = g.out_shape(h, wd)
    hb, wb = g.padded_extent(h, wd, ho, wo)
    xpad = np.zeros((n, c, hb, wb), np.float64)
    xpad[:, :, g.ph:g.ph + h, g.pw:g.pw + wd] = q
    cols = window_view(xpad, g, ho, wo)  # (N, C, kh, kw, Ho, Wo)
    cg, mg = c // group, cout // group
    k = cg * g.kh * g.kw
    acc = np.empty((n, cout, ho * wo), np.float64)
    s = np.empty_like(acc) if rq.has_sum else None
    wm = w.reshape(group, mg, k).astype(np.float64)
    for gi in range(group):
        cg_cols = np.ascontiguousarray(cols[:, gi * cg:(gi + 1) * cg]).reshape(n, k, ho * wo)
        acc[:, gi * mg:(gi + 1) * mg] = np.matmul(wm[gi], cg_cols)  # exact: integer sums far below 2**53
        if s is not None:
            s[:, gi * mg:(gi + 1) * mg] = cg_cols.sum(axis=1)[:, None, :]
    out = requantize(acc.astype(np.int64), None if s is None else s.astype(np.int64), rq)
    return out.reshape(n, cout, ho, wo)


# ------------------------------------------------------------------------------------------------------
# the compiled kernel


class _Geom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("N", "G", "P", "Hp", "S", "Wq", "Cout", "Mg", "nmb", "kh", "kw", "sh", "dh", "Ho", "Wo", "rg", "bg",
                 "has_sum")]
    _fields_ += [("tap_off", ctypes.c_long * _MAX_KW)]


class _Epi(ctypes.Structure):
    _fields_ = [("A", ctypes.c_void_p), ("B", ctypes.c_void_p), ("C", ctypes.c_void_p), ("relu", ctypes.c_int),
                ("ties_away", ctypes.c_int), ("slope", ctypes.c_double), ("off", ctypes.c_double),
                ("lo", ctypes.c_double), ("hi", ctypes.c_double)]


class _Lib:
    """The loaded integer kernel library: supported instruction sets, the one in use, threads."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        if lib.ci8_geom_size() != ctypes.sizeof(_Geom) or lib.ci8_epi_size() != ctypes.sizeof(_Epi):
            raise ImportError(f"{path}: struct layout mismatch (rebuild caffelite: pip install -e .)")
        ptr, lng = ctypes.c_void_p, ctypes.c_long
        lib.ci8_conv_fwd.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, ptr, ptr, lng, lng]
        lib.ci8_sparse_fwd.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, ptr, ptr, lng, lng]
        lib.ci8_group_sums.argtypes = [ctypes.c_int, ptr, ptr, ptr, lng, lng]
        i = ctypes.c_int
        lib.ci8_pack.argtypes = [i, ptr, i, i, i, i, i, i, i, i, i, i, ptr, lng, lng]
        dbl = ctypes.c_double
        lib.ci8_quantize.argtypes = [ptr, dbl, dbl, dbl, dbl, i, ptr, lng, lng]
        self.lib = lib
        mask = lib.ci8_isa_mask()
        self.supported = [name for k, name in enumerate(ISAS) if mask >> k & 1]
        cap = os.environ.get("CAFFELITE_NATIVE_ISA", "").strip()
        if cap:
            allowed = {"generic": ISAS[:1], "avx2": ISAS[:2], "avx512": ISAS}.get(cap)
            if allowed is None or cap.replace("avx512", "avx512bw") not in self.supported:
                raise ImportError(f"CAFFELITE_NATIVE_ISA={cap}: not one this CPU runs")
            self.supported = [s for s in self.supported if s in allowed]
        self.isa = self.supported[-1]
        self.mb = lib.ci8_tile_channels()
        self.threads = _thread_count()

    def width(self, isa: str) -> int:
        return self.lib.ci8_vector_width(ISAS.index(isa))

    def run(self, args, ntasks: int, isa: str | None, fn=None):
        """``fn(isa code, *args, t0, t1)`` (``fn(*args, t0, t1)`` when ``isa`` is None) over the threads."""
        fn = fn or self.lib.ci8_conv_fwd
        if isa is not None:
            args = (ISAS.index(isa), *args)
        parts = max(1, min(self.threads, ntasks))
        if parts <= 1:
            rc = [fn(*args, 0, ntasks)]
        else:
            from concurrent.futures import ThreadPoolExecutor
            pool = _POOLS.get(self.threads)
            if pool is None:
                pool = _POOLS[self.threads] = ThreadPoolExecutor(self.threads)
            bounds = [ntasks * k // parts for k in range(parts + 1)]
            futs = [pool.submit(fn, *args, bounds[k], bounds[k + 1]) for k in range(parts)]
            rc = [f.result() for f in futs]
        if any(rc):
            raise RuntimeError(f"integer convolution kernel failed (codes {rc})")


_LIB = load_library("caffelite._native._cint8", _Lib)


def available() -> bool:
    """Whether the compiled integer kernel is built and loaded."""
    return _LIB is not None


def info() -> str:
    """One line: the integer kernel's instruction set and threads, or why it is off."""
    if _LIB is None:
        return "int8 conv kernel: off (not built, CAFFELITE_NATIVE=0, or a load warning above)"
    return f"int8 conv kernel: {_LIB.isa} ({', '.join(_LIB.supported)} supported), {_LIB.threads} threads"


def supported_isas() -> list:
    """Instruction sets the compiled kernel runs on this CPU ([] when it is not loaded)."""
    return [] if _LIB is None else list(_LIB.supported)


def native_ok(g: ConvGeometry, out_width: int, isa: str | None = None) -> bool:
    """Whether the compiled kernel takes this geometry (kernel width, output row at least one vector)."""
    if _LIB is None or g.kw > _MAX_KW:
        return False
    return _LIB.width(isa or _LIB.isa) <= out_width


def quantize_float(x, st: float, off: float, lo: int, hi: int, ties: str = "even"):
    """Integers (int16) of float32 ``x`` on a grid: ``x*st + off`` in float64, clip to [lo, hi], round (ties even
    or away): :class:`~caffelite.jacinto.int8_engine.QGrid`'s quantizer, compiled when available."""
    if _LIB is None or not isinstance(x, np.ndarray) or x.dtype != np.float32:
        y = np.asarray(x).astype(np.float64) * np.float64(st) + np.float64(off)
        np.clip(y, lo, hi, out=y)
        r = np.rint(y)
        if ties == "away":
            d = y - r
            r += (d == 0.5) & (y > 0)
            r -= (d == -0.5) & (y < 0)
        return r.astype(np.int16)
    xc = np.ascontiguousarray(x)
    out = np.empty(xc.shape, np.int16)
    if xc.size:  # element ranges, one per thread
        _LIB.run((xc.ctypes.data, float(st), float(off), float(lo), float(hi), int(ties == "away"), out.ctypes.data),
                 xc.size, None, _LIB.lib.ci8_quantize)
    return out


def pack_input(q, group: int, g: ConvGeometry, ho: int, wo: int, native: bool = True):
    """``q`` (N, C, H, W) integers -> the kernel's int32 pairs (N, G*P, Hp, S, Wq) (zero padding, channels of
    each group padded to an even count, columns split into stride phases); returns (array, Hp, Wq, P)."""
    n, c, h, w = q.shape
    cg = c // group
    p = (cg + 1) // 2
    hb, wb = g.padded_extent(h, w, ho, wo)
    s = g.sw
    wb = -(-wb // s) * s
    wq = wb // s
    if native and _LIB is not None:
        qc = np.ascontiguousarray(q, np.int16)
        packed = np.empty((n, group * p, hb, s, wq), np.int32)
        _LIB.run((qc.ctypes.data, group, cg, h, w, p, hb, s, wq, g.ph, g.pw, packed.ctypes.data), n * group * p,
                 _LIB.isa, _LIB.lib.ci8_pack)
        return packed, hb, wq, p
    full = np.zeros((n, group, 2 * p, hb, wb), np.int16)
    full[:, :, :cg, g.ph:g.ph + h, g.pw:g.pw + w] = q.reshape(n, group, cg, h, w)
    # (n, g, p, 2, hb, wq, s) -> (n, g, p, hb, s, wq, 2)
    pairs = full.reshape(n, group, p, 2, hb, wq, s).transpose(0, 1, 2, 4, 6, 5, 3)
    packed = np.ascontiguousarray(pairs).view(np.int32).reshape(n, group * p, hb, s, wq)
    return packed, hb, wq, p


def pack_weights(w, group: int, mb: int):
    """(Cout, Cg, kh, kw) integers -> int32 pairs (G, nmb, P, kh, kw, MB), zero past each group's channels."""
    cout, cg, kh, kw = w.shape
    mg = cout // group
    nmb = -(-mg // mb)
    p = (cg + 1) // 2
    full = np.zeros((group, nmb * mb, 2 * p, kh, kw), np.int16)
    full[:, :mg, :cg] = w.reshape(group, mg, cg, kh, kw)
    # (g, nmb, mb, p, 2, kh, kw) -> (g, nmb, p, kh, kw, mb, 2)
    t = full.reshape(group, nmb, mb, p, 2, kh, kw).transpose(0, 1, 3, 5, 6, 2, 4)
    return np.ascontiguousarray(t).view(np.int32).reshape(group, nmb, p, kh, kw, mb)


class _Sparse(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("off", ctypes.c_void_p), ("w", ctypes.c_void_p)]


class PackedConv:
    """A convolution's packed integer weights and epilogue, ready for repeated :meth:`forward` calls.

    ``sparse``: keep only each output channel's nonzero weight pairs and run the sparse kernel (same integers:
    the sums are exact either way); :func:`sparse_worthwhile` says when it pays.
    """

    def __init__(self, w, g: ConvGeometry, group: int, rq: Requant, sparse: bool = False):
        self.w = np.asarray(w, np.int16)
        self.g, self.group, self.rq = g, int(group), rq
        self.sparse = bool(sparse)
        self.wpk = pack_weights(self.w, self.group, _LIB.mb) if _LIB is not None else None
        self._abc = [np.ascontiguousarray(a, np.float64) for a in (rq.A, rq.B, rq.C)]
        self._soff = None
        if self.sparse and _LIB is not None:
            # pairs (G, 1, P, kh, kw, 1) per output channel, in (c, i, j) order
            pairs = pack_weights(self.w, self.group, 1)  # (G, Mg, P, kh, kw, 1)
            cout = self.w.shape[0]
            flat = pairs.reshape(cout, -1)
            nz = flat != 0
            self._sptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.int64)
            self._scij = np.nonzero(nz)[1]  # index into (P, kh, kw) of each kept pair
            self._sw = np.ascontiguousarray(flat[nz], np.int32)

    def _offsets(self, hp: int, wq: int):
        """Input offsets of the kept pairs for a packed input of ``hp`` rows and ``wq`` columns per phase."""
        if self._soff is None or self._soff[0] != (hp, wq):
            g = self.g
            p = (self.w.shape[1] + 1) // 2
            c, r = np.divmod(self._scij, g.kh * g.kw)
            i, j = np.divmod(r, g.kw)
            rowlen = g.sw * wq
            tap = (j * g.dw) % g.sw * wq + (j * g.dw) // g.sw
            off = ((c * hp + i * g.dh) * rowlen + tap).astype(np.int64)
            assert c.max(initial=0) < p
            self._soff = ((hp, wq), np.ascontiguousarray(off))
        return self._soff[1]

    def forward(self, q, isa: str | None = None, out=None):
        """int16 output (N, Cout, Ho, Wo) of integer input ``q`` (N, C, H, W)."""
        n, c, h, w = q.shape
        g = self.g
        ho, wo = g.out_shape(h, w)
        if isa is None and _LIB is not None:  # the widest instruction set whose vectors fit the output rows
            fits = [s for s in _LIB.supported if _LIB.width(s) <= wo]
            isa = fits[-1] if fits else None
        if isa is None or not native_ok(g, wo, isa):
            return conv_int_reference(q, self.w, None, g, self.group, self.rq)
        lib = _LIB
        xs, hp, wq, p = pack_input(q, self.group, g, ho, wo)
        cout = self.w.shape[0]
        mg = cout // self.group
        geom = _Geom(N=n, G=self.group, P=p, Hp=hp, S=g.sw, Wq=wq, Cout=cout, Mg=mg, nmb=-(-mg // lib.mb),
                     kh=g.kh, kw=g.kw, sh=g.sh, dh=g.dh, Ho=ho, Wo=wo, has_sum=int(self.rq.has_sum))
        for j in range(g.kw):
            geom.tap_off[j] = (j * g.dw) % g.sw * wq + (j * g.dw) // g.sw
        gsum = None
        if self.rq.has_sum:
            gsum = np.empty((n, self.group, hp, g.sw, wq), np.int32)
            lib.run((xs.ctypes.data, gsum.ctypes.data, ctypes.byref(geom)), n * self.group, isa,
                    lib.lib.ci8_group_sums)
        rq = self.rq
        e = _Epi(self._abc[0].ctypes.data, self._abc[1].ctypes.data, self._abc[2].ctypes.data, int(rq.relu),
                 int(rq.ties == "away"), float(rq.slope), float(rq.off), float(rq.lo), float(rq.hi))
        if out is None:
            out = np.empty((n, cout, ho, wo), np.int16)
        gp = None if gsum is None else gsum.ctypes.data
        if self.sparse:
            off = self._offsets(hp, wq)
            sp = _Sparse(self._sptr.ctypes.data, off.ctypes.data, self._sw.ctypes.data)
            ntasks = _sparse_chunking(geom, n, lib.threads)
            lib.run((xs.ctypes.data, gp, ctypes.byref(sp), ctypes.byref(e), out.ctypes.data, ctypes.byref(geom)),
                    ntasks, isa, lib.lib.ci8_sparse_fwd)
            return out
        ntasks = _chunking(geom, n, lib.threads, lib.mb)
        lib.run((xs.ctypes.data, gp, self.wpk.ctypes.data, ctypes.byref(e), out.ctypes.data, ctypes.byref(geom)),
                ntasks, isa)
        return out


class AutoConv:
    """The dense and the sparse kernel of one convolution (same integers): the first ``trials`` calls alternate
    between them and time each; later calls run the faster (on this machine, for this layer and shape)."""

    def __init__(self, w, g: ConvGeometry, group: int, rq: Requant, trials: int = 2, times: dict | None = None):
        self.dense = PackedConv(w, g, group, rq)
        self.sparse_conv = PackedConv(w, g, group, rq, sparse=True)
        self.w, self.g, self.group, self.rq = self.dense.w, g, int(group), rq
        # ``times`` may be shared by the AutoConvs of one layer (e.g. under different output scales)
        self.times = times if times is not None else {}
        self.times.setdefault(False, [])
        self.times.setdefault(True, [])
        self.trials = int(trials)

    @property
    def choice(self):
        """True (sparse) / False (dense) once both were timed ``trials`` times, else None."""
        if min(len(self.times[False]), len(self.times[True])) < self.trials:
            return None
        return min(self.times[True]) < min(self.times[False])

    @property
    def sparse(self) -> bool:
        """Whether the sparse kernel was chosen (False until the choice is made)."""
        return bool(self.choice)

    def forward(self, q, isa: str | None = None, out=None):
        choice = self.choice
        if choice is not None:
            return (self.sparse_conv if choice else self.dense).forward(q, isa, out)
        use = len(self.times[True]) < len(self.times[False])
        t0 = time.perf_counter()
        res = (self.sparse_conv if use else self.dense).forward(q, isa, out)
        self.times[use].append(time.perf_counter() - t0)
        return res


def nonzero_pair_fraction(w, group: int) -> float:
    """The fraction of (two-channel) weight pairs with a nonzero weight: the sparse kernel's work relative to
    the dense one's multiply-adds."""
    pairs = pack_weights(np.asarray(w, np.int16), int(group), 1)
    return float(np.count_nonzero(pairs)) / max(1, pairs.size)


#: the sparse kernel does one load per multiply-add, the dense one shares a load among 8 output channels; below
#: this nonzero-pair fraction the sparse one was faster on jsegnet21v2's layers (bench/int8_forward.py)
SPARSE_MAX_NONZERO_PAIRS = 0.4


def sparse_worthwhile(w, group: int) -> bool:
    """Whether the sparse integer kernel should run this layer's weights."""
    return _LIB is not None and nonzero_pair_fraction(w, group) <= SPARSE_MAX_NONZERO_PAIRS


def _sparse_chunking(p: _Geom, n: int, threads: int) -> int:
    p.bg = max(1, min(p.Cout, 8))
    p.rg = max(1, min(p.Ho, max(1, (64 << 10) // max(1, p.Wo * 2 * 8))))
    while n * -(-p.Ho // p.rg) * -(-p.Cout // p.bg) < 4 * threads and (p.rg > 1 or p.bg > 1):
        if p.rg >= p.bg:
            p.rg = -(-p.rg // 2)
        else:
            p.bg = -(-p.bg // 2)
    return n * -(-p.Ho // p.rg) * -(-p.Cout // p.bg)


#: cache budget of one task: packed weights of its channel blocks and the input rows it reads
CHUNK_WEIGHT_BYTES = 128 << 10
CHUNK_INPUT_BYTES = 256 << 10


def _chunking(p: _Geom, n: int, threads: int, mb: int) -> int:
    nblk = p.G * p.nmb
    p.bg = max(1, min(nblk, CHUNK_WEIGHT_BYTES // max(1, p.P * p.kh * p.kw * mb * 4)))
    row_bytes = p.P * p.S * p.Wq * 4
    rows_in = max(1, CHUNK_INPUT_BYTES // max(1, row_bytes))
    p.rg = max(1, min(p.Ho, (rows_in - (p.kh - 1) * p.dh) // p.sh))
    while n * -(-p.Ho // p.rg) * -(-nblk // p.bg) < 4 * threads and (p.rg > 1 or p.bg > 1):
        if p.rg >= p.bg:
            p.rg = -(-p.rg // 2)
        else:
            p.bg = -(-p.bg // 2)
    return n * -(-p.Ho // p.rg) * -(-nblk // p.bg)


def conv_int(q, w, g: ConvGeometry, group: int, rq: Requant, isa: str | None = None, sparse: bool = False):
    """One-shot integer convolution (packs the weights each call; the engine keeps a :class:`PackedConv`)."""
    return PackedConv(w, g, group, rq, sparse).forward(q, isa)
