"""im2col / col2im as CUDA kernels, run by :mod:`caffelite.ops.im2col` on CuPy arrays; the reference is the
generic ``xp`` body there.

Layouts are the generic body's: columns (N, C, kh, kw, Ho, Wo) contiguous, Caffe's row order. col2im gathers:
one thread per image pixel sums the column entries that read it, in the generic body's (kh, kw) order, so
no atomics are needed and the sum order is the reference's.
"""

from __future__ import annotations

import numpy as np

from ..backend import cupy_module
from . import kernel

__all__ = ["im2col", "col2im", "IM2COL_SRC", "COL2IM_SRC"]

_GEOM = "int32 C, int32 H, int32 W, int32 KH, int32 KW, int32 SH, int32 SW, int32 PH, int32 PW, " \
        "int32 DH, int32 DW, int32 HO, int32 WO"

#: one thread per column element (n, c, ki, kj, ho, wo)
IM2COL_SRC = """
    long long t = i;
    const int wo = t % WO; t /= WO;
    const int ho = t % HO; t /= HO;
    const int kj = t % KW; t /= KW;
    const int ki = t % KH; t /= KH;
    const long long nc = t;                       // n * C + c
    const int y = ho * SH - PH + ki * DH;
    const int x = wo * SW - PW + kj * DW;
    col = (y >= 0 && y < H && x >= 0 && x < W) ? img[(nc * H + y) * W + x] : (T)0;
"""

#: one thread per image pixel (n, c, y, x): sum of the column entries that read it
COL2IM_SRC = """
    long long t = i;
    const int x = t % W; t /= W;
    const int y = t % H; t /= H;
    const long long nc = t;
    T acc = 0;
    for (int ki = 0; ki < KH; ++ki) {
        const int yy = y + PH - ki * DH;          // = ho * SH when this tap reads (y, x)
        if (yy < 0 || yy % SH != 0) continue;
        const int ho = yy / SH;
        if (ho >= HO) continue;
        for (int kj = 0; kj < KW; ++kj) {
            const int xx = x + PW - kj * DW;
            if (xx < 0 || xx % SW != 0) continue;
            const int wo = xx / SW;
            if (wo >= WO) continue;
            acc += col[((((nc * KH + ki) * KW + kj) * HO + ho) * WO) + wo];
        }
    }
    img = acc;
"""


def _geom_args(g, c, h, w, ho, wo):
    return (c, h, w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, ho, wo)


def im2col(x, g, out=None):
    """Columns (N, C, kh, kw, Ho, Wo) of the C-contiguous CuPy ``x`` (N, C, H, W) for geometry ``g`` (an ops
    ConvGeometry), into ``out`` when given."""
    n, c, h, w = x.shape
    ho, wo = g.out_shape(h, w)
    if out is None:
        out = cupy_module().empty((n, c, g.kh, g.kw, ho, wo), dtype=x.dtype)
    k = kernel("im2col", "elementwise", f"raw T img, {_GEOM}", "T col", IM2COL_SRC)
    k(x, *[np.int32(v) for v in _geom_args(g, c, h, w, ho, wo)], out)
    return out


def col2im(cols, g, h, w, out=None):
    """Sum C-contiguous CuPy columns (N, C, kh, kw, Ho, Wo) back into a new (or ``out``) image (N, C, h, w)."""
    n, c, kh, kw, ho, wo = cols.shape
    if out is None:
        out = cupy_module().empty((n, c, h, w), dtype=cols.dtype)
    k = kernel("col2im", "elementwise", f"raw T col, {_GEOM}", "T img", COL2IM_SRC)
    k(cols, *[np.int32(v) for v in _geom_args(g, c, h, w, ho, wo)], out)
    return out
