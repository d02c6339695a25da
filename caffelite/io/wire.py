"""Protobuf wire-format streaming for big caffemodels: blob payloads go straight between file and numpy.

Protobuf's Python runtime copies a 250 MB message several times (file bytes, the parsed message, the arrays
taken out of it). Here only the small parts of a NetParameter (layer options, blob shapes) go through
protobuf; blob values (``data``/``diff``/``double_*``/``raw_*`` payloads) are read with ``readinto`` into
freshly allocated arrays and written from array memory. Field order and encodings are exactly protobuf's
(fields in number order, packed repeated floats, unknown fields last), so what we write is byte-identical
to ``SerializeToString`` of the same message.
"""

from __future__ import annotations

import numpy as np

from ..errors import FileFormatError
from ..proto import caffe_pb2
from .blobs import RAW_DTYPES, check_shape, has_field, payload_chunks, varint

#: BlobProto payload fields: number -> (name, kind); kind "f4"/"f8" packed floats, "raw" bytes
PAYLOAD = {5: ("data", "f4"), 6: ("diff", "f4"), 8: ("double_data", "f8"), 9: ("double_diff", "f8"),
           12: ("raw_data", "raw"), 13: ("raw_diff", "raw")}
_NAMES = {v[0]: k for k, v in PAYLOAD.items()}


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


# ------------------------------------------------------------------------------------------------ writer
def _one_field(msg, fd, val) -> bytes:
    """Protobuf's own encoding of a single field of ``msg`` (built in a scratch message of its class)."""
    tmp = type(msg)()
    if fd.is_repeated:
        getattr(tmp, fd.name).extend(val)
    elif fd.message_type is not None:
        getattr(tmp, fd.name).CopyFrom(val)
    else:
        setattr(tmp, fd.name, val)
    return tmp.SerializePartialToString()


def unknown_field_bytes(f) -> bytes:
    """The wire bytes (tag + value) of one entry of protobuf's ``UnknownFieldSet``."""
    t = tag(f.field_number, f.wire_type)
    if f.wire_type == 0:
        return t + varint(f.data & ((1 << 64) - 1))
    if f.wire_type == 1:
        return t + int(f.data).to_bytes(8, "little")
    if f.wire_type == 5:
        return t + int(f.data).to_bytes(4, "little")
    if f.wire_type == 2:
        return t + varint(len(f.data)) + bytes(f.data)
    # groups never occur in Caffe files; protobuf would keep them, we cannot re-encode
    raise FileFormatError(None, f"cannot re-encode unknown group field {f.field_number}")


def _unknown_bytes(msg) -> list:
    from google.protobuf import unknown_fields

    return [unknown_field_bytes(f) for f in unknown_fields.UnknownFieldSet(msg)]


def encode_blob(blob, form=None) -> list:
    """Wire chunks of a BlobProto. ``form``: None keeps its encoding, "jacinto" writes raw FLOAT, "bvlc"
    writes packed ``data``/``diff`` (double_data kept as is, as BVLC writes doubles)."""
    from .blobs import blob_diff_to_array, blob_to_array

    has_raw = has_field(blob, "raw_data") or has_field(blob, "raw_diff")  # BVLC's BlobProto has no raw_*
    has_dbl = bool(len(blob.double_data) or len(blob.double_diff))
    convert = (form == "jacinto" and (len(blob.data) or has_dbl or len(blob.diff)
                                      or (has_raw and blob.raw_data_type != caffe_pb2.FLOAT))) \
        or (form == "bvlc" and has_raw)
    fields = []  # (number, chunks)
    if convert:
        vals = blob_to_array(blob).reshape(-1)
        d = blob_diff_to_array(blob)
        if form == "jacinto":
            fields.append((10, [tag(10, 0), varint(caffe_pb2.FLOAT)]))
            fields.append((12, payload_chunks(12, vals.astype("<f4", copy=False))))
            if d is not None:
                fields.append((11, [tag(11, 0), varint(caffe_pb2.FLOAT)]))
                fields.append((13, payload_chunks(13, d.reshape(-1).astype("<f4", copy=False))))
        else:
            fields.append((5, payload_chunks(5, vals.astype("<f4", copy=False))))
            if d is not None:
                fields.append((6, payload_chunks(6, d.reshape(-1).astype("<f4", copy=False))))
    for fd, val in blob.ListFields():
        if fd.number in PAYLOAD:
            if convert:
                continue
            kind = PAYLOAD[fd.number][1]
            arr = np.frombuffer(val, np.uint8) if kind == "raw" else np.asarray(val, dtype="<" + kind)
            fields.append((fd.number, payload_chunks(fd.number, arr)))
        elif convert and fd.number in (10, 11):
            continue
        else:
            fields.append((fd.number, [_one_field(blob, fd, val)]))
    fields.sort(key=lambda x: x[0])
    return [c for _, cs in fields for c in cs] + _unknown_bytes(blob)


def _nbytes(chunks) -> int:
    return sum(c.nbytes if isinstance(c, memoryview) else len(c) for c in chunks)


