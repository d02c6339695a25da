"""Export a built Net to other formats. ONNX: :func:`export_onnx` (needs the ``onnx`` extra).

    import caffelite as caffe
    net = caffe.Net("deploy.prototxt", "w.caffemodel", caffe.TEST)
    caffe.export_onnx(net, "deploy.onnx", dynamic_batch=True)
"""

from __future__ import annotations

import os

from ..errors import CaffeliteError
from .onnx_graph import DEFAULT_OPSET, MIN_OPSET, ExportError, require_onnx

__all__ = ["export_onnx", "check_net_param", "write_deploy_onnx", "ExportError", "DEFAULT_OPSET", "MIN_OPSET",
           "DATA_LAYER_TYPES"]

#: layer types that read a dataset: a net with one has no inputs to expose
DATA_LAYER_TYPES = ("Data", "ImageData", "ImageLabelData", "WindowData", "HDF5Data", "MemoryData", "DummyData",
                    "Python", "VideoData", "AnnotatedData")


def check_net_param(net_param):
    """Refuse a net that reads a dataset (a train/test net) before it is built, naming the input to expose."""
    for lp in net_param.layer:
        if lp.type in DATA_LAYER_TYPES or lp.type.endswith("Data"):
            raise ExportError(f"reads a dataset, so the net has no input to expose; export a deploy net whose "
                              f"input is an Input layer for top '{lp.top[0] if lp.top else '?'}' (no label, loss "
                              "or accuracy layers)", lp.name, lp.type)


def _check_inputs(net):
    check_net_param(net.net_param)
    if not net.outputs:
        raise ExportError(f"net '{net.name}' has no output blob (every top is consumed) to export")
    if not net.inputs:
        raise ExportError(f"net '{net.name}' has no Input layer to expose as the ONNX input")


def export_onnx(net, path, opset=DEFAULT_OPSET, dynamic_batch=False, fold_bn=False, input_shape=None,
                metadata=None, qdq_form="runtime"):
    """Write ``net`` (a built TEST-phase :class:`~caffelite.net.Net`) as an ONNX model at ``path``.

    ``opset``: ONNX opset (13 or newer); ``dynamic_batch``: a symbolic batch axis on inputs and outputs;
    ``fold_bn``: fold BatchNorm/Scale into the preceding convolutions; ``input_shape``: reshape the (single)
    input first, e.g. ``(1, 3, 512, 1024)``; ``metadata``: extra ``{key: value}`` model properties.
    A quantized net (``quantize: true``) must have run its calibrated simulation (see
    :mod:`caffelite.export.onnx_quant`); it is exported with QuantizeLinear/DequantizeLinear pairs, in the
    ``qdq_form`` "runtime" (the int8 pattern runtimes fuse; default) or "exact" (jacinto's quantizer bit for
    bit, see ``onnx_quant.QDQ_FORMS``).
    The model passes ``onnx.checker.check_model(full_check=True)`` and is written atomically.
    Raises :class:`ExportError` (naming the layer and the reason) for anything with no faithful mapping.
    Returns the ``onnx.ModelProto``.
    """
    onnx = require_onnx()
    from . import onnx_fold, onnx_neurons, onnx_quant  # noqa: F401 (onnx_neurons registers converters)
    from .onnx_graph import build_model, save_model
    from .onnx_layers import CONVERTERS

    _check_inputs(net)
    if qdq_form not in onnx_quant.QDQ_FORMS:
        raise CaffeliteError(f"qdq form {qdq_form!r}: expected one of {', '.join(onnx_quant.QDQ_FORMS)}")
    if input_shape is not None:
        if len(net.inputs) != 1:
            raise CaffeliteError(f"input shape: net '{net.name}' has {len(net.inputs)} inputs; reshape them "
                                 "on the net instead")
        net.blobs[net.inputs[0]].reshape(*[int(d) for d in input_shape])
        net.reshape()
    qhook = None
    if onnx_quant.QdqHook.wanted(net):
        sim = onnx_quant.check_ready(net, ExportError)
        if fold_bn:
            raise ExportError(f"net '{net.name}': --fold-bn would change the weights the quantized simulation "
                              "used; export the quantized net unfolded")
        qhook = onnx_quant.QdqHook(net, sim, qdq_form)
    folded, identities = onnx_fold.plan(net) if fold_bn else ({}, ())
    meta = {"caffelite_net": net.name, "caffelite_fold_bn": str(bool(fold_bn)).lower()}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    model = build_model(net, CONVERTERS, opset, dynamic_batch, hook=qhook, folded=folded, identities=identities)
    if qhook is not None:
        meta.update(qhook.metadata())
    onnx.helper.set_model_props(model, meta)
    save_model(model, os.fspath(path))
    return model


def write_deploy_onnx(net, path, model=None, weights=None, qdq_form="runtime"):
    """Write ``net`` (evaluated, its quantization simulation calibrated) to ``path`` when the onnx package is
    importable. Never raises for a missing package or a net with no faithful ONNX form (a pipeline step that
    must not stop the run): returns ``(path or None, one-line message saying what happened)``."""
    path = os.fspath(path)
    try:
        require_onnx()
        meta = {"source_model": os.path.abspath(model) if model else "",
                "source_weights": os.path.abspath(weights) if weights else ""}
        export_onnx(net, path, metadata=meta, qdq_form=qdq_form)
    except CaffeliteError as e:
        return None, f"not writing {path}: {e}"
    return path, f"wrote {path}"
