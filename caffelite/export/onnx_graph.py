"""The ONNX graph of a built Net: tensor naming, initializers, the layer walk and the atomic write.

Caffe blobs are rewritten in place (conv -> BatchNorm -> ReLU share one blob); ONNX tensors are written once.
:class:`GraphBuilder` keeps, per Caffe blob, the name of its current ONNX tensor: each layer reads its bottoms'
current names and gives every top a fresh name, and the net's outputs are renamed back to the Caffe blob names at
the end. The per-type mappings live in :mod:`caffelite.export.onnx_layers`; a hook object may add nodes after a
layer (the quantization of :mod:`caffelite.export.onnx_quant`) through ``after_layer(builder, i)``.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CaffeliteError, NetError

#: the oldest opset any mapping uses; ops that need newer ones (Softmax over one axis, Split/ReduceSum/Unsqueeze
#: with an input instead of an attribute: 13) check it themselves and name the layer
MIN_OPSET = 11
DEFAULT_OPSET = 17


class ExportError(NetError):
    """A net (or one of its layers) that has no faithful ONNX form; the message says which and why."""


def require_onnx():
    """Import and return the ``onnx`` package, or raise a one-line error naming the extra to install."""
    try:
        import onnx
    except ImportError:
        raise CaffeliteError("ONNX export needs the onnx package: pip install 'caffelite[onnx]'") from None
    return onnx


class GraphBuilder:
    """Nodes, initializers and the Caffe-blob -> ONNX-tensor map of one export.

    ``net``: a built :class:`~caffelite.net.Net` whose blobs have their export shapes (reshape first);
    ``opset``; ``dynamic_batch``: the first axis of inputs and outputs is symbolic (``N``).
    """

    def __init__(self, net, opset=DEFAULT_OPSET, dynamic_batch=False):
        self.onnx = require_onnx()
        self.net = net
        self.opset = int(opset)
        self.dynamic_batch = bool(dynamic_batch)
        self.nodes = []
        self.initializers = []
        self.current = {}   # Caffe blob name -> current ONNX tensor name
        self._used = set()
        self.layer = None   # index of the layer being converted (for errors and names)
        self.hook = None    # optional: param(builder, layer, k, w), after_layer(builder, i), and (when present)
        # conv(builder, layer) / inner_product(builder, layer, flat, axis), True when they wrote the layer
        self.folded = {}    # conv layer index -> (scale, shift) of the BatchNorm/Scale folded into it

    # -- names ----------------------------------------------------------------------------------------
    def fresh(self, hint):
        """A tensor name not used yet, ``hint`` itself when free."""
        name, k = hint, 1
        while name in self._used:
            name = f"{hint}_{k}"
            k += 1
        self._used.add(name)
        return name

    def bottom(self, j):
        """The current ONNX name of bottom ``j`` of the layer being converted."""
        return self.current[self.net.bottom_ids(self.layer)[j]]

    def top(self, j):
        """A fresh ONNX name for top ``j`` of the layer being converted (it becomes the blob's current name)."""
        blob = self.net.top_ids(self.layer)[j]
        name = self.fresh(blob if blob not in self.current else f"{blob}/{self.layer_name}")
        self.current[blob] = name
        return name

    def set_current(self, blob, name):
        self.current[blob] = name

    @property
    def layer_name(self):
        return self.net.layer_name(self.layer)

    @property
    def layer_type(self):
        return self.net.layers[self.layer].param.type

    def bottom_shape(self, j):
        return tuple(self.net.bottom_vecs(self.layer)[j].shape)

    def top_shape(self, j):
        return tuple(self.net.top_vecs(self.layer)[j].shape)

    # -- graph pieces ---------------------------------------------------------------------------------
    def node(self, op, inputs, outputs=None, hint=None, **attrs):
        """Append one node; ``outputs`` default to one fresh name from ``hint``. Returns the output name(s)."""
        if outputs is None:
            outputs = [self.fresh(hint or f"{self.layer_name}/{op}")]
        n = self.onnx.helper.make_node(op, list(inputs), list(outputs), name=self.fresh(f"{self.layer_name}/{op}#"),
                                       **attrs)
        self.nodes.append(n)
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def const(self, hint, array, dtype=np.float32):
        """An initializer holding ``array`` (cast to ``dtype``); returns its name."""
        a = np.array(array, dtype=dtype, order="C")  # 0-d stays 0-d (ascontiguousarray would make it 1-d)
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(a, name))
        return name

    def param(self, layer, k):
        """The ONNX name of param blob ``k`` of ``layer`` (a convolution's or InnerProduct's W or bias): the
        BatchNorm folded into it (``--fold-bn``) is applied; a hook may give it as integers + DequantizeLinear."""
        from .onnx_layers import weights

        w = weights(layer, k) if k < len(layer.blobs) else np.zeros(int(layer.num_output), np.float32)
        fold = self.folded.get(self.layer)
        if fold is not None:
            scale, shift = fold
            if k == 0:
                w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
            else:
                w = w * scale + shift
        if self.hook is not None and fold is None:
            name = self.hook.param(self, layer, k, w)
            if name is not None:
                return name
        return self.const(f"{self.layer_name}/{'W' if k == 0 else 'b'}", w)

    def shape_const(self, shape, keep_batch=True):
        """An int64 shape for Reshape; the batch axis is 0 ("copy the input's") in a dynamic-batch export."""
        s = [int(d) for d in shape]
        if self.dynamic_batch and keep_batch and s:
            s[0] = 0
        return self.const(f"{self.layer_name}/shape", s, np.int64)

    def reshape(self, x, shape, output=None):
        """Reshape ``x`` to ``shape`` (the Caffe top shape, batch axis kept)."""
        return self.node("Reshape", [x, self.shape_const(shape)], [output] if output else None)

    def need_opset(self, n, why):
        if self.opset < n:
            raise self.error(f"opset {self.opset} is too old: {why} needs opset >= {n}")

    def error(self, message):
        return ExportError(message, self.layer_name, self.layer_type)

    def check_batch_kept(self, in_shape, out_shape):
        """In a dynamic-batch export a layer must keep the batch axis as the first axis."""
        if self.dynamic_batch and (not out_shape or not in_shape or out_shape[0] != in_shape[0]):
            raise self.error(f"changes the batch axis ({list(in_shape)} -> {list(out_shape)}), so the export "
                             "cannot have a dynamic batch; drop --dynamic-batch")


