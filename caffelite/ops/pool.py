"""2-D MAX and AVE pooling, forward and backward, with Caffe's window rules, written once against ``xp``.

Window (ph, pw) covers rows [ph*s - p, ph*s - p + k) clipped to the image (Caffe's PoolingLayer). MAX
never picks a padding cell (we pad with -inf) and keeps the FIRST maximum in row-major order (strict
``>`` as Caffe); the argmax is recorded as the flat index h*W + w in the channel (Caffe's mask). AVE
divides by the window size clipped to [-p, H + p) before clipping to the image (Caffe's rule), so padding
cells count but cells beyond the padded border (CEIL's partial windows) do not.

The loops run over kernel offsets only (k*k whole-array operations); k == s (non-overlapping) windows
of MAX use a reshape instead.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .im2col import ConvGeometry, pad_into, window_view, workspace


def pooled_size(size: int, k: int, s: int, p: int, ceil_mode: bool = True) -> int:
    """Caffe's pooled size: ceil (or floor) of (size + 2p - k)/s, plus one, minus the last window if it
    would start inside the bottom/right padding (only possible when p > 0)."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def _geometry(k, s, p):
    return ConvGeometry(kh=k[0], kw=k[1], sh=s[0], sw=s[1], ph=p[0], pw=p[1])


def _tiles(k, s, p, h, w, ho, wo) -> bool:
    """True when the windows are disjoint and tile the unpadded input exactly (global pooling included)."""
    return (p[0] == 0 and p[1] == 0 and h == ho * k[0] and w == wo * k[1]
            and (k[0] == s[0] or ho == 1) and (k[1] == s[1] or wo == 1))


def max_pool_forward(x, k, s, p, ho, wo, out, argmax_out=None):
    """MAX pooling of x (N, C, H, W) into ``out`` (N, C, ho, wo). When ``argmax_out`` (integer, same shape;
    see :func:`argmax_dtype`) is given it receives each window's winning offset index i*kw + j (see
    :func:`offsets_to_mask`)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    if _tiles(k, s, p, h, w, ho, wo) and (ho == 1 and wo == 1):
        # global pooling: one reduction over the whole plane
        flat = x.reshape(n, c, h * w)
        if argmax_out is None:
            xp.max(flat, axis=2, out=out.reshape(n, c))
            return out
        arg = flat.argmax(axis=2)
        out.reshape(n, c)[...] = xp.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
        argmax_out.reshape(n, c)[...] = (arg // w) * k[1] + arg % w
        return out
    g = _geometry(k, s, p)
    hb, wb = g.padded_extent(h, w, ho, wo)
    # padding cells can never win: they hold -inf
    view = window_view(pad_into(x, p[0], p[1], hb, wb, fill=-np.inf, slot="pool_pad"), g, ho, wo)
    out[...] = view[:, :, 0, 0]
    for i in range(k[0]):
        for j in range(k[1]):
            if i or j:
                xp.maximum(out, view[:, :, i, j], out=out)
    if argmax_out is not None:
        # the FIRST maximum in row-major window order wins (Caffe's strict '>'): mark offsets in reverse
        # (arithmetic instead of a masked copy: ties are common after a ReLU and masked copies branch)
        hit = workspace("pool_mask", out.shape, np.bool_, xp)
        step = workspace("pool_step", out.shape, argmax_out.dtype, xp)
        last = k[0] * k[1] - 1
        argmax_out[...] = last
        for o in range(last - 1, -1, -1):
            xp.equal(view[:, :, o // k[1], o % k[1]], out, out=hit)
            xp.subtract(argmax_out, o, out=step)       # >= 1: offsets only decrease in this loop
            xp.multiply(step, hit.view(np.uint8), out=step)
            xp.subtract(argmax_out, step, out=argmax_out)
    return out


def argmax_dtype(k):
    """The narrowest integer type for window offsets 0..k_h*k_w-1 (less memory traffic in backward)."""
    return np.uint8 if k[0] * k[1] <= 255 else np.int32


def offsets_to_mask(argmax, k, s, p, h, w):
    """Caffe's mask (flat index h*W + w of the winner in its channel) from window offset indices."""
    xp = get_array_module(argmax)
    ho, wo = argmax.shape[-2:]
    a = argmax.astype(np.int64)
    i, j = a // k[1], a % k[1]
    ys = (xp.arange(ho) * s[0] - p[0]).reshape(ho, 1)
    xs = (xp.arange(wo) * s[1] - p[1]).reshape(1, wo)
    return (ys + i) * w + (xs + j)


