"""The compiled integer convolution library (``caffelite/_native/cint8.c``) through ctypes: loading, the
instruction sets this CPU runs, the input/weight packings and the task chunking. :mod:`caffelite.ops.int8` is the
op built on it (and re-exports what tests and callers use).

``CAFFELITE_NATIVE=0`` turns the library off; ``CAFFELITE_NATIVE_ISA=generic|avx2|avx512`` caps its instruction
set (avx512 means VNNI where the CPU has it). Instruction sets: generic (portable C), avx2 (vpmaddwd), avx512bw
(vpmaddwd), vnni (vpdpwssd; vpdpbusd for u8 x s8 quads). The sparse kernel of the two AVX-512 sets pairs each
output channel's nonzero weights themselves (``caffelite/_native/cint8_singles.h``) on the planar int16 input of
:func:`pack_input16`; the others run the channel pairs of :func:`pack_weights`. On vnni, with inputs in 0..255
and weights in -128..127, the sparse kernel groups them in fours instead (``cint8_quads.h``, vpdpbusd) on the
same planes in uint8.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from .im2col import ConvGeometry
from .native import _thread_count, load_library, pooled_run, split_tasks


_MAX_KW = 32
ISAS = ("generic", "avx2", "avx512bw", "vnni")

class _Geom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("N", "G", "P", "Hp", "S", "Wq", "Cout", "Mg", "nmb", "kh", "kw", "sh", "dh", "Ho", "Wo", "rg", "bg",
                 "has_sum")]
    _fields_ += [("tap_off", ctypes.c_long * _MAX_KW)]


class _Epi(ctypes.Structure):
    _fields_ = [("A", ctypes.c_void_p), ("B", ctypes.c_void_p), ("C", ctypes.c_void_p), ("relu", ctypes.c_int),
                ("ties_away", ctypes.c_int), ("slope", ctypes.c_double), ("off", ctypes.c_double),
                ("lo", ctypes.c_double), ("hi", ctypes.c_double), ("FA", ctypes.c_void_p), ("FB", ctypes.c_void_p),
                ("FC", ctypes.c_void_p), ("FT", ctypes.c_void_p), ("fast", ctypes.c_int)]


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
        lib.ci8_pack4.argtypes = [ptr, i, i, i, i, i, i, i, i, i, i, ptr, lng, lng]
        lib.ci8_group_sums4.argtypes = [ptr, ptr, ptr, lng, lng]
        lib.ci8_singles_fwd.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, ptr, ptr, lng, lng]
        lib.ci8_pack16.argtypes = [ptr, i, i, i, i, i, i, i, lng, i, ptr, lng, lng]
        lib.ci8_pack8.argtypes = [ptr, i, i, i, i, i, i, i, lng, i, i, ptr, lng, lng]
        lib.ci8_planar_sums.argtypes = [ptr, i, i, lng, lng, lng, ptr, lng, lng]
        lib.ci8_quads_fwd.argtypes = [i, ptr, ptr, ptr, ptr, ptr, ptr, lng, lng]
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
        self.shared = {id(lib.ci8_singles_fwd), id(lib.ci8_quads_fwd)}

    def width(self, isa: str) -> int:
        return self.lib.ci8_vector_width(ISAS.index(isa))

    def run(self, args, ntasks: int, isa: str | None, fn=None):
        """``fn(isa code, *args, t0, t1)`` over the threads (``fn(*args, t0, t1)`` when ``isa`` is None); a
        function that hands its tasks out itself (``self.shared``) gets the whole range in every thread, the others
        get ranges as threads come free (:func:`caffelite.ops.native.pooled_run`: every task of these kernels
        writes its own part of the output)."""
        fn = fn or self.lib.ci8_conv_fwd
        if isa is not None:
            args = (ISAS.index(isa), *args)
        parts = max(1, min(self.threads, ntasks))
        if parts <= 1:
            rc = [fn(*args, 0, ntasks)]
        elif id(fn) in self.shared:  # each thread takes tasks from the kernel's own counter
            rc = pooled_run(fn, args, ntasks, parts, parts, shared=True)
        else:
            rc = pooled_run(fn, args, ntasks, parts)
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
    hb, wq = g.phase_extent(h, w, ho, wo)
    s, wb = g.sw, wq * g.sw
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


def pack_input4(q, group: int, g: ConvGeometry, ho: int, wo: int):
    """``q`` (N, C, H, W) integers in 0..255 -> int32 lanes of four uint8 channels (N, G*Q, Hp, S, Wq) for the
    u8 x s8 kernel (layout as :func:`pack_input`, four channels per lane); returns (array, Hp, Wq, Q)."""
    n, c, h, w = q.shape
    cg = c // group
    nq = (cg + 3) // 4
    hb, wq = g.phase_extent(h, w, ho, wo)
    s = g.sw
    qc = np.ascontiguousarray(q, np.int16)
    packed = np.empty((n, group * nq, hb, s, wq), np.int32)
    _LIB.run((qc.ctypes.data, group, cg, h, w, nq, hb, s, wq, g.ph, g.pw, packed.ctypes.data), n * group * nq,
             None, _LIB.lib.ci8_pack4)
    return packed, hb, wq, nq


def _pack_lanes(w, group: int, mb: int, lanes: int, dtype):
    """(Cout, Cg, kh, kw) integers -> int32 words of ``lanes`` input channels each (``dtype`` per channel),
    laid out (G, nmb, Cg/lanes, kh, kw, MB); zero past each group's channels."""
    cout, cg, kh, kw = w.shape
    mg = cout // group
    nmb = -(-mg // mb)
    nw = -(-cg // lanes)
    full = np.zeros((group, nmb * mb, lanes * nw, kh, kw), dtype)
    full[:, :mg, :cg] = w.reshape(group, mg, cg, kh, kw)
    # (g, nmb, mb, nw, lanes, kh, kw) -> (g, nmb, nw, kh, kw, mb, lanes)
    t = full.reshape(group, nmb, mb, nw, lanes, kh, kw).transpose(0, 1, 3, 5, 6, 2, 4)
    return np.ascontiguousarray(t).view(np.int32).reshape(group, nmb, nw, kh, kw, mb)


def pack_weights4(w, group: int, mb: int):
    """(Cout, Cg, kh, kw) integers in -128..127 -> int32 lanes of four int8 channels (G, nmb, Q, kh, kw, MB)."""
    return _pack_lanes(w, group, mb, 4, np.int8)


def pack_weights(w, group: int, mb: int):
    """(Cout, Cg, kh, kw) integers -> int32 pairs (G, nmb, P, kh, kw, MB), zero past each group's channels."""
    return _pack_lanes(w, group, mb, 2, np.int16)


class _Sparse(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("off", ctypes.c_void_p), ("w", ctypes.c_void_p)]


class _Pairs(ctypes.Structure):
    _fields_ = [("kptr", ctypes.c_void_p), ("off", ctypes.c_void_p), ("w", ctypes.c_void_p), ("nkb", ctypes.c_long),
                ("pstride", ctypes.c_long), ("next", ctypes.c_void_p), ("acc_off", ctypes.c_void_p),
                ("s_off", ctypes.c_long), ("pk", ctypes.c_void_p), ("pk_ps", ctypes.c_long), ("pk_row", ctypes.c_long),
                ("pk_off", ctypes.c_long)]


#: instruction sets of the paired-singles sparse kernel (cint8_singles.h), its pixels per vector and the most
#: output channels of one task (SS_MAXBG there)
SINGLES_ISAS = ("avx512bw", "vnni")
SINGLES_WIDTH = 32
SINGLES_MAX_CHANNELS = 32


def plane_stride16(hp: int, s: int, wq: int, itemsize: int = 2) -> int:
    """Elements (of ``itemsize`` bytes) from one plane of :func:`pack_input16`'s layout to the next: the plane
    rounded up to whole 64-byte lines, an odd number of them, so that the rows of successive planes fall in
    different L1 sets."""
    per = 64 // itemsize
    lines = -(-hp * s * wq // per)
    return per * (lines + 1 - lines % 2)


def planar_buffers(shape, group: int, g: ConvGeometry, ho: int, wo: int, sums: bool, bufs: dict, u8: bool,
                   zero: bool = False):
    """The planar input buffers of a convolution taking input ``shape`` (:func:`pack_input16`'s layout), kept in
    the caller's dict ``bufs`` and reused from call to call (large fresh arrays cost page faults, and their release
    as much again): (planes (N, C, pstride), group sums (N, G, Hp, S, Wq) int32 or None, Hp, Wq, pstride).
    ``zero``: planes made now start zeroed (a producer then writes their inside only)."""
    n, c, h, w = shape
    hb, wq = g.phase_extent(h, w, ho, wo)
    size = 1 if u8 else 2
    ps = plane_stride16(hb, g.sw, wq, size)
    key = (n, c, hb, wq, ps, group, g.sw, size)
    if bufs.get("key") != key:
        bufs.clear()
        bufs["key"] = key
    packed = bufs.get("x")
    if packed is None:
        packed = bufs["x"] = (np.zeros if zero else np.empty)((n, c, ps), np.uint8 if u8 else np.int16)
    gsum = bufs.get("gsum") if sums else None
    if sums and gsum is None:
        gsum = bufs["gsum"] = np.empty((n, group, hb, g.sw, wq), np.int32)
    return packed, gsum, hb, wq, ps


def planar_sums(packed, gsum, group: int):
    """The group sums ``gsum`` (N, G, Hp, S, Wq) of planes ``packed`` (N, C, pstride) (int16, or uint8)."""
    n, c, ps = packed.shape
    plane = int(np.prod(gsum.shape[2:]))
    want = 4 * _LIB.threads
    blk = 16 * -(-plane // (16 * max(1, -(-want // (n * group)))))  # positions per task, whole 64-byte lines
    _LIB.run((packed.ctypes.data, int(packed.dtype == np.uint8), c // group, plane, ps, blk, gsum.ctypes.data),
             n * group * -(-plane // blk), None, _LIB.lib.ci8_planar_sums)


def pack_input16(q, group: int, g: ConvGeometry, ho: int, wo: int, sums: bool = True, bufs=None, u8: bool = False,
                 off: int = 0):
    """``q`` (N, C, H, W) integers -> the planar int16 input of the paired-singles sparse kernel
    (N, C, pstride) with planes (Hp, S, Wq) (:func:`plane_stride16`): zero padded, columns split into stride
    phases; and with ``sums`` its group sums (N, G, Hp, S, Wq) int32 (else None). ``u8``: uint8 planes (the
    sparse quads kernel's input; ``q + off`` must lie in 0..255, the padding is ``off`` and the group sums are
    those of the planes: ``off`` 128 takes signed 8-bit ``q``). ``bufs``: the caller's dict of buffers
    (:func:`planar_buffers`). Returns (array, group sums, Hp, Wq, pstride)."""
    if off and not u8:
        raise ValueError("pack_input16: an input offset needs the uint8 planes")
    n, c, h, w = q.shape
    qc = np.ascontiguousarray(q, np.int16)
    packed, gsum, hb, wq, ps = planar_buffers(q.shape, group, g, ho, wo, sums, {} if bufs is None else bufs, u8)
    # tasks: whole planes (no two threads write one cache line), split into row blocks only as far as it takes for
    # four tasks per thread
    want = 4 * _LIB.threads
    rows = hb if n * c >= want else -(-hb // -(-want // (n * c)))
    _LIB.run((qc.ctypes.data, h, w, hb, g.sw, wq, g.ph, g.pw, ps, rows, *((off,) if u8 else ()), packed.ctypes.data),
             n * c * -(-hb // rows), None, _LIB.lib.ci8_pack8 if u8 else _LIB.lib.ci8_pack16)
    if gsum is not None:
        planar_sums(packed, gsum, group)
    return packed, gsum, hb, wq, ps


def group_nonzeros(key, off, wv, nslots: int, size: int, dtype):
    """Nonzero weights grouped ``size`` by ``size`` within slots, for the sparse singles/quads kernels: ``key``
    (ascending) the slot of each weight, ``off`` its input offset, ``wv`` its value; the last group of a slot
    may be short, its missing weights zero and reading the group's first input again. Returns (ptr (nslots + 1)
    int64: slot k's groups are [ptr[k], ptr[k+1]), offsets (groups, size) int32, weights (groups, size))."""
    cnt = np.bincount(key, minlength=nslots)
    ptr = np.zeros(nslots + 1, np.int64)
    np.cumsum(-(-cnt // size), out=ptr[1:])
    rank = np.arange(key.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    slot = np.repeat(ptr[:-1], cnt) + rank // size
    lane = rank % size
    offs = np.empty((int(ptr[-1]), size), np.int32)
    ws = np.zeros((int(ptr[-1]), size), dtype)
    offs[:] = off[lane == 0][:, None]  # every group's first weight (its lane 0) fills the lanes it lacks
    offs[slot, lane] = off
    ws[slot, lane] = wv
    return ptr, offs, ws


def _singles_chunking(p: _Geom, n: int, threads: int, row_bytes: int) -> int:
    """Tasks of the paired-singles kernel: ``p.bg`` output channels (at most SINGLES_MAX_CHANNELS, and one group's
    at most: a task writing many channels of several groups ran slower on jsegnet21v2's conv1b) by ``p.rg``
    output rows, the rows' input (``row_bytes`` per input row, all channels) kept within CHUNK_INPUT_BYTES * 2."""
    p.bg = max(1, min(p.Cout, SINGLES_MAX_CHANNELS, p.Mg if p.G > 1 else p.Cout))
    rows_in = max(1, 2 * CHUNK_INPUT_BYTES // max(1, row_bytes))
    p.rg = max(1, min(p.Ho, (rows_in - (p.kh - 1) * p.dh) // p.sh))
    p.rg, p.bg, tasks = split_tasks(n, p.Ho, p.rg, p.Cout, p.bg, 8 * threads)
    return tasks


def _sparse_chunking(p: _Geom, n: int, threads: int) -> int:
    p.bg = max(1, min(p.Cout, 8))
    p.rg = max(1, min(p.Ho, max(1, (64 << 10) // max(1, p.Wo * 2 * 8))))
    p.rg, p.bg, tasks = split_tasks(n, p.Ho, p.rg, p.Cout, p.bg, 4 * threads)
    return tasks


#: cache budget of one task: packed weights of its channel blocks and the input rows it reads
CHUNK_WEIGHT_BYTES = 128 << 10
CHUNK_INPUT_BYTES = 256 << 10


def _chunking(p: _Geom, n: int, threads: int, mb: int) -> int:
    nblk = p.G * p.nmb
    p.bg = max(1, min(nblk, CHUNK_WEIGHT_BYTES // max(1, p.P * p.kh * p.kw * mb * 4)))
    row_bytes = p.P * p.S * p.Wq * 4
    rows_in = max(1, CHUNK_INPUT_BYTES // max(1, row_bytes))
    p.rg = max(1, min(p.Ho, (rows_in - (p.kh - 1) * p.dh) // p.sh))
    p.rg, p.bg, tasks = split_tasks(n, p.Ho, p.rg, nblk, p.bg, 4 * threads)
    return tasks
