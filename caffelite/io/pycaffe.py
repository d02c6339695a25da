"""pycaffe's ``caffe.io`` helpers: the input Transformer, image loading/resizing/oversampling, and the
BlobProto/Datum conversions, with pycaffe's names and conventions (re-exported by :mod:`caffelite.io`).

Images are float32 H×W×K arrays (RGB, values in [0, 1] from :func:`load_image`), as pycaffe's; the
:class:`Transformer` turns them into a net's K×H×W input (transpose, channel swap, raw scale, mean, input
scale) and back.
"""

from __future__ import annotations

import numpy as np

from ..data import datum as _datum
from ..proto import caffe_pb2
from .blobs import array_to_blob, blob_diff_to_array, blob_to_array

__all__ = ["Transformer", "load_image", "resize_image", "oversample", "blobproto_to_array", "array_to_blobproto",
           "arraylist_to_blobprotovector_str", "blobprotovector_str_to_arraylist", "array_to_datum",
           "datum_to_array"]


# ------------------------------------------------------------------------------------------ blobs / datums
def blobproto_to_array(blob, return_diff=False):
    """The array a BlobProto holds (its ``diff`` with ``return_diff=True``), shaped by its legacy
    num/channels/height/width or its ``shape``."""
    if return_diff:
        diff = blob_diff_to_array(blob)
        if diff is None:
            raise ValueError("blobproto_to_array: the BlobProto has no diff")
        return diff
    return blob_to_array(blob)


def array_to_blobproto(arr, diff=None):
    """A BlobProto holding ``arr`` (and ``diff``) as packed float ``data`` with ``shape``, as pycaffe writes."""
    arr = np.asarray(arr)
    if diff is not None and np.shape(diff) != arr.shape:
        raise ValueError(f"array_to_blobproto: diff shape {np.shape(diff)} differs from data shape {arr.shape}")
    return array_to_blob(arr, form="bvlc", diff=diff)


def arraylist_to_blobprotovector_str(arraylist):
    """A serialized BlobProtoVector of the arrays in ``arraylist``."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(s):
    """The list of arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(s)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A Datum of a 3-D C×H×W array: uint8 arrays go to ``data`` bytes, others to ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"array_to_datum: Incorrect array shape {arr.shape}; a Datum holds a 3-D C x H x W array")
    return _datum.array_to_datum(arr, label=label)


def datum_to_array(datum):
    """The C×H×W array of a raw Datum (uint8 ``data`` or float ``float_data``); the label is not included."""
    if datum.encoded:
        raise ValueError("datum_to_array: the Datum is encoded (image file bytes); decode it with "
                         "caffelite.data.datum.decode_image")
    return _datum.datum_to_array(datum)


# ------------------------------------------------------------------------------------------------ images
def load_image(filename, color=True):
    """Load an image as float32 H×W×3 RGB (``color=True``) or H×W×1 gray, values in [0, 1] (pycaffe's)."""
    from PIL import Image

    with Image.open(filename) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I") and not color:
            a = np.asarray(im, dtype=np.float32) / 65535.0
        else:
            a = np.asarray(im.convert("RGB" if color else "L"), dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[:, :, None]
    return a


def _linear_axis(a, axis, n_out):
    """Resize ``a`` along ``axis`` to ``n_out`` samples by linear interpolation between pixel centres."""
    n_in = a.shape[axis]
    if n_in == n_out:
        return a
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w


def resize_image(im, new_dims, interp_order=1):
    """Resize an H×W×K image to ``new_dims`` (height, width); ``interp_order`` 1 = bilinear, 0 = nearest.

    Returns float32, as pycaffe's. Any number of channels K is accepted.
    """
    im = np.asarray(im)
    if im.ndim != 3:
        raise ValueError(f"resize_image: expected an H x W x K image, got shape {im.shape}")
    h, w = (int(d) for d in new_dims[:2])
    if h <= 0 or w <= 0:
        raise ValueError(f"resize_image: new_dims must be positive, got {tuple(new_dims)}")
    a = im.astype(np.float32)
    if interp_order == 0:
        ys = np.minimum(((np.arange(h) + 0.5) * a.shape[0] / h).astype(np.int64), a.shape[0] - 1)
        xs = np.minimum(((np.arange(w) + 0.5) * a.shape[1] / w).astype(np.int64), a.shape[1] - 1)
        return np.ascontiguousarray(a[ys][:, xs])
    if interp_order != 1:
        raise ValueError(f"resize_image: interp_order must be 0 (nearest) or 1 (bilinear), got {interp_order}")
    return np.ascontiguousarray(_linear_axis(_linear_axis(a, 0, h), 1, w), dtype=np.float32)


def oversample(images, crop_dims):
    """Ten crops per H×W×K image: the four corners and the centre, then the same five mirrored left-right.

    Returns an array of shape (10 * N, crop_h, crop_w, K), the crops of each image consecutive.
    """
    images = [np.asarray(im) for im in images]
    ch, cw = (int(d) for d in crop_dims[:2])
    if not images:
        return np.empty((0, ch, cw, 0), dtype=np.float32)
    h, w = images[0].shape[:2]
    if ch > h or cw > w:
        raise ValueError(f"oversample: crop {ch}x{cw} is larger than the image {h}x{w}")
    corners = [(y, x) for y in (0, h - ch) for x in (0, w - cw)]
    corners.append((int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)))
    out = np.empty((10 * len(images), ch, cw, images[0].shape[-1]), dtype=np.float32)
    k = 0
    for im in images:
        if im.shape[:2] != (h, w):
            raise ValueError(f"oversample: all images must have one size; got {im.shape[:2]} after {(h, w)}")
        for y, x in corners:
            out[k] = im[y:y + ch, x:x + cw]
            k += 1
        out[k:k + 5] = out[k - 5:k, :, ::-1, :]
        k += 5
    return out


