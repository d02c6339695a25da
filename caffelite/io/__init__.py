"""Every read and write of Caffe files: net/solver prototxt, caffemodel, binaryproto (mean), solverstate.

Public API (all return caffe-jacinto 0.17 messages, :mod:`caffelite.proto`'s ``caffe_pb2``):

- :func:`read_net` / :func:`read_net_ex` / :func:`parse_net_text`: a net prototxt (or binary net), dialect
  detected (jacinto 0.17, jacinto 0.16, BVLC) and legacy forms upgraded (V0/V1, input fields, BatchNorm);
- :func:`read_solver`: a solver prototxt (``solver_type`` upgraded);
- :func:`read_weights`: a binary ``.caffemodel`` (``.xz`` accepted), upgraded like upgrade_net_proto_binary;
- :func:`load_weights`: the same, streaming blob values into numpy arrays (use this for big files: about 1x
  the file in memory; the returned message keeps blob shapes only); ``lazy=True`` leaves the values in the
  file until each is read into its destination (what ``Net.copy_from`` does: nothing held twice);
- :func:`write_weights` (jacinto raw FLOAT form by default, or BVLC packed form; ``arrays=`` streams a Net's
  values without copying them into protobuf), :func:`write_text` (``dialect_name="bvlc"`` for BVLC text);
- :func:`read_binaryproto` / :func:`write_binaryproto` (:func:`read_blobproto`: the message itself),
  :func:`read_solverstate` / :func:`write_solverstate`;
- :func:`blob_to_array` / :func:`array_to_blob` (from :mod:`caffelite.io.blobs`);
- pycaffe's ``caffe.io`` helpers: :class:`Transformer`, :func:`load_image`, :func:`resize_image`, ... (from
  :mod:`caffelite.io.pycaffe`).

Every write is atomic (a temp file in the same folder, then ``os.replace``). Bad input raises
:class:`~caffelite.errors.FileFormatError` naming the file (and line/column for text).

The package's modules, by job:

- ``messages``: net/solver prototxt reading (dialects, upgrades), BVLC text, binaryproto, solverstate;
- ``weights``: binary nets and caffemodels (streamed or whole); ``wire``: protobuf wire-format streaming;
- ``blobs``: BlobProto <-> numpy; ``batchnorm``: BVLC <-> jacinto BatchNorm layouts;
- ``dialects``: dialect detection and conversion; ``foreign``: other forks' fields, kept byte for byte;
  ``upgrade``: legacy net/solver upgrades;
- ``files``: whole-file reads (``.xz``), atomic writes, text/binary sniffing, guarded parsing;
- ``netweights``: a Net's definition/weights loading and copying by layer name;
- ``pycaffe``: pycaffe's ``caffe.io`` helpers.

The names below load their module on first use, so importing a light helper (``caffelite.io.files``) does not
load the protobuf schemas, the readers and pycaffe's helpers with it.
"""

from __future__ import annotations

import importlib

__all__ = [
    "NetReport", "read_net", "read_net_ex", "parse_net_text", "read_solver", "read_solver_ex", "read_weights",
    "read_weights_ex", "write_weights", "write_text", "read_binaryproto", "read_blobproto", "write_binaryproto",
    "read_solverstate", "write_solverstate", "blob_to_array", "array_to_blob", "blob_diff_to_array",
    "blob_shape", "atomic_write", "read_bytes", "is_text_file", "file_kind", "read_text_any", "parse_net_binary",
    "serialize_weights", "check_blob", "load_weights", "convert_net",
    # pycaffe's caffe.io helpers (caffelite.io.pycaffe)
    "Transformer", "load_image", "resize_image", "oversample", "blobproto_to_array", "array_to_blobproto",
    "arraylist_to_blobprotovector_str", "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array",
]

#: name -> (module of this package, attribute there; None for the module itself)
_HOME = {
    **{n: ("messages", n) for n in (
        "read_net", "read_net_ex", "parse_net_text", "read_solver", "read_solver_ex", "write_text", "convert_net",
        "read_binaryproto", "read_blobproto", "write_binaryproto", "read_solverstate", "write_solverstate",
        "file_kind",
        "read_text_any",
        # helpers the readers use, reachable here as they always were
        "FileFormatError", "caffe_pb2", "dialect", "_parse_text_any", "_text_error", "_net_to_jacinto",
        "_read_message", "_FOREIGN_FIELDS", "os", "re", "pb_message", "text_format")},
    **{n: ("weights", n) for n in (
        "read_weights", "read_weights_ex", "write_weights", "parse_net_binary", "serialize_weights", "load_weights")},
    **{n: ("blobs", n) for n in ("blob_to_array", "array_to_blob", "blob_diff_to_array", "blob_shape", "check_blob")},
    **{n: ("files", n) for n in ("atomic_write", "read_bytes", "is_text_file", "check_strings")},
    "_parse_binary": ("files", "parse_binary"),
    "_upgrade": ("upgrade", None),
    **{n: ("dialects", n) for n in (
        "NetReport", "bvlc_net_to_jacinto", "bvlc_solver_to_jacinto", "convert_by_name",
        "detect_bvlc_in_jacinto_net", "jacinto_msg_to_bvlc", "looks_bvlc", "unknown_numbers")},
    **{n: ("pycaffe", n) for n in (
        "Transformer", "load_image", "resize_image", "oversample", "blobproto_to_array", "array_to_blobproto",
        "arraylist_to_blobprotovector_str", "blobprotovector_str_to_arraylist", "array_to_datum",
        "datum_to_array")},
}


def __getattr__(name):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _HOME[name]
    m = importlib.import_module(f"{__name__}.{module}")
    value = m if attr is None else getattr(m, attr)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(_HOME))
