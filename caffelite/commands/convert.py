"""Rewrite a net/solver prototxt, caffemodel, binaryproto or solverstate in the jacinto or BVLC dialect.

``--to bvlc``: blobs as packed ``data``, jacinto BatchNorm (5 blobs / scale_bias) split into BVLC BatchNorm
(mean, var, scale factor 1) + Scale ``<bn>/scale``, jacinto-only fields removed (listed on stderr).
``--to jacinto``: blobs as ``raw_data`` FLOAT (caffe-jacinto's Net::ToProto), BVLC BatchNorm + Scale merged
into one jacinto BatchNorm (statistics divided by the scale factor), BVLC-only fields listed on stderr.
"""

from __future__ import annotations

import sys


def add_arguments(parser):
    parser.add_argument("--to", required=True, choices=("jacinto", "bvlc"), help="target dialect")
    parser.add_argument("input", help="prototxt, .caffemodel(.xz), .binaryproto or .solverstate")
    parser.add_argument("output", help="where to write the converted file")


def run(args) -> int:
    from google.protobuf import text_format

    from .. import io
    from ..io.dialects import NetReport, jacinto_msg_to_bvlc
    from ..io.blobs import convert_blob_form

    kind = io.file_kind(args.input)
    to = args.to
    if kind == "weights":
        net, report = io.read_weights_ex(args.input)
        if to == "bvlc":
            report.dropped.clear()  # BVLC-only fields kept as unknown fields come back in BVLC form
        if to == "bvlc":  # before the change of class: BVLC's BlobProto has no raw_data to convert from
            for l in net.layer:
                for i, b in enumerate(l.blobs):
                    convert_blob_form(b, to, where=f"{args.input}: layer '{l.name}' blob {i}")
        # to jacinto, blobs are re-encoded while streaming out (no converted copy of the values in memory)
        io.write_weights(io.convert_net(net, to, report), args.output, form="jacinto" if to == "jacinto" else None)
    elif kind == "binaryproto":
        report = NetReport("jacinto017", args.input)
        # the message itself, not its values: legacy 4-D dims and other forks' fields are written back as read
        blob = convert_blob_form(io.read_blobproto(args.input), to, where=args.input)
        io.atomic_write(args.output, blob.SerializeToString())
    elif kind == "solverstate":
        report = NetReport("jacinto017", args.input)
        state = io.read_solverstate(args.input)
        for b in state.history:
            convert_blob_form(b, to)
        io.write_solverstate(state, args.output)
    else:
        kind, msg, report = io.read_text_any(args.input)
        if to == "bvlc":
            report.dropped.clear()
        if kind == "net":
            out = io.convert_net(msg, to, report)
        else:
            out = jacinto_msg_to_bvlc(msg, "SolverParameter", report) if to == "bvlc" else msg
        io.atomic_write(args.output, text_format.MessageToString(out).encode())
    # dropped fields were already logged as warnings by NetReport.drop; summarise the count
    if report.dropped:
        print(f"{args.input}: {len(report.dropped)} field(s) not representable in {to} were dropped",
              file=sys.stderr)
    print(f"{args.input}: {kind} ({report.dialect}) -> {args.output} ({to})", file=sys.stderr)
    return 0
