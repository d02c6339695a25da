"""Describe a net or solver prototxt, a caffemodel, a binaryproto or a solverstate.

For nets: the dialect, then one row per layer (name, type, bottoms, tops, blob shapes, parameter count,
fraction of zero weights, quantization parameters and, for a caffemodel's convolutions, the engine ``auto``
would run them with) and totals. For a caffemodel the shapes, counts and zero
fractions come from the stored blobs. For a net prototxt the net is built (``caffelite.Net``, TEST phase) to
get each layer's top shapes and parameter shapes/counts; a data layer that cannot open its source (and
whatever depends on it) is shown with unknown (``?``) shapes instead of failing, and layers that the TEST
phase excludes are marked ``(not TEST)``.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np


def add_arguments(parser):
    parser.add_argument("file", help="prototxt, .caffemodel(.xz), .binaryproto or .solverstate")


def _quant(l) -> str:
    if not l.HasField("quantization_param"):
        return ""
    q = l.quantization_param
    parts = []
    for name in ("qparam_w", "qparam_in", "qparam_out"):
        for p in getattr(q, name):
            if p.quantize:
                parts.append(f"{name[7:]}:{p.bitwidth}b/{p.fracbits}f" + ("u" if p.unsigned_data else ""))
    return " ".join(parts) or "quantization_param"


def _fmt_shapes(shapes):
    return ",".join("x".join(str(d) for d in s) or "scalar" for s in shapes) or "-"


def _table(rows, out):
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        out.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _header(net, report, out):
    out.append(f"net: {net.name or '(unnamed)'}  dialect: {report.dialect}"
               + (f"  blobs: {report.form}" if getattr(report, "form", None) else "")
               + ("  (upgraded from a legacy format)" if report.upgraded else ""))
    if net.quantize:
        out.append("quantize: true")


def _notes(report, out):
    for d in report.dropped:
        out.append(f"note: {d} (no caffe-jacinto field)")


def _foreign(msg, out, root="net"):
    """List the fields of other Caffe forks that the file carries: caffelite keeps them, byte for byte, in
    every conversion, but does not know what they mean."""
    from ..io.foreign import foreign_fields

    for ff in foreign_fields(msg):
        out.append(f"kept, not understood: {ff.describe(root)}")


def describe_net(net, report, out, arrays=None):
    """Print the layer table of a caffemodel's ``net`` (blob shapes, counts, zeros) to ``out`` (a list).

    ``arrays``: {layer name: [arrays or LazyBlobs]} holding the values when ``net``'s blobs keep only their
    shapes (``io.load_weights(lazy=True)``: one blob in memory at a time, whatever the file's size).

    ``zeros`` is the fraction of exact zeros in the layer's weights (its first blob, as caffe-jacinto's
    DisplaySparsity counts, docs/jacinto-spec.md §a.4); the total line also gives the zero fraction of all parameters.
    ``auto engine`` is the engine ``auto`` would run a Convolution with on this machine in a TEST net
    (:mod:`caffelite.ops.engine`: sparse when enough weights are zero and the sparse kernels are built).
    """
    from ..io.blobs import blob_shape, blob_to_array

    from ..ops import engine

    rows = [("name", "type", "bottoms", "tops", "blobs", "params", "zeros", "quant", "auto engine")]
    total = zeros_all = weights = zeros_w = 0
    for l in net.layer:
        shapes, count, zw = [], 0, None
        vals = arrays.get(l.name) if arrays is not None else None
        for i, b in enumerate(l.blobs):
            shapes.append(blob_shape(b))
            a = vals[i] if vals is not None else blob_to_array(b, where=f"layer '{l.name}' blob {i}")
            a = a.read() if hasattr(a, "read") else a
            z = int(a.size - np.count_nonzero(a))
            count += a.size
            zeros_all += z
            if i == 0:
                zw = z / a.size if a.size else None
                weights += a.size
                zeros_w += z
        total += count
        eng = "-"
        if l.type == "Convolution" and shapes and zw is not None:
            ws = tuple(shapes[0])
            eng = engine.auto_choice(engine.conv_kind_of_param(l, ws), zw, int(np.prod(ws[1:])))
        rows.append((l.name, l.type, ",".join(l.bottom) or "-", ",".join(l.top) or "-", _fmt_shapes(shapes),
                     str(count) if l.blobs else "-", f"{zw:.3f}" if zw is not None else "-", _quant(l) or "-",
                     eng))
    _header(net, report, out)
    _table(rows, out)
    frac = f"{zeros_w / weights:.3f}" if weights else "-"
    frac_all = f"{zeros_all / total:.3f}" if total else "-"
    out.append(f"total: {len(net.layer)} layers, {total} parameters, zero fraction {frac} of weights "
               f"({frac_all} of all parameters)")
    _notes(report, out)


@contextlib.contextmanager
def _quiet():
    """Building a net logs every layer at INFO: keep ``info``'s output to the table."""
    lg = logging.getLogger("caffelite")
    old = lg.level
    lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(old)