def _value_info(onnx, name, shape, dynamic_batch):
    dims = list(shape)
    if dynamic_batch and dims:
        dims[0] = "N"
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)


def build_model(net, converters, opset=DEFAULT_OPSET, dynamic_batch=False, hook=None, folded=None, identities=()):
    """The ``onnx.ModelProto`` of ``net``: one converter per layer (``converters[type](builder, layer)``),
    ``hook.after_layer(builder, i)`` after each, inputs/outputs named as the Caffe blobs.

    ``folded``: conv layer index -> (scale, shift) folded into its weights; ``identities``: indices of the
    layers folded away (their tops become their bottoms)."""
    onnx = require_onnx()
    if not MIN_OPSET <= int(opset) <= onnx.defs.onnx_opset_version():
        raise CaffeliteError(f"--opset {opset}: this export supports opsets {MIN_OPSET} to "
                             f"{onnx.defs.onnx_opset_version()} (the installed onnx package's newest)")
    g = GraphBuilder(net, opset, dynamic_batch)
    g.hook = hook
    g.folded = dict(folded or {})
    identities = set(identities)
    inputs = []
    for name in net.inputs:
        g.fresh(name)
        g.set_current(name, name)
        inputs.append(_value_info(onnx, name, net.blobs[name].shape, dynamic_batch))
    for i, layer in enumerate(net.layers):
        g.layer = i
        t = layer.param.type
        if i in identities:
            g.set_current(net.top_ids(i)[0], g.bottom(0))
            continue
        conv = converters.get(t)
        if conv is None:
            raise g.error(f"layer type {t} has no ONNX mapping in caffelite")
        conv(g, layer)
        if hook is not None:
            hook.after_layer(g, i)
    outputs = []
    renames = {}
    for name in net.outputs:
        cur = g.current[name]
        if cur != name and name not in g._used:  # a pass-through top (Split, Dropout): copy under its name
            g.nodes.append(onnx.helper.make_node("Identity", [cur], [name], name=g.fresh(f"{name}/Identity#")))
        elif cur != name and name in net.inputs:
            raise ExportError(f"output blob '{name}' is the input blob rewritten in place: ONNX needs different "
                              "names for the input and the output; give the last in-place layer its own top")
        elif cur != name:  # the first version of an in-place blob holds the Caffe name: swap the two
            renames[name], renames[cur] = f"{name}/first", name
        outputs.append(_value_info(onnx, name, net.blobs[name].shape, dynamic_batch))
    for n in g.nodes:
        n.input[:] = [renames.get(x, x) for x in n.input]
        n.output[:] = [renames.get(x, x) for x in n.output]
    graph = onnx.helper.make_graph(g.nodes, net.name or "caffelite_net", inputs, outputs, g.initializers)
    model = onnx.helper.make_model(graph, producer_name="caffelite",
                                   opset_imports=[onnx.helper.make_opsetid("", int(opset))])
    model.ir_version = min(model.ir_version, _max_ir(onnx, int(opset)))
    return model


def _max_ir(onnx, opset):
    """The IR version that goes with ``opset`` (runtimes reject a newer IR than they know)."""
    for ir_tuple in onnx.helper.VERSION_TABLE:  # (release, ir, ai.onnx opset, ...)
        if ir_tuple[2] == opset:
            return ir_tuple[1]
    return onnx.IR_VERSION


def save_model(model, path):
    """Check ``model`` (``full_check``: shapes and types inferred) and write it atomically (temp + rename)."""
    onnx = require_onnx()
    from ..io.files import atomic_write

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # the checker's own exception types vary between onnx releases
        raise CaffeliteError(f"{os.fspath(path)}: the ONNX checker rejected the exported model: "
                             f"{str(e).strip().splitlines()[0]}") from e
    atomic_write(path, model.SerializeToString())
