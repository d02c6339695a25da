"""Depthwise (one input and one output channel per group) convolution pieces, written once against ``xp``.

jsegnet's bilinear upsampling deconvolutions are depthwise: they skip the GEMM and are computed as kh*kw
weighted shifted slices; the transposed form is computed phase by phase (see :func:`_dw_scatter`).

Both directions work on "flat rows": the zero-padded input of each (n, c) plane is one long row
(``pad.reshape(N*C, Hb*Wb)``), so a kernel tap is a plain slice of it and every pass is a 2-D operation whose
inner loops run over whole blocks of image rows, not over one short image row at a time (NumPy's cost per
inner loop dominates at these sizes). Outputs are computed on the padded grid (width ``Wb``; the few columns
past the real width are scratch and never copied out), a block of rows at a time so the accumulator stays in
cache. The arithmetic is the same, tap for tap and in the same order, as the plain sums the docstrings give,
so results are bitwise the same as the straightforward per-tap loops.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from . import native_glue
from .im2col import ConvGeometry, pad_into, window_view, workspace


def is_depthwise(cin: int, cout: int, group: int) -> bool:
    """Whether a (de)convolution has one input and one output channel per group."""
    return group > 1 and cin == group and cout == group


#: scratch elements per block of output rows on the CPU (accumulator and product each; about 1-2 MB), and the
#: shortest flat row worth a NumPy inner loop; measured best on a 2-core machine with 1 MB of L2 per core. On a
#: GPU every pass covers the whole image at once.
_BLOCK = 1 << 18
_MIN_SPAN = 2048


def _rows_per_block(xp, rows: int, width: int, row_elems: int, scale: int = 1) -> int:
    """Output rows per block: about ``scale * _BLOCK`` scratch elements (``row_elems`` per row) but flat spans
    of at least _MIN_SPAN elements (``width`` per row); blocks of equal size."""
    if xp is not np:
        return rows
    block = scale * _BLOCK
    per = max(1, -(-_MIN_SPAN // max(1, width)), block // max(1, row_elems))
    nblocks = -(-rows // per)
    return -(-rows // nblocks)


def _strided(xp, flat, offset: int, shape, strides_elems):
    """A view of the 1-D array ``flat`` starting at ``offset`` with the given shape and strides (in elements)."""
    isz = flat.itemsize
    return xp.lib.stride_tricks.as_strided(flat[offset:], shape, tuple(s * isz for s in strides_elems))


def _per_plane(xp, wcols, n: int):
    """Per-channel weights (..., C) repeated for every item: a contiguous (..., N*C, 1) array."""
    lead, c = wcols.shape[:-1], wcols.shape[-1]
    full = xp.broadcast_to(wcols.reshape(lead + (1, c)), lead + (n, c))
    return xp.ascontiguousarray(full).reshape(lead + (n * c, 1))


# -- depthwise correlation -------------------------------------------------------------------------
def _phase_planes(x, g: ConvGeometry, ho: int, wo: int):
    """The zero-padded input split by stride phase: (planes, hq, wq) with planes (sh, sw, N, C, hq, wq) and
    planes[a, b] = xpad[..., a::sh, b::sw], so window tap (i, j) is the stride-1 slice of plane
    ((i*dh) % sh, (j*dw) % sw) starting at ((i*dh) // sh, (j*dw) // sw). The padded extent is rounded up
    to a multiple of the stride, plus one more row of phases so that flat spans running past the last real
    column of a plane stay inside it (and read zeros or real data, never uninitialized memory)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    sh, sw = g.sh, g.sw
    hb, wb = g.padded_extent(h, w, ho, wo)
    hq, wq = -(-hb // sh) + 1, -(-wb // sw)
    planes = workspace("dw_phases", (sh, sw, n, c, hq, wq), x.dtype, xp)
    for a in range(sh):
        # plane rows r hold padded row r*sh + a, i.e. input row r*sh + a - ph: rows [r0, r1) are real
        r0 = -(-(g.ph - a) // sh) if g.ph > a else 0
        r1 = max(r0, -(-(h + g.ph - a) // sh))
        for b in range(sw):
            q0 = -(-(g.pw - b) // sw) if g.pw > b else 0
            q1 = max(q0, -(-(w + g.pw - b) // sw))
            dst = planes[a, b]
            dst[:, :, :r0] = 0
            dst[:, :, r1:] = 0
            dst[:, :, r0:r1, :q0] = 0
            dst[:, :, r0:r1, q1:] = 0
            dst[:, :, r0:r1, q0:q1] = x[:, :, r0 * sh + a - g.ph::sh, q0 * sw + b - g.pw::sw]
    return planes, hq, wq


def _tap_origin(g: ConvGeometry, i: int, j: int):
    """(phase a, phase b, row offset, column offset) of window tap (i, j) in :func:`_phase_planes`."""
    oi, a = divmod(i * g.dh, g.sh)
    oj, b = divmod(j * g.dw, g.sw)
    return a, b, oi, oj


def _dw_correlate(x, wk, g: ConvGeometry, ho: int, wo: int, out):
    """out[n,c] = sum_ij wk[c,i,j] * xpad[n,c, y*s + i*d, x*s + j*d] (a depthwise correlation).

    Taps are summed in row-major (i, j) order: out = w00*v00, then out += wij*vij.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    if ho <= 0 or wo <= 0:
        return out
    if out.shape != (n, c, ho, wo) or not out.flags.c_contiguous:
        return _dw_correlate_views(x, wk, g, ho, wo, out)
    planes, hq, wq = _phase_planes(x, g, ho, wo)
    nc = n * c
    sh, sw = g.sh, g.sw
    planes = planes.reshape(sh, sw, nc, hq * wq)
    wflat = _per_plane(xp, wk.reshape(c, g.kh * g.kw).T, n)  # (kh*kw, N*C, 1)
    taps = []
    for i in range(g.kh):
        for j in range(g.kw):
            a, b, oi, oj = _tap_origin(g, i, j)
            taps.append((planes[a, b], oi * wq + oj, wflat[i * g.kw + j]))
    out3 = out.reshape(nc, ho, wo)
    rows = _rows_per_block(xp, ho, wq, nc * wq)
    for y0 in range(0, ho, rows):
        r = min(rows, ho - y0)
        span = r * wq
        acc = workspace("dw_acc", (nc, span), x.dtype, xp)
        tmp = workspace("dw_tmp", (nc, span), x.dtype, xp)
        p0 = y0 * wq
        for t, (plane, off, wt) in enumerate(taps):
            src = plane[:, off + p0:off + p0 + span]
            if t == 0:
                xp.multiply(src, wt, out=acc)
            else:
                xp.multiply(src, wt, out=tmp)
                xp.add(acc, tmp, out=acc)
        out3[:, y0:y0 + r] = acc.reshape(nc, r, wq)[:, :, :wo]
    return out


def _dw_correlate_views(x, wk, g: ConvGeometry, ho: int, wo: int, out):
    """The straightforward form of :func:`_dw_correlate` (one strided window view per tap)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    hb, wb = g.padded_extent(h, w, ho, wo)
    view = window_view(pad_into(x, g.ph, g.pw, hb, wb), g, ho, wo)
    tmp = workspace("dw_tmp", out.shape, out.dtype, xp)
    for i in range(g.kh):
        for j in range(g.kw):
            wij = wk[:, i, j].reshape(1, c, 1, 1)
            if i == 0 and j == 0:
                xp.multiply(view[:, :, 0, 0], wij, out=out)
            else:
                xp.multiply(view[:, :, i, j], wij, out=tmp)
                out += tmp
    return out


# -- depthwise transposed correlation --------------------------------------------------------------
def _phase_taps(r, k, s, p, d):
    """For output positions y = r + s*m: the taps t with (r + p - t*d) % s == 0 and their source offsets
    (r + p - t*d) // s (source index = m + offset)."""
    return [(t, (r + p - t * d) // s) for t in range(k) if (r + p - t * d) % s == 0]


def _linear_taps(phases):
    """(tap count, phase 0's source offsets, step) when every phase has the same number of taps and tap t of
    phase r reads offset ``offset0[t] + step*r`` with step >= 0 (kernel a multiple of the stride, the
    bilinear upsampling case); None otherwise."""
    count = len(phases[0])
    if count == 0 or any(len(ph) != count for ph in phases):
        return None
    base = [o for _, o in phases[0]]
    step = phases[1][0][1] - base[0] if len(phases) > 1 else 0
    if step < 0 or any(phases[r][t][1] != base[t] + step * r for r in range(len(phases)) for t in range(count)):
        return None
    return count, base, step


def _dw_scatter(src, wk, g: ConvGeometry, h: int, w: int, out):
    """The adjoint of :func:`_dw_correlate`: out (N,C,h,w) = sum_ij shifted (wk[c,i,j] * src).

    Computed phase by phase (output rows/columns congruent mod the stride): each phase is a plain sum of
    shifted, weighted source slices (taps in row-major order of the phase's (i, j)) written once, instead of
    read-modify-write adds into a zeroed buffer. When the phases differ only by a shift (kernel a multiple of
    the stride), tap t of every phase is one strided view of the padded source and all phases of a block of
    rows are computed together (:func:`_dw_scatter_blocks`). Float32 NumPy arrays go to the compiled kernel
    (:func:`caffelite.ops.native_glue.dw_deconv`) when it is loaded: the same sums, bitwise.
    """
    n, c, hs, ws = src.shape
    phases_h = [_phase_taps(r, g.kh, g.sh, g.ph, g.dh) for r in range(g.sh)]
    phases_w = [_phase_taps(r, g.kw, g.sw, g.pw, g.dw) for r in range(g.sw)]
    offs_h = [o for ph in phases_h for _, o in ph] or [0]
    offs_w = [o for pw in phases_w for _, o in pw] or [0]
    lo_h, lo_w = max(0, -min(offs_h)), max(0, -min(offs_w))
    mh, mw = -(-h // g.sh), -(-w // g.sw)  # largest phase extent
    hb = max(hs + lo_h, mh + max(offs_h) + lo_h)
    wb = max(ws + lo_w, mw + max(offs_w) + lo_w)
    if (h > 0 and w > 0 and out.shape == (n, c, h, w) and native_glue.usable(src, wk, out)
            and native_glue.dw_deconv_supported(phases_h, phases_w)):
        # the compiled kernel: the same taps in the same order, one pass per output row
        return native_glue.dw_deconv(src, wk, phases_h, phases_w, (g.kh, g.kw), out)
    lin_h, lin_w = _linear_taps(phases_h), _linear_taps(phases_w)
    if (lin_h and lin_w and h % g.sh == 0 and w % g.sw == 0 and h > 0 and w > 0
            and out.shape == (n, c, h, w) and out.flags.c_contiguous):
        spad = pad_into(src, lo_h, lo_w, hb, wb)
        return _dw_scatter_blocks(spad, wk, g, phases_h, phases_w, lin_h, lin_w, (lo_h, lo_w), out)
    return _dw_scatter_phases(src, wk, g, h, w, out, phases_h, phases_w, (lo_h, lo_w), (hb, wb))


def _dw_scatter_blocks(spad, wk, g, phases_h, phases_w, lin_h, lin_w, lo, out):
    """:func:`_dw_scatter` for phases that differ by a shift; ``spad`` is the padded source (N, C, hb, wb).

    acc[ry, rx, plane, m*wb + q] accumulates output (m*sh + ry, q*sw + rx) of that plane; tap (th, tw) of
    every phase reads the flat padded rows at offset (lo_h + offset_h0[th] + step_h*ry)*wb + (lo_w +
    offset_w0[tw] + step_w*rx): one 4-D strided view, so the sh*sw phases are one pass per tap.
    """
    xp = get_array_module(spad)
    n, c, hb, wb = spad.shape
    sh, sw = g.sh, g.sw
    (cnt_h, base_h, step_h), (cnt_w, base_w, step_w) = lin_h, lin_w
    mh, mw = out.shape[2] // sh, out.shape[3] // sw
    nc = n * c
    flat = spad.reshape(-1)
    span_all = (mh - 1) * wb + mw  # the last flat position any phase reads, plus one
    taps = []
    for th in range(cnt_h):
        for tw in range(cnt_w):
            # kernel taps (i, j) of this term in each phase, and their per-channel weights (sh, sw, N*C, 1)
            ij = [phases_h[ry][th][0] * g.kw + phases_w[rx][tw][0] for ry in range(sh) for rx in range(sw)]
            wts = _per_plane(xp, wk.reshape(c, g.kh * g.kw)[:, ij].T.reshape(sh, sw, c), n)
            start = (lo[0] + base_h[th]) * wb + lo[1] + base_w[tw]
            view = _strided(xp, flat, start, (sh, sw, nc, span_all), (step_h * wb, step_w, hb * wb, 1))
            taps.append((view, wts))
    # out[plane, m*sh + ry, q*sw + rx] seen as [ry, rx, plane, m, q]
    out5 = out.reshape(nc, mh, sh, mw, sw).transpose(2, 4, 0, 1, 3)
    rows = _rows_per_block(xp, mh, wb, sh * sw * nc * wb, scale=2)
    for m0 in range(0, mh, rows):
        r = min(rows, mh - m0)
        p0 = m0 * wb
        span = min(r * wb, span_all - p0)  # the last block stops at the last real column
        acc = workspace("dw_acc", (sh, sw, nc, r * wb), spad.dtype, xp)
        tmp = workspace("dw_tmp", (sh, sw, nc, r * wb), spad.dtype, xp)
        whole = span == r * wb
        a, t_ = (acc, tmp) if whole else (acc[..., :span], tmp[..., :span])
        for t, (view, wts) in enumerate(taps):
            if t == 0:
                xp.multiply(view[..., p0:p0 + span], wts, out=a)
            else:
                xp.multiply(view[..., p0:p0 + span], wts, out=t_)
                xp.add(a, t_, out=a)
        a5 = acc.reshape(sh, sw, nc, r, wb)[..., :mw]
        for ry in range(sh):
            for rx in range(sw):
                out5[ry, rx, :, m0:m0 + r] = a5[ry, rx]
    return out


def _dw_scatter_phases(src, wk, g, h, w, out, phases_h, phases_w, lo, extent):
    """:func:`_dw_scatter` for any geometry: each phase summed separately from shifted slices."""
    xp = get_array_module(src)
    n, c, hs, ws = src.shape
    lo_h, lo_w = lo
    spad = pad_into(src, lo_h, lo_w, *extent)
    for ry, taps_h in enumerate(phases_h):
        my = len(range(ry, h, g.sh))
        for rx, taps_w in enumerate(phases_w):
            mx = len(range(rx, w, g.sw))
            dst = out[:, :, ry::g.sh, rx::g.sw]
            if my == 0 or mx == 0:
                continue
            if not taps_h or not taps_w:
                dst[...] = 0
                continue
            acc = workspace("dw_acc", (n, c, my, mx), src.dtype, xp)
            tmp = workspace("dw_tmp", (n, c, my, mx), src.dtype, xp)
            first = True
            for i, oy in taps_h:
                for j, ox in taps_w:
                    sl = spad[:, :, lo_h + oy:lo_h + oy + my, lo_w + ox:lo_w + ox + mx]
                    wij = wk[:, i, j].reshape(1, c, 1, 1)
                    if first:
                        xp.multiply(sl, wij, out=acc)
                        first = False
                    else:
                        xp.multiply(sl, wij, out=tmp)
                        acc += tmp
            dst[...] = acc
    return out


# -- weight gradient -------------------------------------------------------------------------------
def _dw_weight_grad(x, dy, g: ConvGeometry, dwk):
    """dwk[c,i,j] += sum_{n,y,x} xpad[n,c, y*s + i*d, x*s + j*d] * dy[n,c,y,x].

    With a stride the taps read the stride-phase planes (unit-stride rows) instead of a strided window view;
    the products and their sums are the same.
    """
    xp = get_array_module(x)
    ho, wo = dy.shape[2:]
    if ho <= 0 or wo <= 0:
        return
    planes, _, _ = _phase_planes(x, g, ho, wo)
    tmp = workspace("dw_tmp", dy.shape, dy.dtype, xp)
    for i in range(g.kh):
        for j in range(g.kw):
            a, b, oi, oj = _tap_origin(g, i, j)
            xp.multiply(planes[a, b, :, :, oi:oi + ho, oj:oj + wo], dy, out=tmp)
            dwk[:, i, j] += tmp.sum(axis=(0, 2, 3))
