"""Binary caffemodel reading and writing (see :mod:`caffelite.io` for the public API).

``read_weights`` parses the whole file with protobuf (the message holds every value); ``load_weights``
streams blob payloads straight into numpy arrays (:mod:`caffelite.io.wire`) and is what a Net should use for
big files; ``write_weights`` streams payloads from array memory. Dialect detection of binary nets
(docs/jacinto-spec.md §h: NVCaffe writes ``raw_data`` and sets ``forward_type``... on every layer; BVLC writes packed
``data`` and may carry message fields 145-148) lives here too.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import FileFormatError
from ..proto import caffe_pb2, dialect
from . import upgrade as _upgrade
from .dialects import NetReport, convert_by_name, detect_bvlc_in_jacinto_net, guess_jacinto_version, unknown_numbers
from .foreign import foreign_fields, restore_foreign_fields
from .blobs import blob_shape, blob_to_array, check_blob
from .files import parse_binary as _parse_binary
from .files import atomic_write, check_strings, read_bytes
from .wire import iter_net_chunks, scan_weights


def _binary_net_dialect(net, forms=None, raw=b"") -> str:
    """Decide the dialect of a binary NetParameter parsed with the 0.17 class (see :mod:`caffelite.io.dialects`)."""
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
    if net.HasField("net_quantization_param") or any(l.HasField("quantization_param") for l in net.layer):
        return guess_jacinto_version(raw)
    if jacinto_marks or net.HasField("quantize") or (forms and "jacinto" in forms):
        return "jacinto017"
    if forms and "bvlc" in forms:
        return "bvlc"
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


def _from_016(net16, report):
    """A caffe-jacinto 0.16 NetParameter as 0.17 (fields copied by name), other forks' fields kept."""
    out = convert_by_name(net16, caffe_pb2.NetParameter(), report, "net: ")
    return restore_foreign_fields(out, foreign_fields(net16), report)


def parse_net_binary(data: bytes, source="<bytes>", upgrade: bool = True):
    """Parse a binary NetParameter (caffemodel); return ``(NetParameter, NetReport)``."""
    if not data:
        raise FileFormatError(source, "empty file (not a caffemodel)")
    net = _parse_binary(caffe_pb2.NetParameter, data, source, "caffemodel (binary NetParameter)")
    check_strings(net, source)
    # a declared number with the wrong wire type (a solverstate's iter in NetParameter's name, say) means another
    # kind of file; numbers no schema declares are another fork's fields, kept (see foreign.foreign_fields)
    declared = net.DESCRIPTOR.fields_by_number
    if any(n in declared for n, _ in unknown_numbers(net)) or not (len(net.layer) or len(net.layers)):
        raise FileFormatError(source, "not a caffemodel: no layers (is it a binaryproto, solverstate or "
                                      "another kind of file?)")
    check_net_blobs(net, source)
    name = _binary_net_dialect(net, raw=data)
    report = NetReport(name, str(source))
    if name == "bvlc":
        detect_bvlc_in_jacinto_net(net, report)
    elif name == "jacinto016":
        net = _from_016(_parse_binary(dialect("jacinto016").NetParameter, data, source, "caffemodel"), report)
    if upgrade:
        report.upgraded = _upgrade.upgrade_net(net, source)
    report.form = _blob_form(net)
    return net, report


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


def serialize_weights(net_param, form: str | None = "jacinto") -> bytes:
    """Serialize a NetParameter with every blob in ``form`` ("jacinto": raw FLOAT; "bvlc": packed data;
    None: as each blob is). Same bytes as protobuf's ``SerializeToString`` of the converted message."""
    return b"".join(iter_net_chunks(net_param, _check_form(form)))


def _check_form(form):
    if form not in ("jacinto", "bvlc", None):
        raise ValueError(f"unknown weights form {form!r} (expected 'jacinto' or 'bvlc')")
    return form


def write_weights(net_param, path, form: str | None = "jacinto", arrays=None) -> None:
    """Write ``net_param`` as a binary caffemodel in ``form`` ("jacinto" default, "bvlc", or None to keep
    each blob's encoding), atomically. Blob payloads stream from array memory (no whole-file copy).

    ``arrays``: optional {layer name: [numpy arrays]} used as those layers' blobs instead of
    ``layer.blobs`` (what a Net snapshot should pass: the values never get copied into protobuf).
    """
    atomic_write(path, iter_net_chunks(net_param, _check_form(form), arrays))


