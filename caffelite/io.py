"""Every read and write of Caffe files: net/solver prototxt, caffemodel, binaryproto (mean), solverstate.

Public API (all return caffe-jacinto 0.17 messages, :mod:`caffelite.proto`'s ``caffe_pb2``):

- :func:`read_net` / :func:`read_net_ex` / :func:`parse_net_text`: a net prototxt (or binary net), dialect
  detected (jacinto 0.17, jacinto 0.16, BVLC) and legacy forms upgraded (V0/V1, input fields, BatchNorm);
- :func:`read_solver`: a solver prototxt (``solver_type`` upgraded);
- :func:`read_weights`: a binary ``.caffemodel`` (``.xz`` accepted), upgraded like upgrade_net_proto_binary;
- :func:`write_weights` (jacinto raw FLOAT form by default, or BVLC packed form), :func:`write_text`;
- :func:`read_binaryproto` / :func:`write_binaryproto`, :func:`read_solverstate` / :func:`write_solverstate`;
- :func:`blob_to_array` / :func:`array_to_blob` (re-exported from :mod:`caffelite.io_blob`).

Every write is atomic (a temp file in the same folder, then ``os.replace``). Bad input raises
:class:`~caffelite.errors.FileFormatError` naming the file (and line/column for text).
"""

from __future__ import annotations

import lzma
import os
import re
import tempfile

from google.protobuf import message as pb_message
from google.protobuf import text_format

from . import upgrade as _upgrade
from .dialects import NetReport, bvlc_net_to_jacinto, bvlc_solver_to_jacinto, convert_by_name, \
    detect_bvlc_in_jacinto_net, jacinto_msg_to_bvlc, looks_bvlc, unknown_numbers
from .errors import FileFormatError
from .io_blob import array_to_blob, blob_diff_to_array, blob_shape, blob_to_array, check_blob, convert_blob_form
from .proto import caffe_pb2, dialect

__all__ = [
    "NetReport", "read_net", "read_net_ex", "parse_net_text", "read_solver", "read_solver_ex", "read_weights",
    "read_weights_ex", "write_weights", "write_text", "read_binaryproto", "write_binaryproto",
    "read_solverstate", "write_solverstate", "blob_to_array", "array_to_blob", "blob_diff_to_array",
    "blob_shape", "atomic_write", "read_bytes", "is_text_file", "file_kind", "read_text_any", "parse_net_binary",
    "serialize_weights", "check_blob",
]

#: protobuf's own recursion limit is fine; we refuse files larger than this when decompressing .xz
MAX_FILE_BYTES = 1 << 36


# ----------------------------------------------------------------------------------------------- files
def read_bytes(path) -> bytes:
    """The bytes of ``path``; a name ending in ``.xz`` is decompressed transparently."""
    path = os.fspath(path)
    if path.endswith(".xz"):
        try:
            with lzma.open(path) as f:
                return f.read()
        except lzma.LZMAError as e:
            raise FileFormatError(path, f"not a valid xz file ({e})") from None
        except EOFError:
            raise FileFormatError(path, "truncated xz file") from None
    with open(path, "rb") as f:
        return f.read()