def encode_array_blob(arr, form="jacinto") -> list:
    """Wire chunks of the BlobProto that :func:`caffelite.io.blobs.array_to_blob` would build from ``arr``
    (or from a ``(data, diff)`` pair, diff included), streamed from the arrays' memory (no protobuf copy)."""
    arr, diff = arr if isinstance(arr, tuple) else (arr, None)
    a = np.ascontiguousarray(np.asarray(arr), dtype="<f4")
    d = None if diff is None else np.ascontiguousarray(np.asarray(diff), dtype="<f4").reshape(-1)
    shape = caffe_pb2.BlobProto()
    shape.shape.dim.extend(int(d) for d in a.shape)
    shape = shape.SerializePartialToString()
    if form == "bvlc":  # data 5, diff 6, shape 7
        return payload_chunks(5, a.reshape(-1)) + ([] if d is None else payload_chunks(6, d)) + [shape]
    # shape 7, raw_data_type 10, raw_diff_type 11, raw_data 12, raw_diff 13
    float_type = varint(caffe_pb2.FLOAT)
    return [shape, tag(10, 0), float_type] + ([] if d is None else [tag(11, 0), float_type]) \
        + payload_chunks(12, a.reshape(-1)) + ([] if d is None else payload_chunks(13, d))


def encode_layer(layer, form=None, blobs_field="blobs", arrays=None) -> list:
    """Wire chunks of a LayerParameter (or V1LayerParameter) with its blobs streamed by :func:`encode_blob`.

    ``arrays`` (a list of arrays) replaces the layer's blobs: they are encoded in ``form`` (default jacinto)
    at the blobs field's place, as if ``array_to_blob`` had filled ``layer.blobs``.
    """
    out = []
    number = layer.DESCRIPTOR.fields_by_name[blobs_field].number

    def array_blobs():
        res = []
        for a in arrays:
            chunks = encode_array_blob(a, form or "jacinto")
            res += [tag(number, 2), varint(_nbytes(chunks))] + chunks
        return res

    for fd, val in layer.ListFields():
        if arrays is not None and fd.number > number:
            out += array_blobs()
            arrays = None  # emitted once, at the blobs field's place
        if fd.name == blobs_field:
            if arrays is not None:
                continue
            for b in val:
                chunks = encode_blob(b, form)
                out += [tag(fd.number, 2), varint(_nbytes(chunks))] + chunks
        else:
            out.append(_one_field(layer, fd, val))
    if arrays is not None:
        out += array_blobs()
    return out + _unknown_bytes(layer)


def iter_net_chunks(net, form=None, arrays=None):
    """Yield the wire chunks of a NetParameter (layers and blobs streamed, nothing copied whole).

    ``arrays``: optional {layer name: [arrays]} replacing those layers' blobs (see :func:`encode_layer`).
    """
    arrays = arrays or {}
    for fd, val in net.ListFields():
        if fd.name == "layer":
            for l in val:
                chunks = encode_layer(l, form, arrays=arrays.get(l.name))
                yield tag(fd.number, 2) + varint(_nbytes(chunks))
                yield from chunks
        elif fd.name == "layers" and not any(l.HasField("layer") for l in val):  # V1; V0 (tiny) goes whole
            for l in val:
                chunks = encode_layer(l, form)
                yield tag(fd.number, 2) + varint(_nbytes(chunks))
                yield from chunks
        else:
            yield _one_field(net, fd, val)
    yield from _unknown_bytes(net)


# ------------------------------------------------------------------------------------------------ reader
class _Reader:
    """Sequential protobuf field reader over a binary file (seek/readinto, no whole-file buffer)."""

    def __init__(self, f, path, size):
        self.f, self.path, self.size = f, path, size

    def bad(self, why):
        return FileFormatError(self.path, f"not a valid caffemodel ({why})")

    def varint(self, limit) -> int:
        shift = result = 0
        while True:
            if self.f.tell() >= limit:
                raise self.bad("truncated")
            b = self.f.read(1)
            if not b:
                raise self.bad("truncated")
            result |= (b[0] & 0x7F) << shift
            if not b[0] & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise self.bad("malformed varint")

    def field(self, limit):
        """Read one field header at the current position; return (number, wire, payload_len_or_None)."""
        key = self.varint(limit)
        number, wire = key >> 3, key & 7
        if number == 0 or wire in (3, 4, 6, 7):
            raise self.bad(f"invalid field key {key}")
        if wire == 2:
            n = self.varint(limit)
            if self.f.tell() + n > limit:
                raise self.bad("truncated")
            return number, wire, n
        return number, wire, None

    def raw_field(self, start, limit) -> bytes:
        """Re-read the whole field starting at ``start`` (header included) after its header was parsed."""
        number, wire, n = self.field(limit)
        if wire == 0:
            self.varint(limit)
        elif wire in (1, 5):
            self.f.seek(8 if wire == 1 else 4, 1)
        else:
            self.f.seek(n, 1)
        end = self.f.tell()
        if end > limit:
            raise self.bad("truncated")
        self.f.seek(start)
        return self.f.read(end - start)


