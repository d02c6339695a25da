"""Reading and writing Caffe's messages by file: net and solver prototxt (dialect detected, legacy forms
upgraded), in-memory dialect conversion, BVLC text output, binaryproto (mean files), solverstate, and guessing
what a file holds. Binary nets and caffemodels go through :mod:`caffelite.io.weights`. These are the readers
behind :mod:`caffelite.io`'s public API.
"""

from __future__ import annotations

import os
import re

from google.protobuf import message as pb_message
from google.protobuf import text_format

from ..errors import FileFormatError
from ..proto import caffe_pb2, dialect
from . import upgrade as _upgrade
from .blobs import array_to_blob, blob_to_array, check_blob
from .dialects import NetReport, bvlc_net_to_jacinto, bvlc_solver_to_jacinto, convert_by_name, \
    detect_bvlc_in_jacinto_net, jacinto_msg_to_bvlc, looks_bvlc, unknown_numbers
from .files import atomic_write, check_strings, is_text_file, read_bytes
from .files import parse_binary as _parse_binary
from .weights import parse_net_binary


# ------------------------------------------------------------------------------------------------ text
#: fields of dialects we do not read whose number collides with one we do
_FOREIGN_FIELDS = {"label_smoothing": "NVCaffe's LossParameter field 4 (caffe-jacinto's field 4 is label_weights); "
                                      "label smoothing is not supported"}


def _text_error(e: text_format.ParseError, source):
    # ParseError's text is "line:col : 'the line': reason"; we put line/col in our own prefix
    msg = re.sub(r"^\d+:\d+ : ", "", str(e))
    for name, hint in _FOREIGN_FIELDS.items():
        if f'no field named "{name}"' in msg:
            msg += f" ({name} is {hint})"
    return FileFormatError(source, msg, e.GetLine(), e.GetColumn())


def _parse_text_any(text: str, cls_name: str, source):
    """Parse ``text`` with the first dialect that accepts it (0.17, BVLC, 0.16); return (msg, dialect).

    If none does, report the error of the dialect that got furthest into the file (a BVLC file with a typo
    should name the typo, not the first BVLC-only field that 0.17 does not know).
    """
    errors = []
    for name in ("jacinto017", "bvlc", "jacinto016"):
        msg = getattr(dialect(name), cls_name)()
        try:
            text_format.Parse(text, msg, allow_unknown_extension=False)
            return msg, name
        except text_format.ParseError as e:
            errors.append(e)
    best = max(errors, key=lambda e: (e.GetLine() or 0, e.GetColumn() or 0))  # max keeps the first on ties
    raise _text_error(best, source)


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

def read_net_ex(path_or_param, upgrade: bool = True):
    """Read a net (prototxt or binary, detected); return ``(NetParameter, NetReport)``.

    ``path_or_param`` may also be a NetParameter (returned, upgraded, with a fresh report).
    """
    if isinstance(path_or_param, pb_message.Message):
        pool = path_or_param.DESCRIPTOR.file.pool
        name = next((n for n in ("bvlc", "jacinto016") if pool is dialect(n).POOL), "jacinto017")
        report = NetReport(name, "<NetParameter>")
        if name == "jacinto017":
            net = caffe_pb2.NetParameter()
            net.CopyFrom(path_or_param)
            detect_bvlc_in_jacinto_net(net, report)  # BVLC-only options kept as unknown fields -> extras
        else:  # a message of another dialect's classes: convert as if read from a file of that dialect
            net = _net_to_jacinto(path_or_param, name, report)
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

