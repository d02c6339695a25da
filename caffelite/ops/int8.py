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

The ctypes side of the compiled kernel (loading, instruction sets, packings) is :mod:`caffelite.ops.int8_lib`;
the choice between the dense and the sparse kernel of a layer (:class:`AutoConv`, :func:`sparse_worthwhile`) is
:mod:`caffelite.ops.int8_auto`, its names reachable here too.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from .im2col import ConvGeometry, window_view
from .int8_lib import (_LIB, ISAS, SINGLES_ISAS, SINGLES_WIDTH, _chunking, _Epi, _Geom,  # noqa: F401
                       _Pairs, _singles_chunking, _Sparse, _sparse_chunking, available, group_nonzeros, info,
                       native_ok, pack_input, pack_input4, pack_input16, pack_weights, pack_weights4,
                       planar_buffers, planar_sums, plane_stride16, quantize_float, supported_isas)


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


def _split_sums_fit(w) -> bool:
    """Whether weights ``w`` (Cout, ...) written as 32*hi + lo (lo in 0..31) keep, on unsigned 8-bit inputs, each
    channel's sums of the hi and of the lo parts within int32 (the sparse quads kernel sums them apart)."""
    w = np.asarray(w, np.int64).reshape(len(w), -1)
    hi = np.floor_divide(w, 32)
    part = np.abs(32 * hi).sum(axis=1) + np.abs(w - 32 * hi).sum(axis=1)
    return bool(255 * int(part.max(initial=0)) < 2 ** 31)


#: the AVX-512 sparse kernels' float32 epilogue (:func:`fast_epilogue`); False keeps the double one everywhere
FAST_EPILOGUE = True