def atomic_write(path, data) -> None:
    """Write ``data`` (bytes, or an iterable of bytes-like chunks) to ``path`` atomically."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                for chunk in data:
                    f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def is_text_file(data: bytes) -> bool:
    """Heuristic: prototxt is UTF-8 text without control bytes (binary protobufs nearly always have some)."""
    head = data[:4096]
    if not head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multi-byte char cut at the 4 KiB boundary is fine
            return False
    return not any(b < 9 or 13 < b < 32 for b in head)


# ------------------------------------------------------------------------------------------------ text
def _text_error(e: text_format.ParseError, source):
    # ParseError's text is "line:col : 'the line': reason"; we put line/col in our own prefix
    msg = re.sub(r"^\d+:\d+ : ", "", str(e))
    return FileFormatError(source, msg, e.GetLine(), e.GetColumn())


def _parse_text_any(text: str, cls_name: str, source):
    """Parse ``text`` with the first dialect that accepts it (0.17, BVLC, 0.16); return (msg, dialect)."""
    first_error = None
    for name in ("jacinto017", "bvlc", "jacinto016"):
        msg = getattr(dialect(name), cls_name)()
        try:
            text_format.Parse(text, msg, allow_unknown_extension=False)
            return msg, name
        except text_format.ParseError as e:
            if first_error is None:
                first_error = e
    raise _text_error(first_error, source)


def _net_to_jacinto(msg, name, report):
    if name == "bvlc":
        return bvlc_net_to_jacinto(msg, report)
    if name == "jacinto016":
        return convert_by_name(msg, caffe_pb2.NetParameter(), report, "net: ")
    return msg


def parse_net_text(text: str, source="<string>", upgrade: bool = True):
    """Parse a net prototxt; return ``(NetParameter, NetReport)`` (jacinto 0.17 classes, upgraded)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    msg, name = _parse_text_any(text, "NetParameter", source)
    if name == "jacinto017" and looks_bvlc(msg) and not msg.quantize:
        try:  # valid in both: BVLC's BatchNorm + Scale layout says it is a BVLC net
            bmsg = text_format.Parse(text, dialect("bvlc").NetParameter())
            msg, name = bmsg, "bvlc"
        except text_format.ParseError:
            pass
    report = NetReport(name, str(source))
    net = _net_to_jacinto(msg, name, report)
    if upgrade:
        report.upgraded = _upgrade.upgrade_net(net, source)
    return net, report


def _parse_binary(cls, data: bytes, source, what):
    try:
        return cls.FromString(data)
    except pb_message.DecodeError as e:
        raise FileFormatError(source, f"not a valid {what} (not a protobuf, or truncated: {e})") from None
    except RecursionError:
        raise FileFormatError(source, f"not a valid {what} (nesting too deep)") from None


def _binary_net_dialect(net) -> str:
    """Decide the dialect of a binary NetParameter parsed with the 0.17 class (see :mod:`caffelite.dialects`)."""
    jacinto_marks = False
    for l in net.layer:
        nums = unknown_numbers(l)
        if any(n in (145, 146, 147, 148) and w == 2 for n, w in nums):
            return "bvlc"
        if l.HasField("pooling_param") and any(n == 13 for n, _ in unknown_numbers(l.pooling_param)):
            return "bvlc"
        if any(n in (8405, 8406, 8407) for n, _ in nums):
            return "jacinto016"
        if l.HasField("forward_type") or l.HasField("forward_math") or l.HasField("quantization_param"):
            jacinto_marks = True
        if any(b.HasField("raw_data") for b in l.blobs):
            jacinto_marks = True
    if jacinto_marks or net.HasField("quantize") or net.HasField("net_quantization_param"):
        return "jacinto017"
    if any(len(b.data) or len(b.double_data) for l in net.layer for b in l.blobs) or len(net.layers):
        return "bvlc"
    return "jacinto017"


def _blob_form(net):
    forms = set()
    for l in list(net.layer) + list(net.layers):
        for b in l.blobs:
            forms.add("jacinto" if b.HasField("raw_data") else "bvlc")
    return None if not forms else forms.pop() if len(forms) == 1 else "mixed"


def check_net_blobs(net, source) -> None:
    """Validate every blob's declared shape against its data length (before anything is decoded)."""
    for l in net.layer:
        for i, b in enumerate(l.blobs):
            check_blob(b, f"{source}: layer '{l.name}' blob {i}")
    for l in net.layers:
        for i, b in enumerate(list(l.blobs) + list(l.layer.blobs)):
            check_blob(b, f"{source}: layer '{l.name or l.layer.name}' blob {i}")