def convert_net(net, to: str, report: NetReport | None = None):
    """Convert an in-memory (jacinto-class) net, as read with ``report``, to dialect ``to`` in place.

    ``to="bvlc"``: jacinto BatchNorm (5 blobs / scale_bias) is split into BVLC BatchNorm + Scale (unless the
    net came from a BVLC file) and a BVLC-class NetParameter is returned (jacinto-only fields dropped and
    reported). ``to="jacinto"``: a BVLC net's BatchNorm + Scale pairs are merged (statistics divided by the
    scale factor, docs/jacinto-spec.md §d.5), BVLC-only fields are discarded (already reported when read).
    Fields no schema declares (other forks') are kept at their place in both directions.
    Blob encodings are left as they are: write with ``write_weights(form=...)``.
    """
    from .foreign import foreign_fields, restore_foreign_fields
    from .batchnorm import bvlc_bn_to_jacinto, jacinto_bn_to_bvlc

    source = report.dialect if report is not None else "jacinto017"
    if to not in ("bvlc", "jacinto"):
        raise ValueError(f"unknown dialect {to!r} (expected 'jacinto' or 'bvlc')")
    foreign = foreign_fields(net)  # other forks' fields: kept byte for byte in either form
    if to == "bvlc":
        if source != "bvlc":
            jacinto_bn_to_bvlc(net)
        return restore_foreign_fields(jacinto_msg_to_bvlc(net, "NetParameter", report), foreign, report)
    if source == "bvlc":
        bvlc_bn_to_jacinto(net, report)
    net.DiscardUnknownFields()
    return restore_foreign_fields(net, foreign, report)


def write_text(msg, path, dialect_name: str = "jacinto017") -> None:
    """Write a message as prototxt (Caffe's text format), atomically.

    With ``dialect_name="bvlc"`` a jacinto message is converted to BVLC's classes first.
    """
    if dialect_name == "bvlc" and msg.DESCRIPTOR.file.pool is not dialect("bvlc").POOL:
        msg = jacinto_msg_to_bvlc(msg, msg.DESCRIPTOR.name)
    atomic_write(path, text_format.MessageToString(msg).encode("utf-8"))


def _read_message(path, cls, what):
    """``(path, message)``: a whole binary file parsed as ``cls``; an empty file or one with a field that ``cls``
    declares in another wire type (another kind of file) is refused. Numbers no schema declares are another
    fork's fields: kept (:func:`caffelite.io.foreign.foreign_fields`)."""
    path = os.fspath(path)
    data = read_bytes(path)
    msg = _parse_binary(cls, data, path, what)
    if not data or any(n in cls.DESCRIPTOR.fields_by_number for n, _ in unknown_numbers(msg)):
        raise FileFormatError(path, f"not a {what}")
    return path, msg


def read_blobproto(path):
    """Read a ``.binaryproto`` as its checked BlobProto message: the declared shape fields as written (legacy
    num/channels/height/width or ``shape``) and other forks' fields kept as unknown fields, so it can be
    converted and written back without losing anything."""
    path, blob = _read_message(path, caffe_pb2.BlobProto, "binaryproto (BlobProto)")
    check_blob(blob, path)
    return blob


def read_binaryproto(path):
    """Read a ``.binaryproto`` BlobProto (e.g. a mean file) as a float32 array of its declared shape."""
    return blob_to_array(read_blobproto(path), where=os.fspath(path))


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
    path, state = _read_message(path, caffe_pb2.SolverState, "solverstate (SolverState)")
    check_strings(state, path)
    for i, b in enumerate(state.history):
        check_blob(b, f"{path}: history blob {i}")
    return state


def file_kind(path) -> str:
    """Guess what ``path`` holds: "net", "solver" (prototxt), "weights", "binaryproto" or "solverstate"."""
    name = os.fspath(path).lower()
    compressed = name.endswith(".xz")
    if compressed:
        name = name[:-3]
    if name.endswith(".caffemodel"):
        return "weights"
    if name.endswith(".binaryproto"):
        return "binaryproto"
    if name.endswith(".solverstate"):
        return "solverstate"
    if compressed:
        head = read_bytes(path)[:4096]
    else:
        with open(path, "rb") as f:
            head = f.read(4096)
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