def fast_epilogue(w, rq: Requant, qmax: int):
    """The AVX-512 sparse kernels' float32 epilogue for integer weights ``w`` (Cout, ...) on inputs |q| <= ``qmax``:
    (A, B, C, thresholds) in float32 per channel, or None where it does not apply (a relu step, an offset).

    The kernel evaluates v = fma(A, acc, fma(B, s, C)) in float32 (s the window sums). Against the exact
    A*acc + B*s + C that errs by at most 2**-24 * (3|A|M + 4|B|S + 3|C|) (the roundings of acc, s, A, B, C and of
    both fmas; M bounds |acc|: qmax times the channel's sum of |w|; S bounds |s|: qmax times the weights per
    channel), and the double path fl(fl(fl(A*acc) + fl(B*s)) + C) errs by at most 2**-52 * (2|A|M + 2|B|S + |C|).
    The threshold is 0.5 less twice the first bound, rounded down: a lane nearer its nearest integer than that has
    its double value within 0.5 of the same integer, which is what the double path rounds it to (never a tie).
    The other lanes go to the double path. A channel whose threshold would be below 0.25 gets -1 (always the
    double path)."""
    if not FAST_EPILOGUE or rq.off != 0 or (rq.relu and not (rq.slope == 0 and rq.lo >= 0)):
        return None
    w = np.asarray(w, np.int64).reshape(len(w), -1)
    m = float(qmax) * np.abs(w).sum(axis=1)
    s_max = float(qmax) * w.shape[1]
    abc = [np.asarray(v, np.float64) for v in (rq.A, rq.B, rq.C)]
    with np.errstate(over="ignore", invalid="ignore"):
        f = [v.astype(np.float32) for v in abc]
        err = (3 * np.abs(abc[0]) * m + 4 * np.abs(abc[1]) * s_max + 3 * np.abs(abc[2])) * 2.0 ** -23 + 2.0 ** -40
        t = 0.5 - err
    ok = np.isfinite(t) & (t >= 0.25) & np.isfinite(f[0]) & np.isfinite(f[1]) & np.isfinite(f[2])
    t = np.where(ok, t, -1.0)
    ft = t.astype(np.float32)
    ft = np.where(ft > t, np.nextafter(ft, np.float32(-np.inf)), ft)  # rounded down
    return tuple(np.ascontiguousarray(v, np.float32) for v in (*f, ft))


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
    the sums are exact either way); :func:`sparse_worthwhile` says when it pays. On AVX-512, with output rows of
    at least 32 pixels, the sparse kernel pairs the nonzero weights themselves (``singles``; False: the channel
    pairs); on AVX-512 VNNI with ``u8_input`` and output rows of at least 64 pixels, it groups them in fours (u8 x
    s8): weights in int8, or two int8 parts of a weight (``squads``), or, for wider weights up to -4096..4095
    (jacinto's 12-bit ones), each as 32*hi + lo with a quad of hi parts and a quad of lo parts on the same inputs
    (``split``). With ``s8_input`` (inputs known to lie in -128..127) the sparse quads kernels take x + 128 instead,
    and subtract what the offset adds to each sum before the epilogue (exact in int32). One object serves one call
    at a time (it keeps per-shape tables and input buffers).
    """

    def __init__(self, w, g: ConvGeometry, group: int, rq: Requant, sparse: bool = False, u8_input: bool = False,
                 s8_input: bool = False, qmax: int | None = None):
        self.w = np.asarray(w, np.int16)
        self.g, self.group, self.rq = g, int(group), rq
        self.sparse = bool(sparse)
        # u8 x s8 (vpdpbusd, four channels / four nonzero weights per lane): inputs known to lie in 0..255,
        # weights in -128..127
        u8 = bool(u8_input) and _LIB is not None and "vnni" in _LIB.supported
        # signed 8-bit inputs: the sparse quads kernels run on x + 128 (0..255)
        s8 = not u8 and bool(s8_input) and self.sparse and _LIB is not None and "vnni" in _LIB.supported
        self.in_off = 128 if s8 else 0
        lo, hi = int(self.w.min(initial=0)), int(self.w.max(initial=0))
        self.quads = u8 and not self.sparse and lo >= -128 and hi <= 127
        # the sparse quads kernel splits a weight past int8 in two (w = clip(w) + rest, on the same input): 8-bit
        # weights centred on the zero point of a float zero span 256 values but may stray a few past -128 or 127
        self.squads = (u8 or s8) and self.sparse and lo >= -128 - 128 and hi <= 127 + 127
        # wider (jacinto's 12-bit) weights: each as 32*hi + lo, two int8 quads per group on the same inputs, while
        # the sums of |32*hi| and |lo| stay within int32 (the kernel sums them apart)
        self.split = (u8 or s8) and self.sparse and not self.squads and lo >= -4096 and hi <= 4095 and \
            _split_sums_fit(self.w)
        if self.quads:
            self.wpk = pack_weights4(self.w, self.group, _LIB.mb)
        else:
            self.wpk = pack_weights(self.w, self.group, _LIB.mb) if _LIB is not None else None
        self._abc = [np.ascontiguousarray(a, np.float64) for a in (rq.A, rq.B, rq.C)]
        self._soff = self._ss = self._ss_call = None
        # per-call constants (the requantisation is read here, once: a changed rq needs a new PackedConv)
        self._has_sum = rq.has_sum
        # the sparse kernels' float32 epilogue; |inputs| <= qmax bounds its error (default: what the flags allow)
        qmax = qmax if qmax is not None else 255 if u8_input else 128 if s8_input else 2 ** 15
        self._fast = fast_epilogue(self.w, rq, qmax) if self.sparse else None
        self._epi = None
        self._next = np.zeros(1, np.int64)  # the sparse kernels' next task, taken by whichever thread is free
        self._isa_for = {}  # output row width -> the instruction set _pick_isa chooses
        self._bufs = {}  # the paired-singles kernel's input buffers, reused from call to call
        self.singles = True  # sparse on AVX-512: the paired-singles kernel (False: the channel-pairs one)
        if self.sparse and _LIB is not None:
            # the nonzero weights (channel m, then input channel, row, column) of the paired-singles kernel
            cout, cg, kh, kw = self.w.shape
            flat = self.w.reshape(cout, -1)
            m, e = np.nonzero(flat)
            c, r = np.divmod(e.astype(np.int32), kh * kw)
            self._nz = (m.astype(np.int32), c, *np.divmod(r, kw), np.ascontiguousarray(flat[m, e]))
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
            tap = np.array(g.phase_tap_offsets(wq), np.int64)[j]
            off = ((c * hp + i * g.dh) * rowlen + tap).astype(np.int64)
            assert c.max(initial=0) < p
            self._soff = ((hp, wq), np.ascontiguousarray(off))
        return self._soff[1]

    def _tables(self, quads: bool, hp: int, wq: int, wo: int, ps: int):
        """The sparse kernel's tables (:meth:`_squads` with ``quads``, else :meth:`_singles`) for a planar input of
        ``hp`` rows and ``wq`` columns per phase, planes ``ps`` apart; cached per input shape (``self._ss``)."""
        key = ("quads" if quads else "pairs", hp, wq, wo, ps)
        if self._ss is None or self._ss[0] != key:
            self._ss = (key, (self._squads if quads else self._singles)(hp, wq, wo, ps))
        return self._ss[1]

    def _singles(self, hp: int, wq: int, wo: int, ps: int):
        """The paired-singles sparse kernel's tables: each output channel's nonzero weights in (channel, row,
        column) order, cut into input-channel blocks sized so a block's input rows for one pixel tile stay in L1,
        and paired in twos within a block (an odd one out gets a zero partner on the same input)."""
        g = self.g
        cg, kh, kw = self.w.shape[1:]
        tile = min(wo, 2 * SINGLES_WIDTH) + (kw - 1) * g.dw
        kb = max(1, min(cg, SINGLES_BLOCK_BYTES // (2 * kh * tile * (2 if wo < 2 * SINGLES_WIDTH else 1))))
        return self._group_tables(hp, wq, ps, kb, 2, np.int16)

    def _group_tables(self, hp: int, wq: int, ps: int, kb: int, size: int, dtype, nz=None):
        """Each output channel's nonzero weights (``nz``, default all of them: (m, c, i, j, w) sorted) grouped
        ``size`` by ``size`` within blocks of ``kb`` input channels (:func:`group_nonzeros`), offsets into planes
        ``ps`` apart of ``hp`` rows and ``wq`` columns per phase: (kptr, offsets, the groups' weights as int32,
        number of blocks)."""
        g = self.g
        cout, cg, kh, kw = self.w.shape
        nkb = -(-cg // kb)
        m, c, i, j, wv = self._nz if nz is None else nz
        taps = np.array(g.phase_tap_offsets(wq), np.int64)
        off = c.astype(np.int64) * ps + i.astype(np.int64) * (g.dh * g.sw * wq) + taps[j]
        if off.size and int(off.max()) >= 2 ** 31:
            raise ValueError("integer convolution: input too large for the sparse kernel's offsets")
        key = m.astype(np.int64) * nkb + c // kb  # ascending: the nonzeros are sorted by (m, c, i, j)
        kptr, offs, ws = group_nonzeros(key, off, wv, cout * nkb, size, dtype)
        return kptr, offs, np.ascontiguousarray(ws).view(np.int32).reshape(-1), nkb

    def _squads(self, hp: int, wq: int, wo: int, ps: int):
        """The sparse quads kernel's tables (as :meth:`_singles`, four int8 weights a group, uint8 planes)."""
        g = self.g
        cg, kh, kw = self.w.shape[1:]
        tile = min(wo, 2 * SQUADS_WIDTH) + (kw - 1) * g.dw  # bytes of one tile row
        kb = max(1, min(cg, SINGLES_BLOCK_BYTES // (kh * tile * (2 if wo < 2 * SQUADS_WIDTH else 1))))
        m, c, i, j, wv = self._nz
        if self.split:
            hi = np.floor_divide(wv, 32)
            t_hi, t_lo = (self._group_tables(hp, wq, ps, kb, 4, np.int8, (m, c, i, j, v)) for v in (hi, wv - 32 * hi))
            assert np.array_equal(t_hi[0], t_lo[0]) and np.array_equal(t_hi[1], t_lo[1])  # the same groups
            return (t_hi[0], t_hi[1], np.ascontiguousarray(np.stack([t_hi[2], t_lo[2]], axis=1).reshape(-1)),
                    t_hi[3])
        part = np.clip(wv, -128, 127)
        twice = np.flatnonzero(part != wv)  # past int8: a second entry right after, same input, the rest
        at = np.arange(wv.size) + np.searchsorted(twice, np.arange(wv.size))
        nz = [np.repeat(a, np.where(part != wv, 2, 1)) for a in (m, c, i, j)]
        w8 = np.repeat(part, np.where(part != wv, 2, 1))
        w8[at[twice] + 1] = wv[twice] - part[twice]
        return self._group_tables(hp, wq, ps, kb, 4, np.int8, (*nz, w8))

    def _singles_call(self, shape, has_sum: bool, quads: bool = False):
        """The paired-singles (or, ``quads``, the sparse quads) kernel's geometry, tables and task chunking for
        input ``shape`` (cached)."""
        key = (tuple(shape), has_sum, _LIB.threads, quads)
        if self._ss_call is None or self._ss_call[0] != key:
            n, c, h, w = shape
            g, cout = self.g, self.w.shape[0]
            ho, wo = g.out_shape(h, w)
            hp, wq = g.phase_extent(h, w, ho, wo)  # pack_input16's extent
            size = 1 if quads else 2
            ps = plane_stride16(hp, g.sw, wq, size)
            kptr, offs, ws, nkb = self._tables(quads, hp, wq, wo, ps)
            geom = _Geom(N=n, G=self.group, P=c // self.group, Hp=hp, S=g.sw, Wq=wq, Cout=cout,
                         Mg=cout // self.group, nmb=1, kh=g.kh, kw=g.kw, sh=g.sh, dh=g.dh, Ho=ho, Wo=wo,
                         has_sum=int(has_sum))
            geom.tap_off[:g.kw] = g.phase_tap_offsets(wq)
            sp = _Pairs(kptr.ctypes.data, offs.ctypes.data, ws.ctypes.data, nkb, ps, self._next.ctypes.data)
            if quads and self.in_off:  # what x + in_off adds to each channel's sums and to each window sum
                self._acc_off = np.ascontiguousarray(
                    self.in_off * self.w.reshape(cout, -1).astype(np.int64).sum(axis=1), np.int32)
                sp.acc_off = self._acc_off.ctypes.data
                sp.s_off = self.in_off * (c // self.group) * g.kh * g.kw
            ntasks = _singles_chunking(geom, n, _LIB.threads, c * g.sw * wq * size)
            self._ss_call = (key, geom, sp, ntasks)
        return self._ss_call[1:]

    def _uses_singles(self, isa: str | None, wo: int) -> bool:
        # (the planar packing takes column strides up to 8)
        return self.sparse and self.singles and isa in SINGLES_ISAS and wo >= SINGLES_WIDTH and self.g.sw <= 8

    def _uses_squads(self, isa: str | None, wo: int) -> bool:
        return (self.squads or self.split) and self.singles and isa == "vnni" and wo >= SQUADS_WIDTH

    def prepare(self, shape, isa: str | None = None) -> bool:
        """Build what :meth:`forward` caches per input shape (the sparse kernel's tables and input buffers, their
        pages touched), so that a timed call measures the kernel only. Returns whether the call will run the
        paired-singles kernel."""
        isa = self._pick_isa(shape, isa)
        ho, wo = self.g.out_shape(*shape[2:])
        if not self._uses_singles(isa, wo):
            return False
        quads = self._uses_squads(isa, wo)
        self._singles_call(shape, self._has_sum, quads)
        pack_input16(np.zeros(shape, np.int16), self.group, self.g, ho, wo, self._has_sum, self._bufs, quads,
                     self.in_off if quads else 0)
        return True

    def _forward_singles(self, q, isa: str, out, pack_into=None):
        """The sparse forward through the paired-singles kernel (AVX-512, output rows of >= 32 pixels), or the
        sparse quads one (VNNI, u8 x s8, output rows of >= 64 pixels); ``pack_into``: see :meth:`forward`."""
        has_sum = self._has_sum
        quads = self._uses_squads(isa, self.g.out_shape(*q.shape[2:])[1])
        geom, sp, ntasks = self._singles_call(q.shape, has_sum, quads)
        xs, gsum, hp, wq, ps = pack_input16(q, self.group, self.g, geom.Ho, geom.Wo, has_sum, self._bufs, quads,
                                            self.in_off if quads else 0)
        assert (hp, wq, ps) == (geom.Hp, geom.Wq, sp.pstride)
        return self._run_singles(xs, gsum, geom, sp, ntasks, quads, isa, out, pack_into)

    def _run_singles(self, xs, gsum, geom, sp, ntasks, quads, isa, out, pack_into):
        e = self._epilogue()
        if pack_into is None and out is None:
            out = np.empty((geom.N, self.w.shape[0], geom.Ho, geom.Wo), np.int16)
        self._next[0] = 0  # tasks are taken from here by whichever thread is free (same integers)
        if pack_into is not None:
            planes, sp.pk_ps, sp.pk_row, sp.pk_off = pack_into
            sp.pk = planes.ctypes.data
        args = (xs.ctypes.data, None if gsum is None else gsum.ctypes.data, ctypes.byref(sp), ctypes.byref(e),
                None if out is None else out.ctypes.data, ctypes.byref(geom))
        try:
            if quads:
                _LIB.run((int(self.split), *args), ntasks, None, _LIB.lib.ci8_quads_fwd)
            else:
                _LIB.run(args, ntasks, isa, _LIB.lib.ci8_singles_fwd)
        finally:
            sp.pk = None
        return out

    def packed_input(self, shape, isa: str | None = None):
        """Where the convolution before this one may write this one's input directly: (planes (N, C, pstride)
        uint8, pstride, row length, offset of input pixel (0, 0) in a plane) when input ``shape`` runs the sparse
        quads kernel as it is (no offset) with column stride 1; else None. The planes' padding is zero and stays
        so (the producer writes their inside only). Then :meth:`forward_prepacked` runs on them."""
        isa = self._pick_isa(shape, isa)
        ho, wo = self.g.out_shape(*shape[2:])
        if isa is None or not native_ok(self.g, wo, isa) or not self._uses_squads(isa, wo) or self.in_off or \
                self.g.sw != 1:
            return None
        planes, _, hp, wq, ps = planar_buffers(shape, self.group, self.g, ho, wo, self._has_sum, self._bufs, True,
                                               zero=True)
        return planes, ps, wq, self.g.ph * wq + self.g.pw

    def forward_prepacked(self, shape, isa: str | None = None, out=None, pack_into=None):
        """int16 output of the input (N, C, H, W) ``shape`` a producer wrote into :meth:`packed_input`'s planes
        (``pack_into``: as for :meth:`forward`)."""
        isa = self._pick_isa(shape, isa)
        geom, sp, ntasks = self._singles_call(shape, self._has_sum, True)
        xs, gsum, hp, wq, ps = planar_buffers(shape, self.group, self.g, geom.Ho, geom.Wo, self._has_sum,
                                              self._bufs, True)
        if gsum is not None:
            planar_sums(xs, gsum, self.group)
        return self._run_singles(xs, gsum, geom, sp, ntasks, True, isa, out, pack_into)

    def _epilogue(self) -> _Epi:
        """The kernels' view of the requantisation (:class:`Requant`), built on first use."""
        if self._epi is not None:
            return self._epi
        rq = self.rq
        fast = self._fast or (None,) * 4
        self._epi = _Epi(self._abc[0].ctypes.data, self._abc[1].ctypes.data, self._abc[2].ctypes.data, int(rq.relu),
                         int(rq.ties == "away"), float(rq.slope), float(rq.off), float(rq.lo), float(rq.hi),
                         *(None if v is None else v.ctypes.data for v in fast), int(self._fast is not None))
        return self._epi

    def _pick_isa(self, shape, isa: str | None):
        if isa is None and _LIB is not None:  # the widest instruction set whose vectors fit the output rows
            wo = self.g.out_shape(*shape[2:])[1]
            key = (wo, tuple(_LIB.supported))
            if key not in self._isa_for:
                fits = [s for s in _LIB.supported if _LIB.width(s) <= wo]
                self._isa_for[key] = fits[-1] if fits else None
            isa = self._isa_for[key]
        return isa

    def forward(self, q, isa: str | None = None, out=None, pack_into=None):
        """int16 output (N, Cout, Ho, Wo) of integer input ``q`` (N, C, H, W). ``pack_into`` (the next
        convolution's :meth:`packed_input`): on the sparse kernels, the outputs (which must lie in 0..255) go there
        as uint8 instead, and this returns None; the other kernels ignore it."""
        n, c, h, w = q.shape
        g = self.g
        ho, wo = g.out_shape(h, w)
        isa = self._pick_isa(q.shape, isa)
        if isa is None or not native_ok(g, wo, isa):
            return conv_int_reference(q, self.w, None, g, self.group, self.rq)
        lib = _LIB
        if self._uses_singles(isa, wo):
            return self._forward_singles(q, isa, out, pack_into)
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
                     kh=g.kh, kw=g.kw, sh=g.sh, dh=g.dh, Ho=ho, Wo=wo, has_sum=int(self._has_sum))
        geom.tap_off[:g.kw] = g.phase_tap_offsets(wq)
        gsum = None
        if self._has_sum:
            gsum = np.empty((n, self.group, hp, g.sw, wq), np.int32)
            if quads:
                lib.run((xs.ctypes.data, gsum.ctypes.data, ctypes.byref(geom)), n * self.group, None,
                        lib.lib.ci8_group_sums4)
            else:
                lib.run((xs.ctypes.data, gsum.ctypes.data, ctypes.byref(geom)), n * self.group, isa,
                        lib.lib.ci8_group_sums)
        e = self._epilogue()
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


#: L1 budget of the paired-singles kernel's input block (one pixel tile's rows of a block of input channels)
SINGLES_BLOCK_BYTES = 16 << 10
#: pixels per vector of the sparse quads kernel (cint8_quads.h): its output rows must be at least this wide
SQUADS_WIDTH = 64


def conv_int(q, w, g: ConvGeometry, group: int, rq: Requant, isa: str | None = None, sparse: bool = False):
    """One-shot integer convolution (packs the weights each call; the engine keeps a :class:`PackedConv`)."""
    return PackedConv(w, g, group, rq, sparse).forward(q, isa)


#: names of :mod:`caffelite.ops.int8_auto` (the dense/sparse choice), reachable here too
_AUTO_NAMES = frozenset(("AutoConv", "sparse_worthwhile", "nonzero_pair_fraction", "AUTO_MARGIN", "SINGLES_FAVOUR",
                         "QUADS_MAX_NONZERO", "SINGLES_MAX_NONZERO", "SPARSE_MAX_NONZERO_PAIRS"))


def __getattr__(name):
    # loaded on first use: int8_auto builds PackedConvs, so importing it from here at load time would be circular
    if name in _AUTO_NAMES:
        from . import int8_auto
        return getattr(int8_auto, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