def parse_net_binary(data: bytes, source="<bytes>", upgrade: bool = True):
    """Parse a binary NetParameter (caffemodel); return ``(NetParameter, NetReport)``."""
    if not data:
        raise FileFormatError(source, "empty file (not a caffemodel)")
    net = _parse_binary(caffe_pb2.NetParameter, data, source, "caffemodel (binary NetParameter)")
    if unknown_numbers(net) or not (len(net.layer) or len(net.layers)):
        raise FileFormatError(source, "not a caffemodel: no layers (is it a binaryproto, solverstate or "
                                      "another kind of file?)")
    check_net_blobs(net, source)
    name = _binary_net_dialect(net)
    report = NetReport(name, str(source))
    if name == "bvlc":
        detect_bvlc_in_jacinto_net(net, report)
    elif name == "jacinto016":
        net = convert_by_name(_parse_binary(dialect("jacinto016").NetParameter, data, source, "caffemodel"),
                              caffe_pb2.NetParameter(), report, "net: ")
    if upgrade:
        report.upgraded = _upgrade.upgrade_net(net, source)
    report.form = _blob_form(net)
    return net, report


def read_net_ex(path_or_param, upgrade: bool = True):
    """Read a net (prototxt or binary, detected); return ``(NetParameter, NetReport)``.

    ``path_or_param`` may also be a NetParameter (returned, upgraded, with a fresh report).
    """
    if isinstance(path_or_param, pb_message.Message):
        net = caffe_pb2.NetParameter()
        net.CopyFrom(path_or_param) if path_or_param.DESCRIPTOR is net.DESCRIPTOR else \
            net.MergeFromString(path_or_param.SerializeToString())
        report = NetReport("jacinto017", "<NetParameter>")
        if upgrade:
            report.upgraded = _upgrade.upgrade_net(net, "<NetParameter>")
        return net, report
    path = os.fspath(path_or_param)
    data = read_bytes(path)
    if is_text_file(data):
        return parse_net_text(data.decode("utf-8", errors="replace"), path, upgrade)
    return parse_net_binary(data, path, upgrade)


def read_net(path_or_param, upgrade: bool = True):
    """Read a net prototxt (or binary net) as an upgraded caffe-jacinto 0.17 NetParameter."""
    return read_net_ex(path_or_param, upgrade)[0]


def read_solver_ex(path, upgrade: bool = True):
    """Read a solver prototxt; return ``(SolverParameter, NetReport)`` (dialect detected, upgraded)."""
    path = os.fspath(path)
    data = read_bytes(path)
    if not is_text_file(data):
        raise FileFormatError(path, "not a text solver prototxt")
    msg, name = _parse_text_any(data.decode("utf-8", errors="replace"), "SolverParameter", path)
    report = NetReport(name, path)
    if name == "bvlc":
        msg = bvlc_solver_to_jacinto(msg, report)
    elif name == "jacinto016":
        msg = convert_by_name(msg, caffe_pb2.SolverParameter(), report, "solver: ")
    if upgrade:
        report.upgraded = _upgrade.upgrade_solver(msg, path)
    return msg, report


def read_solver(path, upgrade: bool = True):
    """Read a solver prototxt as a caffe-jacinto 0.17 SolverParameter (``solver_type`` -> ``type``)."""
    return read_solver_ex(path, upgrade)[0]


# ---------------------------------------------------------------------------------------------- binary
def read_weights_ex(path, upgrade: bool = True):
    """Read a binary caffemodel; return ``(NetParameter, NetReport)`` (``report.form`` = blob encoding)."""
    path = os.fspath(path)
    data = read_bytes(path)
    return parse_net_binary(data, path, upgrade)


def read_weights(path, upgrade: bool = True):
    """Read a binary ``.caffemodel`` (or ``.caffemodel.xz``) as a caffe-jacinto 0.17 NetParameter.

    V0/V1 nets are upgraded like ``upgrade_net_proto_binary`` (blobs keep their legacy 4-D dims); BVLC files
    are detected and keep their BVLC-only fields as unknown fields (byte-identical when written back).
    """
    return read_weights_ex(path, upgrade)[0]


def serialize_weights(net_param, form: str = "jacinto") -> bytes:
    """Serialize a NetParameter with every blob in ``form`` ("jacinto": raw FLOAT; "bvlc": packed data)."""
    if form not in ("jacinto", "bvlc"):
        raise ValueError(f"unknown weights form {form!r} (expected 'jacinto' or 'bvlc')")
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param) if net_param.DESCRIPTOR is out.DESCRIPTOR else \
        out.MergeFromString(net_param.SerializeToString())
    for l in list(out.layer) + list(out.layers):
        for i, b in enumerate(l.blobs):
            convert_blob_form(b, form, where=f"layer '{l.name}' blob {i}")
    return out.SerializeToString()


