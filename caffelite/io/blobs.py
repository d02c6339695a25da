"""BlobProto <-> numpy conversion (the value/shape rules of Caffe's ``Blob::FromProto`` / ``ToProto``).

Reading follows caffe-jacinto 0.17 (spec docs/jacinto-spec.md §h): the shape comes from the legacy
num/channels/height/width when any of them is present, else from ``shape.dim``; the values come from
``double_data`` if non-empty, else ``data``, else ``raw_data`` interpreted by ``raw_data_type``
(FLOAT, FLOAT16 or DOUBLE). Nothing loops over floats in Python: values go through ``np.frombuffer`` and
the protobuf runtime's buffer support. The declared element count is checked against the data length
(and against a sanity limit) before anything of that size is allocated.
"""

from __future__ import annotations

import numpy as np

from ..errors import FileFormatError
from ..proto import caffe_pb2

#: Caffe's Type enum values used for raw_data (docs/jacinto-spec.md §h: DOUBLE 0, FLOAT 1, FLOAT16 2)
RAW_DTYPES = {0: np.dtype("<f8"), 1: np.dtype("<f4"), 2: np.dtype("<f2")}
#: refuse shapes with more elements than this (2**34 floats = 64 GiB): surely corrupt, never allocatable
MAX_ELEMENTS = 1 << 34


def has_field(blob, name) -> bool:
    """``blob.HasField(name)``, False for a field its dialect's BlobProto lacks (BVLC has no ``raw_data``)."""
    return name in blob.DESCRIPTOR.fields_by_name and blob.HasField(name)


def blob_shape(blob, where=None) -> tuple[int, ...]:
    """The declared shape of a BlobProto (legacy 4-D dims if any is present, else ``shape.dim``)."""
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width"):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    check_shape(shape, where)
    return shape


def check_shape(shape, where=None) -> int:
    """Validate dims (non-negative, element count within :data:`MAX_ELEMENTS`) and return the count."""
    count = 1
    for d in shape:
        if d < 0:
            raise FileFormatError(where, f"blob has a negative dimension in shape {list(shape)}")
        count *= int(d)
        if count > MAX_ELEMENTS:
            raise FileFormatError(where, f"blob shape {list(shape)} has too many elements to fit in memory")
    return count


def check_blob(blob, where=None) -> int:
    """Validate a BlobProto's declared shape against its stored data length without decoding it.

    Returns the element count. Raises FileFormatError for negative/huge shapes or a length mismatch.
    """
    count = check_shape(blob_shape(blob, where), where)
    for name in ("double_data", "data"):
        n = len(getattr(blob, name))
        if n:
            if n != count:
                raise FileFormatError(where, f"blob declares {count} elements but {name} has {n}")
            return count
    if has_field(blob, "raw_data"):
        dt = RAW_DTYPES.get(blob.raw_data_type)
        if dt is None:
            raise FileFormatError(where, f"unsupported raw_data_type {blob.raw_data_type}")
        if len(blob.raw_data) != count * dt.itemsize:
            raise FileFormatError(where, f"blob declares {count} elements but raw_data holds "
                                         f"{len(blob.raw_data)} bytes ({dt.itemsize} each)")
    elif count:
        raise FileFormatError(where, f"blob declares {count} elements but holds no data")
    return count


def _values(blob, count, where):
    """The flat values of ``blob`` as a numpy array (any float dtype), after checking the length."""
    n = len(blob.double_data)
    if n:
        if n != count:
            raise FileFormatError(where, f"blob declares {count} elements but double_data has {n}")
        return np.asarray(blob.double_data, dtype=np.float64)
    n = len(blob.data)
    if n:
        if n != count:
            raise FileFormatError(where, f"blob declares {count} elements but data has {n}")
        return np.asarray(blob.data, dtype=np.float32)
    if has_field(blob, "raw_data"):
        dt = RAW_DTYPES.get(blob.raw_data_type)
        if dt is None:
            name = caffe_pb2.Type.values_by_number.get(blob.raw_data_type)
            raise FileFormatError(where, f"unsupported raw_data_type {name.name if name else blob.raw_data_type}")
        raw = blob.raw_data
        if len(raw) != count * dt.itemsize:
            raise FileFormatError(
                where, f"blob declares {count} elements but raw_data holds {len(raw)} bytes ({dt.itemsize} each)")
        return np.frombuffer(raw, dtype=dt)
    if count:
        raise FileFormatError(where, f"blob declares {count} elements but holds no data")
    return np.zeros(0, np.float32)


def blob_to_array(blob, shape=None, where=None) -> np.ndarray:
    """Return the values of a BlobProto as a float32 array of its declared shape (or ``shape``).

    ``shape``, when given, must have the same element count as the declared one (Caffe copies a blob into
    a target of equal count, matching legacy 4-D dims right-aligned); the result has that shape.
    ``where`` names the blob in error messages (e.g. ``"net.caffemodel: layer 'conv1' blob 0"``).
    """
    declared = blob_shape(blob, where)
    count = check_shape(declared, where)
    if shape is not None:
        shape = tuple(int(d) for d in shape)
        if check_shape(shape, where) != count:
            raise FileFormatError(where, f"blob shape {list(declared)} does not match expected {list(shape)}")
    else:
        shape = declared
    vals = _values(blob, count, where)
    return np.array(vals, dtype=np.float32, copy=vals.dtype != np.float32 or not vals.flags.writeable) \
        .reshape(shape)


