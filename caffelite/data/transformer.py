"""Caffe's DataTransformer for uint8 C×H×W records: crop, mirror, mean subtraction and scale
(docs/jacinto-spec.md §e.2).

``out[c, h, w'] = (data[c, h_off + h, w_off + w] - mean[c(, h_off + h, w_off + w)]) * scale`` with
``w' = crop - 1 - w`` when mirrored. Crops are random in TRAIN and centred in TEST; mirroring is random
whenever ``mirror`` is set (Caffe draws it in both phases).

Randomness is split from the heavy work so that prefetching stays deterministic: :meth:`draws` takes three
uint32 numbers per item from the layer's own generator in the planning thread (mirror, row, column, like
Caffe's three ``rand()`` calls), and :meth:`apply` turns them into offsets with ``% (H - crop + 1)`` once
the record's size is known, in any worker. ImageLabelData applies the same draws to image and label.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import FileFormatError, NetError

__all__ = ["DataTransformer", "read_mean_file"]

_UNSUPPORTED = ("img_rand_resize_lower", "img_rand_resize_upper", "rand_resize_ratio_lower",
                "rand_resize_ratio_upper", "resize_param", "noise_param", "distort_param", "expand_param",
                "emit_constraint")


def read_mean_file(path) -> np.ndarray:
    """The mean image of a ``mean.binaryproto`` (BlobProto) as float32 C×H×W."""
    try:
        from ..io import read_binaryproto  # the shared reader when it is there
    except ImportError:
        read_binaryproto = None
    if read_binaryproto is not None:
        b = read_binaryproto(path)
        arr = np.asarray(backend.to_numpy(getattr(b, "data", b)), dtype=np.float32)
    else:
        arr = _parse_blobproto(path)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise FileFormatError(path, f"mean blob must have num 1, has shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 3:
        raise FileFormatError(path, f"mean blob must be C x H x W, has shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _parse_blobproto(path) -> np.ndarray:
    from ..proto import caffe_pb2

    bp = caffe_pb2.BlobProto()
    try:
        with open(path, "rb") as f:
            bp.ParseFromString(f.read())
    except OSError:
        raise
    except Exception as e:
        raise FileFormatError(path, f"not a BlobProto ({e})") from None
    if bp.HasField("shape"):
        shape = tuple(int(d) for d in bp.shape.dim)
    else:
        shape = (bp.num, bp.channels, bp.height, bp.width)
    if len(bp.data):
        arr = np.asarray(bp.data, dtype=np.float32)
    elif len(bp.double_data):
        arr = np.asarray(bp.double_data, dtype=np.float32)
    else:
        raise FileFormatError(path, "BlobProto has no data")
    if arr.size != int(np.prod(shape)):
        raise FileFormatError(path, f"BlobProto has {arr.size} values for shape {shape}")
    return arr.reshape(shape)


class DataTransformer:
    """Crop/mirror/mean/scale of one layer, configured from a ``TransformationParameter``.

    ``owner`` names the layer in errors (a NetError factory, usually ``layer.error``).
    """

    def __init__(self, param, phase, owner=None, mean_override=None):
        self.phase = phase
        self._err = owner or (lambda m: NetError(m))
        for f in _UNSUPPORTED:
            if param.HasField(f):
                raise self._err(f"transform_param.{f} is not supported")
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        ch = param.crop_h or param.crop_size
        cw = param.crop_w or param.crop_size
        self.crop = (int(ch), int(cw)) if (ch or cw) else None
        self.force_color, self.force_gray = bool(param.force_color), bool(param.force_gray)
        if param.mean_file and len(param.mean_value):
            raise self._err("cannot specify mean_file and mean_value at the same time")
        self.mean_image = None
        self.mean_values = None
        if mean_override is not None:
            mo = np.asarray(mean_override, dtype=np.float32)
            self.mean_values = mo if mo.any() else None
        elif param.mean_file:
            self.mean_image = read_mean_file(param.mean_file)
        elif len(param.mean_value) and any(v != 0 for v in param.mean_value):
            # an all-zero mean_value (jacinto's segmentation nets) changes nothing: skip the subtraction
            self.mean_values = np.asarray(param.mean_value, dtype=np.float32)
        self._mean_count = len(param.mean_value) if mean_override is None else 0

    @property
    def needs_random(self) -> bool:
        return self.mirror or (self.crop is not None and self.phase == 0)

    def draws(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` rows of three uint32 draws (mirror, row offset, column offset); zeros when not random."""
        if not self.needs_random:
            return np.zeros((n, 3), dtype=np.uint32)
        return rng.integers(0, 2**32, size=(n, 3), dtype=np.uint32)

    def output_shape(self, record_shape) -> tuple:
        """The C×H×W shape that a record of ``record_shape`` transforms to."""
        c, h, w = record_shape
        if self.crop is not None:
            return (c, self.crop[0], self.crop[1])
        return (c, h, w)

    def offsets(self, record_shape, draw):
        """(h_off, w_off, mirror) for one record and its draws (§e.2)."""
        _, h, w = record_shape
        do_mirror = self.mirror and bool(int(draw[0]) % 2)
        if self.crop is None:
            return 0, 0, do_mirror
        ch, cw = self.crop
        if ch > h or cw > w:
            raise self._err(f"crop size {ch}x{cw} is larger than the record {h}x{w}")
        if self.phase == 0:
            return int(draw[1]) % (h - ch + 1), int(draw[2]) % (w - cw + 1), do_mirror
        return (h - ch) // 2, (w - cw) // 2, do_mirror

    def apply(self, arr: np.ndarray, draw, out: np.ndarray | None = None) -> np.ndarray:
        """Transform one C×H×W record into ``out`` (float32, allocated when None)."""
        xp = backend.get_array_module(arr)
        c, h, w = arr.shape
        h_off, w_off, do_mirror = self.offsets(arr.shape, draw)
        oh, ow = (self.crop if self.crop is not None else (h, w))
        src = arr[:, h_off:h_off + oh, w_off:w_off + ow]
        if out is None:
            out = xp.empty((c, oh, ow), dtype=xp.float32)
        if self._mean_count not in (0, 1, c):
            raise self._err(f"mean_value has {self._mean_count} values; specify 1 or {c} (one per channel)")
        mean = None
        if self.mean_image is not None:
            if self.mean_image.shape != arr.shape:
                raise self._err(f"mean_file shape {self.mean_image.shape} does not match record shape {arr.shape}")
            mean = xp.asarray(self.mean_image[:, h_off:h_off + oh, w_off:w_off + ow])
        elif self.mean_values is not None:
            mv = self.mean_values
            if mv.size != 1 and mv.size != c:
                raise self._err(f"mean_value has {mv.size} values; specify 1 or {c} (one per channel)")
            mean = xp.asarray(mv.reshape(-1, 1, 1) if mv.size == c else mv.reshape(1, 1, 1))
        if do_mirror:
            src = src[:, :, ::-1]
            if mean is not None and mean.shape[2] > 1:
                mean = mean[:, :, ::-1]
        # float32 arithmetic in Caffe's order: (pixel - mean) * scale
        if mean is not None:
            xp.subtract(src, mean, out=out, dtype=xp.float32)
        else:
            out[...] = src
        if self.scale != 1.0:
            out *= xp.float32(self.scale)
        return out

    def apply_batch(self, arrays, draws, out: np.ndarray | None = None, names=None) -> np.ndarray:
        """Transform a list of records into one N×C×H×W float32 batch (all outputs must share a shape)."""
        shape0 = self.output_shape(arrays[0].shape)
        if out is None:
            out = np.empty((len(arrays),) + shape0, dtype=np.float32)
        for i, a in enumerate(arrays):
            s = self.output_shape(a.shape)
            if s != shape0:
                who = f" ({names[i]})" if names is not None else ""
                raise self._err(f"record {i} of the batch{who} has shape {a.shape}, transforms to {s}, "
                                f"but the batch is {shape0}; set crop_size or batch_size 1")
            self.apply(a, draws[i], out[i])
        return out
