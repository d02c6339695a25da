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


def convert_net(net, report, to):
    """Convert an in-memory (jacinto-class) net read with ``report`` to dialect ``to``; return the message
    to write (BVLC class for ``to='bvlc'``)."""
    from ..dialects import jacinto_msg_to_bvlc
    from ..io_bn import bvlc_bn_to_jacinto, jacinto_bn_to_bvlc

    if to == "bvlc":
        if report.dialect != "bvlc":
            jacinto_bn_to_bvlc(net)
        return jacinto_msg_to_bvlc(net, "NetParameter", report)
    if report.dialect == "bvlc":
        bvlc_bn_to_jacinto(net, report)
    net.DiscardUnknownFields()  # BVLC-only options (already reported) have no place in a jacinto file
    return net


def run(args) -> int:
    from google.protobuf import text_format

    from .. import io
    from ..dialects import NetReport, jacinto_msg_to_bvlc
    from ..io_blob import convert_blob_form

    kind = io.file_kind(args.input)
    to = args.to
    if kind == "weights":
        net, report = io.read_weights_ex(args.input)
        if to == "bvlc":
            report.dropped.clear()  # BVLC-only fields kept as unknown fields come back in BVLC form
        for l in net.layer:
            for i, b in enumerate(l.blobs):
                convert_blob_form(b, to, where=f"{args.input}: layer '{l.name}' blob {i}")
        out = convert_net(net, report, to)
        if to == "jacinto":  # BatchNorm merging writes fresh blobs; make sure all are in the target form
            for l in out.layer:
                for b in l.blobs:
                    convert_blob_form(b, to)
        io.atomic_write(args.output, out.SerializeToString())
    elif kind == "binaryproto":
        report = NetReport("jacinto017", args.input)
        io.write_binaryproto(io.read_binaryproto(args.input), args.output, form=to)
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
            out = convert_net(msg, report, to)
        else:
            out = jacinto_msg_to_bvlc(msg, "SolverParameter", report) if to == "bvlc" else msg
        io.atomic_write(args.output, text_format.MessageToString(out).encode())
    for d in report.dropped:
        print(f"warning: {args.input}: {d} not representable in {to}; dropped", file=sys.stderr)
    print(f"{args.input}: {kind} ({report.dialect}) -> {args.output} ({to})", file=sys.stderr)
    return 0