def blob_diff_to_array(blob, where=None) -> np.ndarray | None:
    """The diff of a BlobProto (``double_diff``/``diff``/``raw_diff``) as float32, or None if absent."""
    count = check_shape(blob_shape(blob, where), where)
    if len(blob.double_diff):
        vals = np.asarray(blob.double_diff, dtype=np.float64)
    elif len(blob.diff):
        vals = np.asarray(blob.diff, dtype=np.float32)
    elif has_field(blob, "raw_diff"):
        dt = RAW_DTYPES.get(blob.raw_diff_type)
        if dt is None:
            raise FileFormatError(where, f"unsupported raw_diff_type {blob.raw_diff_type}")
        vals = np.frombuffer(blob.raw_diff, dtype=dt)
    else:
        return None
    if vals.size != count:
        raise FileFormatError(where, f"blob declares {count} elements but its diff has {vals.size}")
    return vals.astype(np.float32).reshape(blob_shape(blob, where))


def varint(n: int) -> bytes:
    """Encode a non-negative int as a protobuf varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def payload_chunks(field_number: int, arr) -> list:
    """Wire chunks of a length-delimited field holding ``arr``'s bytes (a packed repeated field or raw
    bytes): tag, length, and a view of the array's memory (nothing copied)."""
    mv = memoryview(np.ascontiguousarray(arr)).cast("B")
    return [varint(field_number << 3 | 2), varint(mv.nbytes), mv]


def packed_floats_field(field_number: int, arr: np.ndarray) -> list:
    """Wire chunks of a packed repeated float field holding ``arr`` (little-endian float32)."""
    return payload_chunks(field_number, np.ascontiguousarray(arr, dtype="<f4").reshape(-1))


def array_to_blob(arr, form: str = "jacinto", diff=None, pb=caffe_pb2):
    """Build a BlobProto from an array.

    ``form="jacinto"``: ``shape`` + ``raw_data_type: FLOAT`` + ``raw_data`` (little-endian float32), exactly
    what caffe-jacinto's ``Blob::ToProto`` writes (docs/jacinto-spec.md §h); ``diff`` likewise in raw_diff.
    ``form="bvlc"``: ``shape`` + packed ``data`` (and ``diff``), what BVLC Caffe writes and reads.
    ``pb`` is the dialect namespace whose BlobProto class to build (BlobProto is wire-identical in all).
    """
    a = np.ascontiguousarray(np.asarray(arr), dtype="<f4")
    b = pb.BlobProto()
    b.shape.dim.extend(int(d) for d in a.shape)
    if form == "jacinto":
        b.raw_data_type = caffe_pb2.FLOAT
        b.raw_data = a.tobytes()
        if diff is not None:
            b.raw_diff_type = caffe_pb2.FLOAT
            b.raw_diff = np.ascontiguousarray(diff, dtype="<f4").tobytes()
    elif form == "bvlc":
        # build the packed field on the wire and let the C parser fill it: extend() is ~100x slower
        chunks = packed_floats_field(5, a)
        if diff is not None:
            chunks += packed_floats_field(6, np.asarray(diff))
        b.MergeFromString(b"".join(chunks))
    else:
        raise ValueError(f"unknown blob form {form!r} (expected 'jacinto' or 'bvlc')")
    return b


def convert_blob_form(blob, form: str, where=None):
    """Rewrite a BlobProto in place to ``form`` ("jacinto" raw FLOAT or "bvlc" packed data), keeping its
    declared shape fields (legacy 4-D dims stay, as BVLC's upgrade_net_proto_binary keeps them)."""
    if form == "jacinto" and has_field(blob, "raw_data") and blob.raw_data_type == caffe_pb2.FLOAT \
            and not len(blob.data) and not len(blob.double_data):
        return blob
    if form == "bvlc" and not has_field(blob, "raw_data") and not len(blob.double_data) \
            and not has_field(blob, "raw_diff") and not len(blob.double_diff):
        return blob
    vals = blob_to_array(blob, where=where).reshape(-1)
    d = blob_diff_to_array(blob, where=where)
    for f in ("data", "diff", "double_data", "double_diff", "raw_data", "raw_diff", "raw_data_type",
              "raw_diff_type"):
        blob.ClearField(f)
    if form == "jacinto":
        blob.raw_data_type = caffe_pb2.FLOAT
        blob.raw_data = vals.astype("<f4").tobytes()
        if d is not None:
            blob.raw_diff_type = caffe_pb2.FLOAT
            blob.raw_diff = d.astype("<f4").tobytes()
    elif form == "bvlc":
        chunks = packed_floats_field(5, vals)
        if d is not None:
            chunks += packed_floats_field(6, d)
        blob.MergeFromString(b"".join(chunks))
    else:
        raise ValueError(f"unknown blob form {form!r} (expected 'jacinto' or 'bvlc')")
    return blob
