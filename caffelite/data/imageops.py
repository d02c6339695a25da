"""Image resizing as the Caffe tools do it, vectorised with NumPy on C×H×W arrays.

* :func:`resize_linear`: OpenCV's ``cv::resize(INTER_LINEAR)`` for uint8 (used by convert_imageset and
  ImageData): 11-bit fixed-point coefficients, the SIMD vertical pass's rounding, and OpenCV's switch to
  area averaging for an exact 2× downscale.
* :func:`resize_nearest_pil`: PIL's NEAREST (pixel centres), which infer_segmentation.py uses to resize
  predictions back (§g.3).
* :func:`resize_lanczos_pil`: PIL's LANCZOS (ANTIALIAS), used on input images before inference (§g.3).
"""

from __future__ import annotations

import numpy as np

__all__ = ["resize_linear", "resize_nearest_pil", "resize_lanczos_pil"]

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def _linear_taps(src: int, dst: int, clamp_weights: bool):
    """Source indices and the two fixed-point weights per destination index (OpenCV's rules).

    Columns outside the image get their weights clamped (fx = 0); rows keep their weights and only the
    row index is clipped, which matters because the vertical pass rounds each product separately.
    """
    scale = src / dst
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s).astype(np.float32)
    if clamp_weights:
        low = s < 0
        f[low], s[low] = 0, 0
        high = s >= src - 1
        f[high], s[high] = 0, src - 1
    w1 = np.rint(f * _COEF_SCALE).astype(np.int64)  # saturate_cast<short>: round half to even
    w0 = np.rint((np.float32(1) - f) * _COEF_SCALE).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def resize_linear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize a uint8 C×H×W (or H×W) array to ``out_h × out_w`` like OpenCV INTER_LINEAR."""
    squeeze = a.ndim == 2
    if squeeze:
        a = a[None]
    c, h, w = a.shape
    if (h, w) == (out_h, out_w):
        out = a.copy()
    elif h == 2 * out_h and w == 2 * out_w:
        # OpenCV uses INTER_AREA for an exact 2x downscale: mean of 2x2 blocks, rounded
        blk = a.astype(np.int32).reshape(c, out_h, 2, out_w, 2).sum(axis=(2, 4))
        out = ((blk + 2) >> 2).astype(np.uint8)
    else:
        xs0, xs1, xw0, xw1 = _linear_taps(w, out_w, True)
        ys0, ys1, yw0, yw1 = _linear_taps(h, out_h, False)
        ai = a.astype(np.int32)
        # horizontal pass: int sums with 11-bit weights
        hor = ai[:, :, xs0] * xw0 + ai[:, :, xs1] * xw1  # C x H x out_w
        r0 = hor[:, ys0, :] >> 4
        r1 = hor[:, ys1, :] >> 4
        # vertical pass as OpenCV's SIMD path: 16-bit high multiplies, then (+2) >> 2
        v = ((r0 * yw0[None, :, None]) >> 16) + ((r1 * yw1[None, :, None]) >> 16)
        out = np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)
    return out[0] if squeeze else out


def _pil_resize(a: np.ndarray, out_h: int, out_w: int, resample) -> np.ndarray:
    from PIL import Image

    squeeze = a.ndim == 2
    chw = a[None] if squeeze else a
    if chw.dtype != np.uint8:
        mode = "I" if np.issubdtype(chw.dtype, np.integer) else "F"
        chw = chw.astype(np.int32 if mode == "I" else np.float32)
    else:
        mode = "L"
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(p), mode).resize((out_w, out_h), resample))
              for p in chw]  # one call per channel plane, not per pixel
    out = np.stack(planes).astype(a.dtype, copy=False)
    return out[0] if squeeze else out


def resize_nearest_pil(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PIL NEAREST resize of a C×H×W or H×W array (label maps, predictions)."""
    if a.shape[-2:] == (out_h, out_w):
        return a.copy()
    h, w = a.shape[-2:]
    # PIL samples the source pixel under each destination pixel centre
    ys = np.minimum(((np.arange(out_h) + 0.5) * (h / out_h)).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(out_w) + 0.5) * (w / out_w)).astype(np.int64), w - 1)
    return a[..., ys[:, None], xs[None, :]]


def resize_lanczos_pil(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PIL LANCZOS (ANTIALIAS) resize of a uint8 C×H×W array, channel by channel."""
    from PIL import Image

    if a.shape[-2:] == (out_h, out_w):
        return a.copy()
    return _pil_resize(a, out_h, out_w, Image.LANCZOS)
