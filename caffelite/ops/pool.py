"""2-D MAX and AVE pooling, forward and backward, with Caffe's window rules, written once against ``xp``.

Window (ph, pw) covers rows [ph*s - p, ph*s - p + k) clipped to the image (Caffe's PoolingLayer). MAX
never picks a padding cell (we pad with -inf) and keeps the FIRST maximum in row-major order (strict
``>`` as Caffe); the argmax is recorded as the flat index h*W + w in the channel (Caffe's mask). AVE
divides by the window size clipped to [-p, H + p) before clipping to the image (Caffe's rule), so padding
cells count but cells beyond the padded border (CEIL's partial windows) do not.

The loops run over kernel offsets only (k*k whole-array operations). Windows that tile the input (k == s,
no padding) take a faster route (:func:`_tiled_max`): the window rows are reduced first, as whole contiguous
image rows, then the columns; for inputs larger than the cache the 2x2 argmax and its backward compare whole
image rows too, against the pooled values (or top diffs) repeated twice along the row (:func:`_repeat2`).
Blocks of rows keep the scratch in cache. The maxima are the same values (only the sign of a zero maximum
can differ, as ``maximum`` is taken in another order; -0.0 == 0.0) and the argmax and gradients are
identical.

MAX forward without the argmax runs in a compiled kernel (:func:`caffelite.ops.native_glue.max_pool`) for
float32 NumPy arrays when it is loaded; it takes the maxima in the order of the path it replaces, bitwise.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..kernels import on_gpu
from ..kernels import pool as kpool
from . import native_glue
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
    :func:`offsets_to_mask`). On CuPy arrays the named kernel ``max_pool_fwd`` (:mod:`caffelite.kernels.pool`)
    runs instead of the body below."""
    xp = get_array_module(x)
    if on_gpu(x):
        return _gpu_max_pool_forward(xp, x, k, s, p, ho, wo, out, argmax_out)
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
    if argmax_out is None and native_glue.usable(x, out):
        # the compiled kernel: the same maxima in the same order as the NumPy paths below, bitwise
        return native_glue.max_pool(x, k, s, p, ho, wo, out, _tiles(k, s, p, h, w, ho, wo))
    if _tiles(k, s, p, h, w, ho, wo):
        if argmax_out is None:
            return _tiled_max(x, k, out)
        if tuple(k) == (2, 2) and _repeatable(x, argmax_out) and _streaming(x):
            return _tiled_max_argmax_2x2(x, out, argmax_out)
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


# -- windows tiling the input (k == s, no padding) -----------------------------------------------------
#: scratch elements per block of rows on the CPU (a few hundred KB per buffer, cache-sized); one block on a GPU
_BLOCK = 1 << 18