# ------------------------------------------------------------------------------------------- Transformer
class Transformer:
    """Prepare H×W×K images for a net's inputs, as pycaffe's ``caffe.io.Transformer``.

    ``inputs`` maps each input name to its blob shape (N, C, H, W), e.g. ``{"data": net.blobs["data"].shape}``.
    :meth:`preprocess` resizes to the input's H×W, then applies (in this order) transpose, channel swap,
    raw scale, mean subtraction and input scale; :meth:`deprocess` undoes them.
    """

    def __init__(self, inputs):
        self.inputs = {k: tuple(int(d) for d in v) for k, v in dict(inputs).items()}
        self.transpose, self.channel_swap, self.raw_scale = {}, {}, {}
        self.mean, self.input_scale = {}, {}

    def _check(self, in_):
        if in_ not in self.inputs:
            raise ValueError(f"{in_!r} is not one of the net inputs: {sorted(self.inputs)}")
        return self.inputs[in_]

    def preprocess(self, in_, data):
        """An H×W×K image (any size) -> the K×H×W float32 array input ``in_`` takes."""
        shape = self._check(in_)
        img = np.asarray(data, dtype=np.float32)
        if img.ndim != 3:
            raise ValueError(f"Transformer.preprocess({in_!r}): expected one H x W x K image, got an array of "
                             f"shape {img.shape} (input {in_!r} has shape {shape})")
        order = self.transpose.get(in_)
        chan_axis = 2 if order is None else order[0]  # the image axis that becomes the channel axis
        if len(shape) >= 2 and img.shape[chan_axis] != shape[1]:
            raise ValueError(f"Transformer.preprocess({in_!r}): the image has {img.shape[chan_axis]} channels "
                             f"(shape {img.shape}), input {in_!r} takes {shape[1]} (shape {shape})")
        if len(shape) == 4 and img.shape[:2] != shape[2:]:
            img = resize_image(img, shape[2:])
        else:
            img = img.copy()
        if order is not None:
            img = img.transpose(order)
        swap = self.channel_swap.get(in_)
        if swap is not None:
            img = img[list(swap), :, :]
        if self.raw_scale.get(in_) is not None:
            img *= self.raw_scale[in_]
        if self.mean.get(in_) is not None:
            img -= self.mean[in_]
        if self.input_scale.get(in_) is not None:
            img *= self.input_scale[in_]
        return np.ascontiguousarray(img, dtype=np.float32)

    def deprocess(self, in_, data):
        """Invert :meth:`preprocess` (except the resize): a K×H×W input (or 1×K×H×W) -> an H×W×K image."""
        self._check(in_)
        img = np.array(data, dtype=np.float32).squeeze()
        if img.ndim != 3:
            raise ValueError(f"Transformer.deprocess({in_!r}): expected one K x H x W array, got shape "
                             f"{np.shape(data)}")
        if self.input_scale.get(in_) is not None:
            img /= self.input_scale[in_]
        if self.mean.get(in_) is not None:
            img += self.mean[in_]
        if self.raw_scale.get(in_) is not None:
            img /= self.raw_scale[in_]
        swap = self.channel_swap.get(in_)
        if swap is not None:
            img = img[np.argsort(swap), :, :]
        order = self.transpose.get(in_)
        if order is not None:
            img = img.transpose(np.argsort(order))
        return img

    def set_transpose(self, in_, order):
        """Axis order applied to the image, e.g. (2, 0, 1) for H×W×K -> K×H×W."""
        shape = self._check(in_)
        if len(order) != len(shape) - 1:
            raise ValueError(f"Transpose order needs to have the same number of dimensions as the input "
                             f"(input {in_!r} has shape {shape}; order {tuple(order)})")
        self.transpose[in_] = tuple(int(i) for i in order)

    def set_channel_swap(self, in_, order):
        """Channel reordering after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        shape = self._check(in_)
        if len(order) != shape[1]:
            raise ValueError(f"Channel swap needs to have the same number of dimensions as the input channels "
                             f"(input {in_!r} has {shape[1]} channels; order {tuple(order)})")
        self.channel_swap[in_] = tuple(int(i) for i in order)

    def set_raw_scale(self, in_, scale):
        """Multiply the image by ``scale`` before the mean (e.g. 255 for [0, 1] images and a [0, 255] model)."""
        self._check(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Subtract ``mean``: one value per channel (shape (K,)) or a K×H×W (or H×W) array."""
        shape = self._check(in_)
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise ValueError(f"Mean channels incompatible with input: mean has {mean.shape[0]} values, "
                                 f"input {in_!r} has {shape[1]} channels")
            mean = mean[:, None, None]
        else:
            if mean.ndim == 2:
                mean = mean[None]
            if mean.ndim != 3:
                raise ValueError(f"Mean shape invalid: {mean.shape} (expected (K,), (H, W) or (K, H, W))")
            if mean.shape != tuple(shape[1:]):
                raise ValueError(f"Mean shape incompatible with input shape: mean {mean.shape}, input {in_!r} "
                                 f"{tuple(shape[1:])}")
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply by ``scale`` after the mean subtraction."""
        self._check(in_)
        self.input_scale[in_] = scale