def _scatter_target(dx, k, s, p, h, w, ho, wo, xp):
    """The buffer window offsets add into: ``dx`` itself when no window leaves the image, else a padded scratch."""
    g = _geometry(k, s, p)
    hb, wb = g.padded_extent(h, w, ho, wo)
    if p[0] == 0 and p[1] == 0 and hb == h and wb == w:
        dx[...] = 0
        return dx
    buf = workspace("col2im", dx.shape[:2] + (hb, wb), dx.dtype, xp)
    buf[...] = 0
    return buf


def max_pool_backward(dy, argmax, k, s, p, h, w, dx):
    """Assign ``dx`` (N, C, h, w): each top diff goes to its window's winner."""
    xp = get_array_module(dy)
    n, c, ho, wo = dy.shape
    if _tiles(k, s, p, h, w, ho, wo) and (ho == 1 and wo == 1):
        dx[...] = 0
        a = argmax.astype(np.int64)
        pos = ((a // k[1]) * w + a % k[1]).reshape(-1)
        dx.reshape(n * c, h * w)[xp.arange(n * c), pos] = dy.reshape(-1)
        return dx
    hit = workspace("pool_mask", dy.shape, np.bool_, xp)
    if p[0] == 0 and p[1] == 0 and tuple(k) == tuple(s) and h == ho * k[0] and w == wo * k[1]:
        # disjoint windows tiling the input: every input cell gets exactly one product, no accumulation
        for i in range(k[0]):
            for j in range(k[1]):
                xp.equal(argmax, i * k[1] + j, out=hit)
                xp.multiply(dy, hit, out=dx[:, :, i::s[0], j::s[1]])
        return dx
    buf = _scatter_target(dx, k, s, p, h, w, ho, wo, xp)
    tmp = workspace("pool_tmp", dy.shape, dy.dtype, xp)
    ey, ex = s[0] * (ho - 1) + 1, s[1] * (wo - 1) + 1
    for i in range(k[0]):
        for j in range(k[1]):
            xp.equal(argmax, i * k[1] + j, out=hit)
            xp.multiply(dy, hit, out=tmp)
            buf[:, :, i:i + ey:s[0], j:j + ex:s[1]] += tmp
    if buf is not dx:
        dx[...] = buf[:, :, p[0]:p[0] + h, p[1]:p[1] + w]
    return dx


def ave_divisor(size, k, s, p, out_size, xp, dtype):
    """Per-output divisor along one axis: min(start + k, size + p) - start with start = o*s - p."""
    start = xp.arange(out_size) * s - p
    return (xp.minimum(start + k, size + p) - start).astype(dtype)


def ave_pool_forward(x, k, s, p, ho, wo, out):
    """AVE pooling of x (N, C, H, W) into ``out`` (N, C, ho, wo) with Caffe's divisor."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    if _tiles(k, s, p, h, w, ho, wo):
        xp.sum(x.reshape(n, c, ho, k[0], wo, k[1]), axis=(3, 5), out=out)
        out /= k[0] * k[1]
        return out
    g = _geometry(k, s, p)
    hb, wb = g.padded_extent(h, w, ho, wo)
    view = window_view(pad_into(x, p[0], p[1], hb, wb, fill=0.0, slot="pool_pad"), g, ho, wo)
    out[...] = view[:, :, 0, 0]
    for i in range(k[0]):
        for j in range(k[1]):
            if i or j:
                out += view[:, :, i, j]
    div = ave_divisor(h, k[0], s[0], p[0], ho, xp, x.dtype).reshape(ho, 1) * \
        ave_divisor(w, k[1], s[1], p[1], wo, xp, x.dtype).reshape(1, wo)
    out /= div
    return out


def ave_pool_backward(dy, k, s, p, h, w, dx):
    """Assign ``dx``: each top diff / divisor spread over its window (padding cells dropped)."""
    xp = get_array_module(dy)
    n, c, ho, wo = dy.shape
    g = _geometry(k, s, p)
    hb, wb = g.padded_extent(h, w, ho, wo)
    div = ave_divisor(h, k[0], s[0], p[0], ho, xp, dy.dtype).reshape(ho, 1) * \
        ave_divisor(w, k[1], s[1], p[1], wo, xp, dy.dtype).reshape(1, wo)
    share = workspace("pool_tmp", dy.shape, dy.dtype, xp)
    xp.divide(dy, div, out=share)
    if _tiles(k, s, p, h, w, ho, wo):
        dx.reshape(n, c, ho, k[0], wo, k[1])[...] = share.reshape(n, c, ho, 1, wo, 1)
        return dx
    buf = _scatter_target(dx, k, s, p, h, w, ho, wo, xp)
    ey, ex = s[0] * (ho - 1) + 1, s[1] * (wo - 1) + 1
    for i in range(k[0]):
        for j in range(k[1]):
            buf[:, :, i:i + ey:s[0], j:j + ex:s[1]] += share
    if buf is not dx:
        dx[...] = buf[:, :, p[0]:p[0] + h, p[1]:p[1] + w]
    return dx
