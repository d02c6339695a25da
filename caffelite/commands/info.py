"""Describe a net or solver prototxt, a caffemodel, a binaryproto or a solverstate.

For nets: the dialect, then one row per layer (name, type, bottoms, tops, blob shapes, parameter count,
fraction of zero weights, quantization parameters) and totals. Shapes and counts come from the blobs, so
they are shown for caffemodels; a prototxt shows the wiring.
"""

from __future__ import annotations

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
                parts.append(f"{name[7:]}:{p.bitwidth}b/{p.fracbits}f")
    return " ".join(parts) or "quantization_param"


def _fmt_shapes(shapes):
    return ",".join("x".join(str(d) for d in s) or "scalar" for s in shapes) or "-"


def describe_net(net, report, out):
    """Print the layer table of ``net`` to ``out`` (a list of lines)."""
    from ..io_blob import blob_shape, blob_to_array

    rows = [("name", "type", "bottoms", "tops", "blobs", "params", "zeros", "quant")]
    total_params = total_zeros = 0
    for l in net.layer:
        shapes, count, zeros = [], 0, 0
        for i, b in enumerate(l.blobs):
            shapes.append(blob_shape(b))
            a = blob_to_array(b, where=f"layer '{l.name}' blob {i}")
            count += a.size
            zeros += int(np.count_nonzero(a == 0))
        total_params += count
        total_zeros += zeros
        rows.append((l.name, l.type, ",".join(l.bottom) or "-", ",".join(l.top) or "-", _fmt_shapes(shapes),
                     str(count) if l.blobs else "-", f"{zeros / count:.3f}" if count else "-", _quant(l) or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    out.append(f"net: {net.name or '(unnamed)'}  dialect: {report.dialect}"
               + (f"  blobs: {report.form}" if report.form else "") + ("  (upgraded from a legacy format)"
                                                                       if report.upgraded else ""))
    if net.quantize:
        out.append("quantize: true")
    for r in rows:
        out.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    frac = f"{total_zeros / total_params:.3f}" if total_params else "-"
    out.append(f"total: {len(net.layer)} layers, {total_params} parameters, zero fraction {frac}")
    for d in report.dropped:
        out.append(f"note: {d} (no caffe-jacinto field)")


def run(args) -> int:
    from google.protobuf import text_format

    from .. import io
    from ..io_blob import blob_shape

    kind = io.file_kind(args.file)
    out = []
    if kind == "weights":
        net, report = io.read_weights_ex(args.file)
        describe_net(net, report, out)
    elif kind == "binaryproto":
        a = io.read_binaryproto(args.file)
        out.append(f"binaryproto: shape {list(a.shape)}, {a.size} values")
        if a.size:
            out.append(f"min {a.min():g}  max {a.max():g}  mean {a.mean():g}")
    elif kind == "solverstate":
        s = io.read_solverstate(args.file)
        out.append(f"solverstate: iter {s.iter}, current_step {s.current_step}, learned_net {s.learned_net!r}")
        out.append(f"history: {len(s.history)} blobs")
        for i, b in enumerate(s.history):
            out.append(f"  {i}: {_fmt_shapes([blob_shape(b)])}")
    else:
        kind, msg, report = io.read_text_any(args.file)
        if kind == "net":
            describe_net(msg, report, out)
        else:
            out.append(f"solver  dialect: {report.dialect}" + ("  (upgraded)" if report.upgraded else ""))
            out.append(text_format.MessageToString(msg).rstrip())
    print("\n".join(out))
    return 0