def _row_blocks(xp, rows: int, row_elems: int):
    """(start, stop) of blocks of output rows with about _BLOCK elements of ``row_elems`` each."""
    per = rows if xp is not np else max(1, min(rows, _BLOCK // max(1, row_elems)))
    return [(y0, min(rows, y0 + per)) for y0 in range(0, rows, per)]


def _tiled_max(x, k, out):
    """MAX over windows that tile ``x`` exactly: the kh window rows are reduced as whole image rows
    (contiguous), then the kw columns of that row maximum."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    kh, kw = k
    ho = out.shape[2]
    for y0, y1 in _row_blocks(xp, ho, n * c * w):
        rows = [x[:, :, y0 * kh + i:y1 * kh:kh] for i in range(kh)]
        if kh == 1:
            mr = rows[0]
        else:
            mr = workspace("pool_rows", (n, c, y1 - y0, w), x.dtype, xp)
            xp.maximum(rows[0], rows[1], out=mr)
            for r in rows[2:]:
                xp.maximum(mr, r, out=mr)
        o = out[:, :, y0:y1]
        cols = [mr[..., j::kw] for j in range(kw)]
        if kw == 1:
            o[...] = cols[0]
            continue
        xp.maximum(cols[0], cols[1], out=o)
        for col in cols[2:]:
            xp.maximum(o, col, out=o)
    return out


#: inputs from this size on (bytes) take the blocked 2x2 argmax and backward; smaller ones stay in the last
#: level cache, where the general path's few passes over window views are as fast or faster (measured with a
#: 32 MB L3: 1.4 vs 1.6 ms at 8 MB, 6.6 vs 3.9 ms at 16 MB, 17.7 vs 7.9 ms at 32 MB)
_STREAM_BYTES = 1 << 24


def _streaming(a) -> bool:
    return get_array_module(a) is np and a.nbytes >= _STREAM_BYTES


def _repeatable(values, codes) -> bool:
    """Whether :func:`_repeat2` handles these dtypes (4-byte values, 1-byte window offsets)."""
    return values.dtype.itemsize == 4 and codes.dtype.itemsize == 1


def _repeat2(src, dst):
    """dst (..., 2m) = src (..., m) with each element repeated twice, for 1- or 4-byte elements: viewed as
    unsigned integers of twice the width, zero-extended and multiplied by 2**bits + 1, every element becomes
    two copies of itself (the same bytes whatever the byte order). One contiguous pass each, where a copy
    into every other element is a slow strided one."""
    xp = get_array_module(src)
    narrow, wide = (np.uint32, np.uint64) if src.dtype.itemsize == 4 else (np.uint8, np.uint16)
    bits = 8 * src.dtype.itemsize
    d = dst.view(wide)
    xp.copyto(d, src.view(narrow), casting="unsafe")
    xp.multiply(d, wide((1 << bits) + 1), out=d)
    return dst


def _tiled_max_argmax_2x2(x, out, argmax_out):
    """2x2 tiles: the maximum as in :func:`_tiled_max`, then the window offset that holds it, the first in
    window order (0 1 / 2 3), or 3 when none does (a NaN window), exactly like the general path.

    Both image rows of a window row are compared with the pooled values repeated twice; each window's four
    flags are weighted 1, 2 (top row) and 4, 0 (bottom: offset 3 is the default) and summed, so the two bytes
    of a window read as one 16-bit word hold code = 1*[o0] + 2*[o1] + 4*[o2] (their sum is byte-order free).
    With 8 or'ed in, the lowest set bit of the code gives the offset: low = code & -code (1, 2, 4 or 8) and
    offset = low//2 - low//8.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ho, wo = out.shape[2:]
    weights0 = xp.tile(xp.asarray([1, 2], dtype=np.uint8), wo)
    weights1 = xp.tile(xp.asarray([4, 0], dtype=np.uint8), wo)
    for y0, y1 in _row_blocks(xp, ho, n * c * w):
        r = y1 - y0
        top, bot = x[:, :, 2 * y0:2 * y1:2], x[:, :, 2 * y0 + 1:2 * y1:2]
        mr = workspace("pool_rows", (n, c, r, w), x.dtype, xp)
        xp.maximum(top, bot, out=mr)
        o = out[:, :, y0:y1]
        xp.maximum(mr[..., 0::2], mr[..., 1::2], out=o)
        up = _repeat2(o, mr)  # the row maximum is no longer needed
        f0 = workspace("pool_hit0", (n, c, r, w), np.bool_, xp)
        f1 = workspace("pool_hit1", (n, c, r, w), np.bool_, xp)
        xp.equal(top, up, out=f0)
        xp.equal(bot, up, out=f1)
        b0, b1 = f0.view(np.uint8), f1.view(np.uint8)
        xp.multiply(b0, weights0, out=b0)
        xp.multiply(b1, weights1, out=b1)
        xp.add(b0, b1, out=b0)
        pair = b0.view(np.uint16)
        code = workspace("pool_code", (n, c, r, wo), np.uint16, xp)
        low = workspace("pool_low", (n, c, r, wo), np.uint16, xp)
        xp.right_shift(pair, 8, out=code)
        xp.bitwise_and(pair, 255, out=low)
        xp.add(code, low, out=code)
        xp.bitwise_or(code, 8, out=code)
        xp.negative(code, out=low)
        xp.bitwise_and(code, low, out=low)
        xp.right_shift(low, 1, out=code)
        xp.right_shift(low, 3, out=low)
        xp.subtract(code, low, out=argmax_out[:, :, y0:y1], casting="unsafe")
    return out


def _tiled_backward_2x2(dy, argmax, dx):
    """2x2 tiles: each input row pair gets the top diffs repeated twice, masked where the window offset
    repeated twice equals the offset of that cell (0 1 / 2 3): whole contiguous rows, no strided writes."""
    xp = get_array_module(dy)
    n, c, ho, wo = dy.shape
    w = dx.shape[3]
    offsets = [xp.tile(xp.asarray([2 * i, 2 * i + 1], dtype=argmax.dtype), wo) for i in range(2)]
    for y0, y1 in _row_blocks(xp, ho, n * c * w):
        r = y1 - y0
        up = _repeat2(dy[:, :, y0:y1], workspace("pool_up", (n, c, r, w), dy.dtype, xp))
        arg = _repeat2(argmax[:, :, y0:y1], workspace("pool_arg", (n, c, r, w), argmax.dtype, xp))
        hit = workspace("pool_hit0", (n, c, r, w), np.bool_, xp)
        for i in range(2):
            xp.equal(arg, offsets[i], out=hit)
            xp.multiply(up, hit, out=dx[:, :, 2 * y0 + i:2 * y1:2])
    return dx


def _gpu_max_pool_forward(xp, x, k, s, p, ho, wo, out, argmax_out):
    """The kernel writes int32 window offsets: into ``argmax_out`` itself when that is int32 and contiguous, else
    into a scratch copied over (the layer's narrower offset type), or dropped when no argmax is wanted."""
    direct = argmax_out is not None and argmax_out.dtype == np.int32 and argmax_out.flags.c_contiguous
    arg = argmax_out if direct else workspace("pool_arg32", out.shape, np.int32, xp)
    kpool.max_pool_forward(xp.ascontiguousarray(x), k, s, p, ho, wo, out, arg)
    if argmax_out is not None and not direct:
        argmax_out[...] = arg
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
    """Assign ``dx`` (N, C, h, w): each top diff goes to its window's winner (on CuPy arrays: the named kernel
    ``max_pool_bwd``, :mod:`caffelite.kernels.pool`)."""
    xp = get_array_module(dy)
    if on_gpu(dy):
        return kpool.max_pool_backward(dy, argmax, k, s, p, h, w, dx)
    n, c, ho, wo = dy.shape
    if _tiles(k, s, p, h, w, ho, wo) and (ho == 1 and wo == 1):
        dx[...] = 0
        a = argmax.astype(np.int64)
        pos = ((a // k[1]) * w + a % k[1]).reshape(-1)
        dx.reshape(n * c, h * w)[xp.arange(n * c), pos] = dy.reshape(-1)
        return dx
    if tuple(k) == (2, 2) and _tiles(k, s, p, h, w, ho, wo) and _repeatable(dy, argmax) and _streaming(dx):
        return _tiled_backward_2x2(dy, argmax, dx)
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
