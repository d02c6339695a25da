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

The ctypes side of the compiled kernel (loading, instruction sets, packings) is :mod:`caffelite.ops.int8_lib`.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from .im2col import ConvGeometry, window_view
from .int8_lib import (_LIB, ISAS, _chunking, _Epi, _Geom, _Sparse, _sparse_chunking, available, info,  # noqa: F401
                       native_ok, pack_input, pack_input4, pack_weights, pack_weights4, quantize_float,
                       supported_isas)


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


class PackedConv:
    """A convolution's packed integer weights and epilogue, ready for repeated :meth:`forward` calls.

    ``sparse``: keep only each output channel's nonzero weight pairs and run the sparse kernel (same integers:
    the sums are exact either way); :func:`sparse_worthwhile` says when it pays.
    """

    def __init__(self, w, g: ConvGeometry, group: int, rq: Requant, sparse: bool = False, u8_input: bool = False):
        self.w = np.asarray(w, np.int16)
        self.g, self.group, self.rq = g, int(group), rq
        self.sparse = bool(sparse)
        # u8 x s8 (vpdpbusd, four channels per lane): inputs known to lie in 0..255, weights in -128..127
        self.quads = (bool(u8_input) and not self.sparse and _LIB is not None and "vnni" in _LIB.supported
                      and int(self.w.min(initial=0)) >= -128 and int(self.w.max(initial=0)) <= 127)
        if self.quads:
            self.wpk = pack_weights4(self.w, self.group, _LIB.mb)
        else:
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
        quads = self.quads and isa == "vnni"
        if quads:
            xs, hp, wq, p = pack_input4(q, self.group, g, ho, wo)
        else:
            xs, hp, wq, p = pack_input(q, self.group, g, ho, wo)
            if self.quads:  # another instruction set asked for: the pairs layout of the weights
                self.quads, self.wpk = False, pack_weights(self.w, self.group, lib.mb)
        cout = self.w.shape[0]
        mg = cout // self.group
        geom = _Geom(N=n, G=self.group, P=p, Hp=hp, S=g.sw, Wq=wq, Cout=cout, Mg=mg, nmb=-(-mg // lib.mb),
                     kh=g.kh, kw=g.kw, sh=g.sh, dh=g.dh, Ho=ho, Wo=wo, has_sum=int(self.rq.has_sum))
        for j in range(g.kw):
            geom.tap_off[j] = (j * g.dw) % g.sw * wq + (j * g.dw) // g.sw
        gsum = None
        if self.rq.has_sum:
            gsum = np.empty((n, self.group, hp, g.sw, wq), np.int32)
            if quads:
                lib.run((xs.ctypes.data, gsum.ctypes.data, ctypes.byref(geom)), n * self.group, None,
                        lib.lib.ci8_group_sums4)
            else:
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
        args = (xs.ctypes.data, gp, self.wpk.ctypes.data, ctypes.byref(e), out.ctypes.data, ctypes.byref(geom))
        if quads:
            lib.run((4, *args), ntasks, None)
        else:
            lib.run(args, ntasks, isa)
        return out


class AutoConv:
    """The dense and the sparse kernel of one convolution (same integers): the first ``trials`` calls alternate
    between them and time each; later calls run the faster (on this machine, for this layer and shape)."""

    def __init__(self, w, g: ConvGeometry, group: int, rq: Requant, trials: int = 2, times: dict | None = None,
                 u8_input: bool = False):
        self.dense = PackedConv(w, g, group, rq, u8_input=u8_input)
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


def conv_int(q, w, g: ConvGeometry, group: int, rq: Requant, isa: str | None = None, sparse: bool = False):
    """One-shot integer convolution (packs the weights each call; the engine keeps a :class:`PackedConv`)."""
    return PackedConv(w, g, group, rq, sparse).forward(q, isa)
