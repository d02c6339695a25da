"""Depthwise (one input and one output channel per group) convolution pieces, written once against ``xp``.

jsegnet's bilinear upsampling deconvolutions are depthwise: they skip the GEMM and are computed as kh*kw
weighted shifted slices; the transposed form is computed phase by phase (see :func:`_dw_scatter`).
"""

from __future__ import annotations

from ..backend import get_array_module
from .im2col import ConvGeometry, pad_into, window_view, workspace


def is_depthwise(cin: int, cout: int, group: int) -> bool:
    """Whether a (de)convolution has one input and one output channel per group."""
    return group > 1 and cin == group and cout == group


# -- depthwise helpers (no GEMM) -----------------------------------------------------------------
def _dw_correlate(x, wk, g: ConvGeometry, ho: int, wo: int, out):
    """out[n,c] = sum_ij wk[c,i,j] * xpad[n,c, y*s + i*d, x*s + j*d] (a depthwise correlation)."""
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


def _phase_taps(r, k, s, p, d):
    """For output positions y = r + s*m: the taps t with (r + p - t*d) % s == 0 and their source offsets
    (r + p - t*d) // s (source index = m + offset)."""
    return [(t, (r + p - t * d) // s) for t in range(k) if (r + p - t * d) % s == 0]


def _dw_scatter(src, wk, g: ConvGeometry, h: int, w: int, out):
    """The adjoint of :func:`_dw_correlate`: out (N,C,h,w) = sum_ij shifted (wk[c,i,j] * src).

    Computed phase by phase (output rows/columns congruent mod the stride): each phase is a plain sum of
    shifted, weighted source slices written once, instead of read-modify-write adds into a zeroed buffer.
    """
    xp = get_array_module(src)
    n, c, hs, ws = src.shape
    phases_h = [_phase_taps(r, g.kh, g.sh, g.ph, g.dh) for r in range(g.sh)]
    phases_w = [_phase_taps(r, g.kw, g.sw, g.pw, g.dw) for r in range(g.sw)]
    offs_h = [o for ph in phases_h for _, o in ph] or [0]
    offs_w = [o for pw in phases_w for _, o in pw] or [0]
    lo_h, lo_w = max(0, -min(offs_h)), max(0, -min(offs_w))
    mh, mw = -(-h // g.sh), -(-w // g.sw)  # largest phase extent
    hb = max(hs + lo_h, mh + max(offs_h) + lo_h)
    wb = max(ws + lo_w, mw + max(offs_w) + lo_w)
    spad = pad_into(src, lo_h, lo_w, hb, wb)
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


def _dw_weight_grad(x, dy, g: ConvGeometry, dwk):
    """dwk[c,i,j] += sum_{n,y,x} xpad[n,c, y*s + i*d, x*s + j*d] * dy[n,c,y,x]."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ho, wo = dy.shape[2:]
    hb, wb = g.padded_extent(h, w, ho, wo)
    view = window_view(pad_into(x, g.ph, g.pw, hb, wb), g, ho, wo)
    tmp = workspace("dw_tmp", dy.shape, dy.dtype, xp)
    for i in range(g.kh):
        for j in range(g.kw):
            xp.multiply(view[:, :, i, j], dy, out=tmp)
            dwk[:, i, j] += tmp.sum(axis=(0, 2, 3))
