"""2-D convolution geometry, im2col and col2im, written once against ``xp``.

Column layout is Caffe's: for one image the column matrix has rows ordered (c, kh, kw) and columns
ordered (ho, wo), so ``weights.reshape(Cout, Cin*kh*kw) @ cols`` is the convolution. We build it with
one strided view of the zero-padded input and a single copy (no Python loop over pixels), and undo it
(col2im) with kh*kw vectorised slice-adds, which is much faster than a scatter (``np.add.at``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module
from ..kernels import im2col as kim
from ..kernels import on_gpu


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride, pad and dilation of a 2-D convolution (per spatial axis)."""

    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    ph: int = 0
    pw: int = 0
    dh: int = 1
    dw: int = 1

    def out_shape(self, h: int, w: int) -> tuple[int, int]:
        """Convolution output size (BVLC: floor((H + 2p - (d(k-1)+1)) / s) + 1)."""
        ho = (h + 2 * self.ph - (self.dh * (self.kh - 1) + 1)) // self.sh + 1
        wo = (w + 2 * self.pw - (self.dw * (self.kw - 1) + 1)) // self.sw + 1
        return ho, wo

    def deconv_out_shape(self, h: int, w: int) -> tuple[int, int]:
        """Deconvolution output size (BVLC: s(H-1) + d(k-1) + 1 - 2p)."""
        ho = self.sh * (h - 1) + self.dh * (self.kh - 1) + 1 - 2 * self.ph
        wo = self.sw * (w - 1) + self.dw * (self.kw - 1) + 1 - 2 * self.pw
        return ho, wo

    @property
    def is_pointwise(self) -> bool:
        """1x1 kernel, stride 1, no pad: the convolution is a plain GEMM on the input (no im2col)."""
        return (self.kh == self.kw == 1 and self.sh == self.sw == 1 and self.ph == self.pw == 0)

    def padded_extent(self, h: int, w: int, ho: int, wo: int) -> tuple[int, int]:
        """Size of a padded buffer that holds every window of a (ho, wo) output (at least the padded input)."""
        hb = max(h + 2 * self.ph, (ho - 1) * self.sh + self.dh * (self.kh - 1) + 1)
        wb = max(w + 2 * self.pw, (wo - 1) * self.sw + self.dw * (self.kw - 1) + 1)
        return hb, wb

    def phase_extent(self, h: int, w: int, ho: int, wo: int) -> tuple[int, int]:
        """(Hp, Wq) of the layout the compiled kernels read: the padded buffer (:meth:`padded_extent`) with its
        columns split into ``sw`` stride phases of ``Wq`` columns each (the width rounded up to whole phases)."""
        hb, wb = self.padded_extent(h, w, ho, wo)
        return hb, -(-wb // self.sw)

    def phase_tap_offsets(self, wq: int) -> list[int]:
        """Per kernel column j, where its first pixel lies in a phase-split row of ``sw`` phases of ``wq`` columns
        (so that every tap reads contiguous pixels)."""
        return [(j * self.dw) % self.sw * wq + (j * self.dw) // self.sw for j in range(self.kw)]


# -- scratch buffers -------------------------------------------------------------------------------
# One growable flat buffer per (slot, module, dtype), shared by every layer: columns are consumed right after
# they are built, so layers never need their own (memory stays at the largest single layer's need).
_WORK: dict = {}


def workspace(slot: str, shape, dtype, xp):
    """A scratch array of ``shape`` (contents undefined) from the shared buffer ``slot``.

    Valid until the next request of the same slot; not thread-safe (layers run one at a time).
    """
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    key = (slot, xp.__name__, dtype.str)
    buf = _WORK.get(key)
    if buf is None or buf.size < n:
        _WORK.pop(key, None)
        buf = xp.empty(max(n, 1), dtype=dtype)
        _WORK[key] = buf
    return buf[:n].reshape(shape)


def clear_workspace() -> None:
    """Release every scratch buffer (e.g. after a large reshape)."""
    _WORK.clear()


def pad_into(x, top: int, left: int, hb: int, wb: int, fill=0.0, slot: str = "pad"):
    """``x`` (N, C, H, W) copied into a (N, C, hb, wb) scratch buffer at offset (top, left); the rest = fill.

    Returns ``x`` itself when no padding is needed.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    if top == 0 and left == 0 and hb == h and wb == w:
        return x
    buf = workspace(slot, (n, c, hb, wb), x.dtype, xp)
    # only the border is refilled: the interior is overwritten by the copy below
    buf[:, :, :top, :] = fill
    buf[:, :, top + h:, :] = fill
    buf[:, :, top:top + h, :left] = fill
    buf[:, :, top:top + h, left + w:] = fill
    buf[:, :, top:top + h, left:left + w] = x
    return buf


def window_view(xpad, g: ConvGeometry, ho: int, wo: int):
    """A read-only strided view (N, C, kh, kw, ho, wo) of a padded input: element [.., i, j, y, x] is
    ``xpad[.., y*sh + i*dh, x*sw + j*dw]``."""
    xp = get_array_module(xpad)
    s = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=xpad.shape[:2] + (g.kh, g.kw, ho, wo),
        strides=(s[0], s[1], s[2] * g.dh, s[3] * g.dw, s[2] * g.sh, s[3] * g.sw))


def im2col(x, g: ConvGeometry, out=None, slot: str = "cols"):
    """Columns of ``x`` (N, C, H, W): a contiguous (N, C, kh, kw, Ho, Wo) array (Caffe's row order).

    ``out`` may be given (contiguous, that shape); otherwise the shared scratch ``slot`` is used, so the
    result is only valid until the next call that uses the same slot. On CuPy arrays the named kernel
    ``im2col`` (:mod:`caffelite.kernels.im2col`) fills it; elsewhere a copy of the strided window view.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ho, wo = g.out_shape(h, w)
    if on_gpu(x):
        if out is None:
            out = workspace(slot, (n, c, g.kh, g.kw, ho, wo), x.dtype, xp)
        return kim.im2col(xp.ascontiguousarray(x), g, out)
    hb, wb = g.padded_extent(h, w, ho, wo)
    xpad = pad_into(x, g.ph, g.pw, hb, wb)
    view = window_view(xpad, g, ho, wo)
    if out is None:
        out = workspace(slot, (n, c, g.kh, g.kw, ho, wo), x.dtype, xp)
    out[...] = view
    return out


def col2im(cols, g: ConvGeometry, h: int, w: int, out=None, accumulate: bool = False):
    """Sum columns (N, C, kh, kw, Ho, Wo) back into an image (N, C, h, w) (the adjoint of :func:`im2col`).

    Writes into ``out`` when given (adding to it when ``accumulate``), else returns a new array. On CuPy arrays
    the named kernel ``col2im`` (:mod:`caffelite.kernels.im2col`) gathers the sums; elsewhere slice-adds.
    """
    xp = get_array_module(cols)
    if on_gpu(cols):
        cols = xp.ascontiguousarray(cols)
        if out is None or not accumulate:
            return kim.col2im(cols, g, h, w, out=out)
        out += kim.col2im(cols, g, h, w)
        return out
    n, c, kh, kw, ho, wo = cols.shape
    hb, wb = g.padded_extent(h, w, ho, wo)
    buf = workspace("col2im", (n, c, hb, wb), cols.dtype, xp)
    buf[...] = 0
    ey, ex = g.sh * (ho - 1) + 1, g.sw * (wo - 1) + 1
    for i in range(kh):
        y0 = i * g.dh
        for j in range(kw):
            x0 = j * g.dw
            buf[:, :, y0:y0 + ey:g.sh, x0:x0 + ex:g.sw] += cols[:, :, i, j]
    res = buf[:, :, g.ph:g.ph + h, g.pw:g.pw + w]
    if out is None:
        return res.copy()
    if accumulate:
        out += res
    else:
        out[...] = res
    return out
