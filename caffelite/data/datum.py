"""Caffe's ``Datum`` record: encode and decode, raw (uint8 C×H×W, BGR) and encoded (PNG/JPEG bytes).

A raw datum stores ``channels/height/width`` and the pixel bytes in C×H×W order with colour channels in
OpenCV's BGR order (docs/jacinto-spec.md §e.2, §g.2). An encoded datum stores the image file's bytes and leaves the
dimensions at 0; it is decoded here with Pillow into the same BGR C×H×W layout (``force_color`` → 3
channels, ``force_gray`` → 1, else the file's own channel count, as Caffe's ``DecodeDatumToCVMatNative``).
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import FileFormatError
from ..proto import caffe_pb2

__all__ = ["Datum", "array_to_datum", "datum_to_array", "encode_image", "decode_image", "parse_datum",
           "rgb_to_gray", "raw_datum_view"]

Datum = caffe_pb2.Datum


def array_to_datum(arr, label=None, encoded_bytes=None) -> Datum:
    """A raw Datum from a uint8 C×H×W array (already BGR), or an encoded one from file bytes."""
    d = Datum()
    if encoded_bytes is not None:
        d.data = bytes(encoded_bytes)
        d.encoded = True
    else:
        a = np.ascontiguousarray(arr)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ValueError(f"a Datum holds a C x H x W array, got shape {a.shape}")
        d.channels, d.height, d.width = (int(s) for s in a.shape)
        d.encoded = False  # Caffe sets it explicitly, so it is serialized (byte-identical records)
        if a.dtype == np.uint8:
            d.data = a.tobytes()
        else:  # float datums use float_data (Caffe's array_to_datum for non-uint8 arrays)
            d.float_data.extend(a.astype(np.float32).ravel().tolist())
    if label is not None:
        d.label = int(label)
    return d


def parse_datum(buf, source=None) -> Datum:
    """Parse serialized Datum bytes; a FileFormatError naming ``source`` if they are not a Datum."""
    d = Datum()
    try:
        d.ParseFromString(bytes(buf))
    except Exception as e:  # protobuf raises DecodeError or RuntimeError depending on the backend
        raise FileFormatError(source, f"record is not a caffe Datum ({e})") from None
    return d


def rgb_to_gray(rgb: np.ndarray, png=False) -> np.ndarray:
    """RGB→gray as OpenCV's imread(IMREAD_GRAYSCALE) gives it.

    PNGs are converted inside libpng (``png_set_rgb_to_gray`` with 0.299/0.587: 15-bit weights
    9797/19234/3737, truncated; matches convert_imageset --gray in the fixtures bit for bit); other formats
    use OpenCV's cvtColor weights (14-bit 4899/9617/1868, rounded).
    """
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    if png:
        return ((r * 9797 + g * 19234 + b * 3737) >> 15).astype(np.uint8)
    return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14).astype(np.uint8)


def decode_image(data: bytes, force_color=False, force_gray=False, source=None) -> np.ndarray:
    """Decode PNG/JPEG bytes to a uint8 C×H×W array in BGR order (1 channel for gray images)."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(bytes(data)))
        im.load()
    except Exception as e:
        raise FileFormatError(source, f"cannot decode encoded image ({e})") from None
    if im.mode in ("L", "1", "I;16", "I", "F"):
        a = np.asarray(im.convert("L"))
        native_color = False
    else:
        a = np.asarray(im.convert("RGB"))
        native_color = True
    if force_gray and native_color:
        a, native_color = rgb_to_gray(a, png=im.format == "PNG"), False
    elif force_color and not native_color:
        a, native_color = np.repeat(a[..., None], 3, axis=2), True
    if native_color:
        return np.ascontiguousarray(a[..., ::-1].transpose(2, 0, 1))  # RGB HWC -> BGR CHW
    return np.ascontiguousarray(a[None])


def encode_image(arr_chw_bgr: np.ndarray, fmt="PNG") -> bytes:
    """Encode a uint8 C×H×W BGR (or 1×H×W gray) array as PNG/JPEG bytes."""
    from PIL import Image

    a = np.asarray(arr_chw_bgr)
    if a.shape[0] == 1:
        im = Image.fromarray(np.ascontiguousarray(a[0]), "L")
    else:
        im = Image.fromarray(np.ascontiguousarray(a[::-1].transpose(1, 2, 0)), "RGB")
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()


def datum_to_array(d: Datum, force_color=False, force_gray=False, source=None) -> np.ndarray:
    """The C×H×W array of a Datum: uint8 for raw/encoded pixel data, float32 for ``float_data``."""
    if d.encoded:
        return decode_image(d.data, force_color, force_gray, source)
    shape = (d.channels, d.height, d.width)
    n = int(np.prod(shape))
    if d.data:
        if len(d.data) != n:
            raise FileFormatError(source, f"Datum data has {len(d.data)} bytes, expected "
                                          f"{d.channels}x{d.height}x{d.width} = {n}")
        return np.frombuffer(d.data, dtype=np.uint8).reshape(shape)
    if len(d.float_data) != n:
        raise FileFormatError(source, f"Datum float_data has {len(d.float_data)} values, expected {n}")
    return np.asarray(d.float_data, dtype=np.float32).reshape(shape)


def _varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def raw_datum_view(buf):
    """Zero-copy decode of a raw uint8 Datum: ``(C×H×W uint8 view into buf, label)``, or None when the record
    is encoded, float, or unusual (then use :func:`parse_datum`).

    Walks the handful of top-level fields of the protobuf wire format instead of building a message, so a
    6 MB Cityscapes record is never copied before the crop (the protobuf path copies it twice).
    """
    mv = memoryview(buf)
    n = len(mv)
    pos = 0
    dims = [0, 0, 0]
    label = 0
    data_off = data_len = -1
    while pos < n:
        tag, pos = _varint(mv, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            val, pos = _varint(mv, pos)
            if field in (1, 2, 3):
                dims[field - 1] = val
            elif field == 5:
                label = val - (1 << 64) if val >= 1 << 63 else val
            elif field == 7 and val:
                return None  # encoded
        elif wire == 2:
            ln, pos = _varint(mv, pos)
            if field == 4:
                data_off, data_len = pos, ln
            elif field == 6:
                return None  # float_data
            pos += ln
        elif wire == 5:
            if field == 6:
                return None
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            return None
    count = dims[0] * dims[1] * dims[2]
    if data_off < 0 or data_len != count or count == 0:
        return None
    arr = np.frombuffer(mv, dtype=np.uint8, count=count, offset=data_off).reshape(dims)
    return arr, label