def _try_net(model):
    from .. import Net, TEST
    from ..errors import CaffeliteError

    try:
        return Net(model, TEST), None
    except (CaffeliteError, OSError) as e:
        return None, e


def build_for_shapes(path, net_param):
    """``(Net or None, unknown layer names, note or None)``: the TEST-phase net of a prototxt for its shapes.

    When the whole net cannot be built, every bottomless layer that cannot be built on its own (a data layer
    whose source is missing) is left out with every layer that depends on it, and the rest is built.
    """
    from ..graph import filter_net, make_state

    with _quiet():
        net, err = _try_net(path)
        if net is not None:
            return net, set(), None
        state = make_state(net_param, 1)
        param = filter_net(net_param, state)
        bad = set()
        for lp in param.layer:
            if not len(lp.bottom):
                alone = type(param)(name=param.name)
                alone.layer.add().CopyFrom(lp)
                if _try_net(alone)[0] is None:
                    bad.add(lp.name)
        if not bad:
            return None, set(), f"cannot build the net for shapes: {err}"
        lost, kept = set(), type(param)()
        kept.CopyFrom(param)
        del kept.layer[:]
        unknown = set()
        for lp in param.layer:
            if lp.name in bad or any(b in lost for b in lp.bottom):
                lost.update(lp.top)
                unknown.add(lp.name)
            else:
                kept.layer.add().CopyFrom(lp)
        why = f"data source unavailable ({err})"
        net, err2 = _try_net(kept) if len(kept.layer) else (None, None)
        if net is None and err2 is not None:
            return None, unknown, f"cannot build the net for shapes: {err2}"
        return net, unknown, f"shapes marked ? are unknown: {why}"


def describe_prototxt(path, param, report, out):
    """Print the layer table of a net prototxt: wiring, and from the built TEST net top shapes, parameter
    shapes and counts."""
    from ..graph import layer_included, make_state

    net, unknown, note = build_for_shapes(path, param)
    state = make_state(param, 1)
    rows = [("name", "type", "bottoms", "tops", "top shapes", "params", "count", "quant")]
    total = 0
    for l in param.layer:
        wiring = (l.name, l.type, ",".join(l.bottom) or "-", ",".join(l.top) or "-")
        built = net.layer_dict.get(l.name) if net is not None else None
        if not layer_included(l, state):
            tops, pshapes, count = "(not TEST)", "-", "-"
        elif built is None or l.name in unknown:
            tops, pshapes, count = "?", "?", "?"
        else:
            tops = _fmt_shapes([net.blobs[t].shape for t in l.top])
            pshapes = _fmt_shapes([b.shape for b in built.blobs]) if built.blobs else "-"
            n = sum(int(b.count) for b in built.blobs)
            total += n
            count = str(n) if built.blobs else "-"
        rows.append(wiring + (tops, pshapes, count, _quant(l) or "-"))
    _header(param, report, out)
    _table(rows, out)
    out.append(f"total: {len(param.layer)} layers, {total} parameters (TEST phase"
               + (", unknown layers not counted)" if unknown or net is None else ")"))
    if note:
        out.append(f"note: {note}")
    _notes(report, out)


def run(args) -> int:
    from google.protobuf import text_format

    from .. import io
    from ..io.blobs import blob_shape

    kind = io.file_kind(args.file)
    out = []
    if kind == "weights":
        net, report, arrays = io.load_weights(args.file, lazy=True)
        describe_net(net, report, out, arrays)
        _foreign(net, out)
    elif kind == "binaryproto":
        blob = io.read_blobproto(args.file)
        a = io.blob_to_array(blob, where=args.file)
        out.append(f"binaryproto: shape {list(a.shape)}, {a.size} values")
        if a.size:
            out.append(f"min {a.min():g}  max {a.max():g}  mean {a.mean():g}")
        _foreign(blob, out, "blob")
    elif kind == "solverstate":
        s = io.read_solverstate(args.file)
        out.append(f"solverstate: iter {s.iter}, current_step {s.current_step}, learned_net {s.learned_net!r}")
        out.append(f"history: {len(s.history)} blobs")
        for i, b in enumerate(s.history):
            out.append(f"  {i}: {_fmt_shapes([blob_shape(b)])}")
        _foreign(s, out, "solverstate")
    else:
        kind, msg, report = io.read_text_any(args.file)
        if kind == "net":
            describe_prototxt(args.file, msg, report, out)
        else:
            out.append(f"solver  dialect: {report.dialect}" + ("  (upgraded)" if report.upgraded else ""))
            out.append(text_format.MessageToString(msg).rstrip())
    print("\n".join(out))
    return 0
