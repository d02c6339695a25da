"""Upgrade a legacy net or solver prototxt, or a caffemodel, to the current format (keeps its dialect).

Like BVLC's ``upgrade_net_proto_text`` / ``upgrade_net_proto_binary`` / ``upgrade_solver_proto_text`` in one
command: the kind of file (text net, text solver, binary caffemodel) is detected. A BVLC file stays BVLC; a
caffemodel keeps its blob encoding (BVLC packed ``data`` or jacinto ``raw_data``).
"""

from __future__ import annotations

import os
import sys


def add_arguments(parser):
    parser.add_argument("input", help="net/solver prototxt or .caffemodel (.xz accepted)")
    parser.add_argument("output", help="where to write the upgraded file")


def run(args) -> int:
    from google.protobuf import text_format

    from .. import io
    from ..errors import FileFormatError
    from ..io.upgrade import upgrade_solver

    kind = io.file_kind(args.input)
    if kind in ("binaryproto", "solverstate"):
        raise FileFormatError(args.input, f"a {kind} has no legacy format to upgrade")
    if kind == "weights":
        net, report = io.read_weights_ex(args.input)
        io.write_weights(net, args.output, form=report.form if report.form in ("jacinto", "bvlc") else "bvlc"
                         if report.dialect == "bvlc" else "jacinto")
        what = "caffemodel"
    else:
        kind, msg, report = io.read_text_any(args.input)
        if kind == "solver":
            # upgrade in the file's own dialect, so BVLC-only solver fields (weights, layer_wise_reduce) stay
            raw, name = io._parse_text_any(io.read_bytes(args.input).decode("utf-8", "replace"),
                                           "SolverParameter", args.input)
            upgrade_solver(raw, args.input)
            io.atomic_write(args.output, text_format.MessageToString(raw).encode())
        else:
            io.write_text(msg, args.output, "bvlc" if report.dialect == "bvlc" else "jacinto017")
        what = f"{kind} prototxt"
    state = "upgraded" if report.upgraded else "already current; rewritten"
    print(f"{args.input}: {what} ({report.dialect}) {state} -> {os.fspath(args.output)}", file=sys.stderr)
    return 0
