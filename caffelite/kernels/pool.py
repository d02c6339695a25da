"""MAX pooling with argmax, forward and backward, as CUDA kernels, run by :mod:`caffelite.ops.pool` on CuPy
arrays; the reference is the generic ``xp`` body there.

Same rules as the generic body: window (ph, pw) covers rows [ph*s - p, ph*s - p + k) clipped to the image,
padding never wins, the FIRST maximum in row-major order wins (strict ``>``), and the recorded argmax is the
window offset ``i*kw + j`` (``ops.pool.offsets_to_mask`` turns it into Caffe's mask). The backward pass
gathers: one thread per input pixel adds the top diffs of the windows whose winner it is (no atomics).
"""

from __future__ import annotations

import numpy as np

from ..backend import cupy_module
from . import kernel

__all__ = ["max_pool_forward", "max_pool_backward", "MAX_POOL_FWD_SRC", "MAX_POOL_BWD_SRC"]

_ARGS = "int32 H, int32 W, int32 KH, int32 KW, int32 SH, int32 SW, int32 PH, int32 PW, int32 HO, int32 WO"

#: one thread per output (n, c, ho, wo)
MAX_POOL_FWD_SRC = """
    long long t = i;
    const int wo = t % WO; t /= WO;
    const int ho = t % HO; t /= HO;
    const long long nc = t;
    const int hs = ho * SH - PH, ws = wo * SW - PW;
    const int he = min(hs + KH, H), we = min(ws + KW, W);
    const T* plane = &x[nc * H * W];
    T best = 0;                                   // replaced by the window's first real cell
    int arg = 0;
    bool seen = false;                            // (no -inf constant needed: padding is never read)
    for (int yy = max(hs, 0); yy < he; ++yy) {
        for (int xx = max(ws, 0); xx < we; ++xx) {
            const T v = plane[yy * W + xx];
            if (!seen || v > best) { best = v; arg = (yy - hs) * KW + (xx - ws); seen = true; }
        }
    }
    y = best;
    argmax = arg;
"""

#: one thread per input pixel (n, c, yy, xx)
MAX_POOL_BWD_SRC = """
    long long t = i;
    const int xx = t % W; t /= W;
    const int yy = t % H; t /= H;
    const long long nc = t;
    // the windows that contain (yy, xx): ho*SH - PH <= yy < ho*SH - PH + KH
    const int h0 = (yy + PH < KH) ? 0 : (yy + PH - KH) / SH + 1;
    const int h1 = min((yy + PH) / SH + 1, HO);
    const int w0 = (xx + PW < KW) ? 0 : (xx + PW - KW) / SW + 1;
    const int w1 = min((xx + PW) / SW + 1, WO);
    T acc = 0;
    for (int ho = h0; ho < h1; ++ho) {
        for (int wo = w0; wo < w1; ++wo) {
            const long long o = (nc * HO + ho) * WO + wo;
            if (argmax[o] == (yy - (ho * SH - PH)) * KW + (xx - (wo * SW - PW))) acc += dy[o];
        }
    }
    dx = acc;
"""


def _args(k, s, p, h, w, ho, wo):
    return [np.int32(v) for v in (h, w, k[0], k[1], s[0], s[1], p[0], p[1], ho, wo)]


def max_pool_forward(x, k, s, p, ho, wo, out, argmax_out):
    """MAX pooling of the C-contiguous CuPy ``x`` (N, C, H, W) into ``out`` (N, C, ho, wo), offsets into
    ``argmax_out`` (int32)."""
    h, w = x.shape[2:]
    kern = kernel("max_pool_fwd", "elementwise", f"raw T x, {_ARGS}", "T y, int32 argmax", MAX_POOL_FWD_SRC)
    kern(x, *_args(k, s, p, h, w, ho, wo), out, argmax_out)
    return out


def max_pool_backward(dy, argmax, k, s, p, h, w, dx):
    """Assign ``dx`` (N, C, h, w, CuPy): each top diff goes to its window's winner."""
    ho, wo = dy.shape[2:]
    cp = cupy_module()
    argmax = cp.ascontiguousarray(argmax, dtype=np.int32)
    kern = kernel("max_pool_bwd", "elementwise", f"raw T dy, raw int32 argmax, {_ARGS}", "T dx", MAX_POOL_BWD_SRC)
    kern(cp.ascontiguousarray(dy), argmax, *_args(k, s, p, h, w, ho, wo), dx)
    return dx
