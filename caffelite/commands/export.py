"""Export a deploy net and its weights to ONNX: ``caffelite export --model M --weights W --onnx out.onnx``.

Every layer maps to standard ONNX ops with Caffe's semantics (a layer with no faithful mapping is an error that
names it); a quantized net (``quantize: true``) is exported with QuantizeLinear/DequantizeLinear pairs that
reproduce caffe-jacinto's fixed-point simulation, from the ranges stored in a quantized caffemodel or given with
``--quant-ranges FILE``. Needs the onnx package (``pip install 'caffelite[onnx]'``).
"""

from __future__ import annotations

import logging
import os

from ..errors import CaffeliteError


def _shape(text):
    try:
        dims = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        dims = []
    if not dims or min(dims) <= 0:
        raise CaffeliteError(f"--input-shape {text!r}: expected positive integers like 1,3,512,1024")
    return dims


def add_arguments(p):
    p.add_argument("--model", required=True, help="deploy net prototxt (inputs are Input layers)")
    p.add_argument("--weights", default=None, help="caffemodel (.xz accepted)")
    p.add_argument("--onnx", required=True, help="output .onnx file (written atomically)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17; 13 or newer)")
    p.add_argument("--dynamic-batch", "--dynamic_batch", dest="dynamic_batch", action="store_true",
                   help="make the batch axis of inputs and outputs symbolic")
    p.add_argument("--fold-bn", "--fold_bn", dest="fold_bn", action="store_true",
                   help="fold BatchNorm/Scale into the preceding convolutions (float nets)")
    p.add_argument("--input-shape", "--input_shape", dest="input_shape", default=None,
                   help="reshape the input first, e.g. 1,3,512,1024")
    p.add_argument("--quant-ranges", "--quant_ranges", dest="quant_ranges", default=None, metavar="FILE",
                   help="quantized nets: ranges saved by `caffelite test --quant-ranges save FILE` (default: the "
                        "quantization_param stored in the caffemodel)")
    p.add_argument("--qdq-form", "--qdq_form", dest="qdq_form", choices=("runtime", "exact"), default="runtime",
                   help="quantized nets: 'runtime' (default) writes QuantizeLinear(x, 1/s) -> DequantizeLinear, the "
                        "int8 pattern OpenVINO/TensorRT fuse; 'exact' rounds x*s in float64 first, as the "
                        "simulation does, so the quantizer matches it bit for bit in ONNX Runtime (float64 ops "
                        "that int8 runtimes do not fuse)")


def run(args) -> int:
    from ..export import DEFAULT_OPSET, check_net_param, export_onnx, onnx_graph

    onnx_graph.require_onnx()
    shape = _shape(args.input_shape) if args.input_shape else None
    from .. import io
    from ..export import onnx_quant
    from ..layer import TEST
    from ..net import Net

    param, report = io.read_net_ex(args.model)
    check_net_param(param)
    lg = logging.getLogger("caffelite")
    old = lg.level
    if not os.environ.get("GLOG_minloglevel"):
        lg.setLevel(logging.WARNING)  # building a net logs every layer at INFO: keep the output to one line
    try:
        net = Net(param, TEST)
        if args.weights:
            net.copy_from(args.weights)
    finally:
        lg.setLevel(old)
    if shape is not None and len(net.inputs) == 1:
        net.blobs[net.inputs[0]].reshape(*shape)
        net.reshape()
        shape = None
    if onnx_quant.QdqHook.wanted(net):
        onnx_quant.prepare(net, args.weights, args.quant_ranges, error=CaffeliteError)
    meta = {"source_model": os.path.abspath(args.model), "source_weights": os.path.abspath(args.weights or ""),
            "source_dialect": report.dialect}
    export_onnx(net, args.onnx, opset=args.opset or DEFAULT_OPSET, dynamic_batch=args.dynamic_batch,
                fold_bn=args.fold_bn, input_shape=shape, metadata=meta, qdq_form=args.qdq_form)
    print(f"wrote {args.onnx}")
    return 0