class LazyBlob:
    """A float32 blob of ``shape`` whose values are still in the file (``load_weights(lazy=True)``).

    ``read()`` returns them; ``read(out)`` writes them into ``out`` (any array of the same element count),
    straight from the file when ``out`` is C-contiguous float32 NumPy memory and the file stores float32.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, payload, shape):
        self.payload, self.shape = payload, tuple(shape)
        self.size = payload.count

    def read(self, out=None) -> np.ndarray:
        """The values (float32, ``shape``), or ``out`` filled with them."""
        p = self.payload
        if out is not None and p.dtype == np.float32 and isinstance(out, np.ndarray) and out.size == self.size \
                and out.dtype == np.float32 and out.flags.c_contiguous:
            p.read(out.reshape(-1))  # a view of ``out``: the bytes land in their final place
            return out
        vals = p.read().astype(np.float32, copy=False).reshape(self.shape)
        if out is None:
            return vals
        out[...] = vals.reshape(out.shape)
        return out


def _pick_payload(pay):
    """The payload Caffe reads (docs/jacinto-spec.md §h): ``double_data``, else ``data``, else ``raw_data``; or None."""
    for name in ("double_data", "data", "raw_data"):
        if name in pay:
            return pay[name]
    return None


def load_weights(path, upgrade: bool = True, lazy: bool = False):
    """Lean caffemodel load for big files: return ``(NetParameter, NetReport, arrays)``.

    ``arrays`` maps layer name -> list of float32 arrays (the blobs, in order, shaped as declared). The
    returned NetParameter's blobs keep their shape fields but **no values** (payloads were streamed straight
    from the file into the arrays with ``readinto``: peak memory is about the arrays themselves). With
    ``lazy=True`` the list items are :class:`LazyBlob` s (shape known, values read on demand, e.g. into a
    Net's blobs: peak memory is then a few KiB over the net itself). Files in V0/V1 format and ``.xz`` files
    fall back to :func:`read_weights` (they are small) and always give arrays.
    """
    path = os.fspath(path)
    scanned = None
    if not path.endswith(".xz"):
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise FileFormatError(path, "empty file (not a caffemodel)")
            scanned = scan_weights(f, path, size, lazy)
    if scanned is None:
        net, report = read_weights_ex(path, upgrade)
        arrays = {l.name: [blob_to_array(b, where=f"{path}: layer '{l.name}' blob {i}") for i, b in
                           enumerate(l.blobs)] for l in net.layer}
        return net, report, arrays
    skel, layer_blobs = scanned
    net = _parse_binary(caffe_pb2.NetParameter, skel, path, "caffemodel (binary NetParameter)")
    check_strings(net, path)
    if any(n in net.DESCRIPTOR.fields_by_number for n, _ in unknown_numbers(net)) or not len(net.layer):
        raise FileFormatError(path, "not a caffemodel: no layers")
    arrays, forms = {}, set()
    for l, blobs in zip(net.layer, layer_blobs, strict=True):
        del l.blobs[:]
        out = []
        for i, (bskel, pay) in enumerate(blobs):
            where = f"{path}: layer '{l.name}' blob {i}"
            l.blobs.add().CopyFrom(bskel)
            forms.add("jacinto" if "raw_data" in pay or bskel.HasField("raw_data") else "bvlc")
            vals, shape = _pick_payload(pay), blob_shape(bskel, where)
            if vals is None:
                out.append(blob_to_array(bskel, where=where))
            elif lazy:
                out.append(LazyBlob(vals, shape))
            else:
                out.append(vals.astype(np.float32, copy=False).reshape(shape))
        arrays[l.name] = out
    name = _binary_net_dialect(net, forms, skel)
    report = NetReport(name, path)
    if name == "bvlc":
        detect_bvlc_in_jacinto_net(net, report)
    elif name == "jacinto016":
        net = _from_016(dialect("jacinto016").NetParameter.FromString(skel), report)
    if upgrade:
        report.upgraded = _upgrade.upgrade_net(net, path)
    report.form = None if not forms else forms.pop() if len(forms) == 1 else "mixed"
    return net, report, arrays