def write_weights(net_param, path, form: str = "jacinto") -> None:
    """Write ``net_param`` as a binary caffemodel in ``form`` ("jacinto" default, or "bvlc"), atomically."""
    atomic_write(path, serialize_weights(net_param, form))


def write_text(msg, path, dialect_name: str = "jacinto017") -> None:
    """Write a message as prototxt (Caffe's text format), atomically.

    With ``dialect_name="bvlc"`` a jacinto message is converted to BVLC's classes first.
    """
    if dialect_name == "bvlc" and msg.DESCRIPTOR.file.pool is not dialect("bvlc").POOL:
        msg = jacinto_msg_to_bvlc(msg, msg.DESCRIPTOR.name)
    atomic_write(path, text_format.MessageToString(msg).encode("utf-8"))


def read_binaryproto(path):
    """Read a ``.binaryproto`` BlobProto (e.g. a mean file) as a float32 array of its declared shape."""
    path = os.fspath(path)
    data = read_bytes(path)
    blob = _parse_binary(caffe_pb2.BlobProto, data, path, "binaryproto (BlobProto)")
    if not data or unknown_numbers(blob):
        raise FileFormatError(path, "not a binaryproto (BlobProto)")
    check_blob(blob, path)
    return blob_to_array(blob, where=path)


def write_binaryproto(arr, path, form: str = "bvlc", legacy_4d: bool = False) -> None:
    """Write ``arr`` as a BlobProto. ``legacy_4d`` writes num/channels/height/width like compute_image_mean."""
    blob = array_to_blob(arr, form)
    if legacy_4d:
        shape = (1,) * (4 - len(blob.shape.dim)) + tuple(blob.shape.dim)
        if len(shape) != 4:
            raise ValueError("legacy 4-D blob needs at most 4 dims")
        blob.ClearField("shape")
        blob.num, blob.channels, blob.height, blob.width = shape
    atomic_write(path, blob.SerializeToString())


def read_solverstate(path):
    """Read a ``.solverstate`` (SolverState: iter, learned_net, history blobs, current_step)."""
    path = os.fspath(path)
    data = read_bytes(path)
    state = _parse_binary(caffe_pb2.SolverState, data, path, "solverstate (SolverState)")
    if not data or unknown_numbers(state):
        raise FileFormatError(path, "not a solverstate (SolverState)")
    for i, b in enumerate(state.history):
        check_blob(b, f"{path}: history blob {i}")
    return state


def file_kind(path) -> str:
    """Guess what ``path`` holds: "net", "solver" (prototxt), "weights", "binaryproto" or "solverstate"."""
    name = os.fspath(path).lower()
    if name.endswith(".xz"):
        name = name[:-3]
    if name.endswith(".caffemodel"):
        return "weights"
    if name.endswith(".binaryproto"):
        return "binaryproto"
    if name.endswith(".solverstate"):
        return "solverstate"
    with open(path, "rb") as f:
        head = f.read(4096)
    if name.endswith(".xz"):
        head = read_bytes(path)[:4096]
    if is_text_file(head):
        return "solver" if "solver" in os.path.basename(name) else "net"
    return "weights"


def read_text_any(path):
    """Read a prototxt that is a net or a solver: return ``(kind, message, report)``."""
    path = os.fspath(path)
    first = "solver" if "solver" in os.path.basename(path).lower() else "net"
    order = [first, "net" if first == "solver" else "solver"]
    errors = []
    for kind in order:
        try:
            if kind == "net":
                return ("net",) + read_net_ex(path)
            return ("solver",) + read_solver_ex(path)
        except FileFormatError as e:
            errors.append(e)
    raise errors[0]


def write_solverstate(state, path) -> None:
    """Write a SolverState message atomically."""
    atomic_write(path, state.SerializeToString())