class LazyPayload:
    """A blob payload left in the file: ``read()`` loads it (into ``out`` when given, e.g. a Net's own blob
    memory, so a big model is never held twice). Length and dtype were checked when the file was scanned."""

    def __init__(self, path, offset, nbytes, dtype, count):
        self.path, self.offset, self.nbytes, self.dtype, self.count = path, offset, nbytes, dtype, count

    def read(self, out=None) -> np.ndarray:
        """The values as a flat array of the file's dtype, or written into ``out`` (a C-contiguous array of
        ``count`` elements of the same dtype) and returned."""
        a = np.empty(self.count, self.dtype) if out is None else out
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            if f.readinto(memoryview(a).cast("B")) != self.nbytes:
                raise FileFormatError(self.path, "not a valid caffemodel (truncated: the file changed while read)")
        return a


def _read_blob(r: _Reader, end, where, lazy=False):
    """Read one BlobProto region: return (skeleton bytes without payloads, {payload name: array}); with
    ``lazy`` the payloads are :class:`LazyPayload` s (validated, not read)."""
    skel, payloads = [], {}
    while r.f.tell() < end:
        start = r.f.tell()
        number, wire, n = r.field(end)
        if number in PAYLOAD and wire == 2:
            payloads[PAYLOAD[number][0]] = (r.f.tell(), n)
            r.f.seek(n, 1)
        else:
            r.f.seek(start)
            skel.append(r.raw_field(start, end))
    from .files import parse_binary

    blob = parse_binary(caffe_pb2.BlobProto, b"".join(skel), where, "blob (BlobProto)")
    count = check_shape(_shape_of(blob), where)
    arrays = {}
    for name, (off, n) in payloads.items():
        kind = PAYLOAD[_NAMES[name]][1]
        dt = np.dtype("<" + kind) if kind != "raw" else RAW_DTYPES.get(
            blob.raw_data_type if name == "raw_data" else blob.raw_diff_type)
        if dt is None:
            raise FileFormatError(where, f"unsupported {name}_type")
        if n != count * dt.itemsize:  # checked before anything of that size is allocated
            raise FileFormatError(where, f"blob declares {count} elements but {name} holds {n} bytes "
                                         f"({dt.itemsize} each)")
        arrays[name] = LazyPayload(r.path, off, n, dt, count)
        if not lazy:
            a = np.empty(count, dt)
            r.f.seek(off)
            if r.f.readinto(memoryview(a).cast("B")) != n:
                raise r.bad("truncated")
            arrays[name] = a
    r.f.seek(end)
    return blob, arrays


def _shape_of(blob):
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width"):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(blob.shape.dim)


def scan_weights(f, path, size, lazy=False):
    """Stream a binary NetParameter from file ``f``: return (skeleton bytes, per-layer blob list).

    The skeleton is the net with every V2 layer's blob payloads removed (shapes kept); the list holds, per
    ``layer`` entry in file order, ``[(BlobProto skeleton, {payload name: array}), ...]``. Returns None
    when the file uses V0/V1 ``layers`` (small legacy nets: parse them whole). ``lazy``: payloads are
    :class:`LazyPayload` s instead of arrays.
    """
    r = _Reader(f, path, size)
    skel, layers = [], []
    while f.tell() < size:
        start = f.tell()
        number, wire, n = r.field(size)
        if number == 2 and wire == 2:
            return None
        if number == 100 and wire == 2:
            lend = f.tell() + n
            lskel, blobs = [], []
            while f.tell() < lend:
                fstart = f.tell()
                fnum, fwire, fn = r.field(lend)
                if fnum == 7 and fwire == 2:
                    blobs.append(_read_blob(r, f.tell() + fn, f"{path}: layer {len(layers)} blob {len(blobs)}",
                                            lazy))
                else:
                    f.seek(fstart)
                    lskel.append(r.raw_field(fstart, lend))
            body = b"".join(lskel)
            skel.append(tag(100, 2) + varint(len(body)) + body)
            layers.append(blobs)
        else:
            f.seek(start)
            skel.append(r.raw_field(start, size))
    return b"".join(skel), layers


def iter_fields(buf: bytes):
    """Yield ``(number, wire type, value)`` for the top-level fields of a serialized message: varints as
    ints, fixed32/64 as raw bytes, length-delimited as bytes. Raises ValueError on malformed input."""
    pos, n = 0, len(buf)

    def var(p):
        shift = result = 0
        while True:
            if p >= n or shift > 63:
                raise ValueError("truncated or malformed varint")
            b = buf[p]
            result |= (b & 0x7F) << shift
            p += 1
            if not b & 0x80:
                return result, p
            shift += 7

    while pos < n:
        key, pos = var(pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = var(pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            val, pos = buf[pos:pos + size], pos + size
        elif wire == 2:
            size, pos = var(pos)
            val, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > n:
            raise ValueError("truncated field")
        yield number, wire, val
