"""caffe-jacinto's dynamic fixed-point quantization as a Net hook (docs/jacinto-spec.md §b.1-§b.5, §b.7; 0.16 in
quant016.py).

Per forward k (the net's own counter, §b.2): at the start, if k >= quantization_start, flags are switched on
once (k == start, §b.3) and every layer's QuantizationParameter is re-estimated from the running ranges (§b.4);
after each quantizing layer's forward its flagged inputs, weights (only at k == start) and outputs are fake-
quantized in place (§b.5); at the end the running ranges are updated from the blobs as they are then, and
every ``display_quantization`` forwards the parameters are logged (§b.7). Forward 0 only measures ranges, so
the first forward equals the float forward.

The runtime QuantizationParameter lives in ``layer.param.quantization_param``, so ``net.to_proto()`` writes it
into the caffemodel as jacinto does. Beyond jacinto (qstate.py): ``freeze_ranges``, ``save_ranges`` and
``load_ranges`` make evaluation independent of image order; ``get_state``/``set_state`` make a resumed run
exact; in a data-parallel run the root's ranges (and randomly rounded weights) are broadcast. With frozen
ranges, set_params results are remembered (qmemo.py: the same values, less work per forward).

Convolutions and inner products of a quantizing forward sum exactly (``exact_sums``, on by default): their
quantized inputs and weights are integers times powers of two, so the float64 sums are exact and rounded once
to float32, and the bias is added after, as Caffe adds it. jacinto's own float32 sums (cuDNN's order) round
some of them, and so does every other float32 order, each differently: through the later quantizers a few such
roundings change about 0.2% of a segmentation net's labels. With exact sums the simulation is the same on every
machine, kernel and thread count, and it is what integer arithmetic (caffelite's int8 engine, ONNX runtimes,
TI's devices) computes.
"""

from __future__ import annotations


import numpy as np

from .. import backend
from .. import log as glog
from ..layer import TRAIN
from . import fixed_point as fp
from .qgraph import CONV_LIKE, LayerGraph
from .qmemo import ParamsMemo
from .qparams import format_qparams, write_qparams
from .qstate import RangeState
from .validate import QUANTIZABLE_TYPES, check_quantization

DFP = 1
#: layer types whose 0.17 Forward calls Quantize (§b.3), besides data layers
QUANTIZING_TYPES = ("Bias", "BatchNorm", "Concat", "Convolution", "Deconvolution", "Eltwise", "InnerProduct",
                    "Pooling", "PReLU", "ReLU", "Scale")


#: data layers whose Forward calls Quantize (jacinto's prefetching data layers, CPU forward; §b.3)
QUANTIZING_DATA_TYPES = ("Data", "ImageData", "ImageLabelData", "WindowData")


def is_data_type(t):
    """Any type whose lowercase name contains "data" gets flags (§b.3)."""
    return "data" in t.lower()


class QuantizationHook(RangeState):
    """Quantization state of one Net: the counter, the running ranges and the per-layer parameters.

    ``ties``: NEAREST tie-breaking ("even" = jacinto's GPU kernel, "away" = its CPU code); see fixed_point.
    """

    version = "0.17"
    #: with frozen ranges, remember set_params results (qmemo.py: the same protobuf values, bit for bit)
    memo_params = True
    #: quantizing forwards sum their convolutions exactly (module docstring); False: the float32 kernels' sums
    exact_sums = True

    def __init__(self, net, ties="even"):
        p = net.net_param
        check_quantization(p)
        self.net = net
        self.qnet = p.net_quantization_param
        self.enabled = bool(p.quantize) and self.qnet.quantization_start > 0
        self.start = int(self.qnet.quantization_start)
        self.ties = ties
        self.infer_count = 0
        self.frozen = False
        self.freeze_at = None  # freeze the ranges once this many forwards have updated them
        self.graph = LayerGraph(net)
        n = len(net.layers)
        # ranges: float64 host arrays [count, 2] of (min, max) per bottom / top / param blob
        self.r_in = [np.zeros((len(b), 2)) for b in self.graph.bottoms]
        self.r_out = [np.zeros((len(t), 2)) for t in self.graph.tops]
        self.r_w = [np.zeros((len(ly.blobs), 2)) for ly in net.layers]
        self._init_ranges_from_params()
        self.flags_on = [False] * n
        self._touched = []  # param arrays quantized with random rounding in the current forward
        self._memo = None  # ParamsMemo, made at the first set_params with frozen ranges
        #: the qmemo.ParamState the last set_params left (frozen ranges), else None
        self.param_state = None

    # -- wiring ---------------------------------------------------------------------------------------
    def attach(self):
        """Install the forward hooks on the net; returns self."""
        self.net.add_hook("forward_start", self._forward_start)
        self.net.add_hook("after_forward", self._after_forward)
        self.net.add_hook("forward_end", self._forward_end)
        return self

    def detach(self):
        """Remove every hook :meth:`attach` installed (so another version's hook can replace this one)."""
        self._set_exact_sums(False)
        for event in ("before_forward", "forward_start", "after_forward", "forward_end"):
            fns = getattr(self.net.hooks, event)
            for fn in list(fns):
                if getattr(fn, "__self__", None) is self:
                    fns.remove(fn)

    def _forward_start(self, net):
        if not self.enabled:
            return
        k = self.infer_count
        if k >= self.start:
            if k == self.start:
                self.enable_selected_layers(k)
            self.set_params(k)
        self._set_exact_sums(self.exact_sums and k >= self.start)

    def _set_exact_sums(self, on):
        """Flag the convolutions and inner products whose weights this forward quantizes: they sum exactly (module
        docstring)."""
        for i, ly in enumerate(self.net.layers):
            if ly.param.type in ("Convolution", "InnerProduct"):
                qw = self._qp(i).qparam_w if ly.param.HasField("quantization_param") else ()
                ly.exact_sums = bool(on and qw and qw[0].quantize)

    def _after_forward(self, net, i, layer, bottom, top):
        if self.enabled and self.infer_count >= self.start and self._quantizes(layer.param.type):
            self.quantize_layer(i, layer, bottom, top)

    def _forward_end(self, net):
        if not self.enabled:
            return
        k = self.infer_count
        if self.qnet.update_quantization_param and not self.frozen:
            self.update_ranges(k)
            self.share_ranges()
            if self.freeze_at is not None and k + 1 >= self.freeze_at:
                self.frozen = True
        self.share_weights()
        d = self.qnet.display_quantization
        if k >= self.start and d > 0 and k % d == 0:
            self.display(k)
        self.infer_count = k + 1

    def _quantizes(self, t):
        return t in QUANTIZING_TYPES or t in QUANTIZING_DATA_TYPES

    # -- ranges ---------------------------------------------------------------------------------------
    def _init_ranges_from_params(self):
        """Ranges from the net's own (prototxt) quantization_param min/max (CopyQuantizationRangeInLayers)."""
        self.set_ranges_from_layers([ly.param for ly in self.net.layers])

    def update_ranges(self, k):
        """Running ranges from the blobs after forward ``k`` (§b.4): activations ×E, averaged; weights exact."""
        f32 = np.float32
        e = f32(self.qnet.range_expansion_factor)
        beta = f32(1.0) if k == 0 else f32(self.qnet.range_update_factor)
        cache = {}

        def minmax(blob):
            key = id(blob.data)
            if key not in cache:
                d = blob.data
                xp = backend.get_array_module(d)
                mm = backend.to_numpy(xp.stack([d.min(), d.max()])) if d.size else np.zeros(2)
                cache[key] = mm.astype(np.float32)
            return cache[key]

        def blend(old, new):
            return (f32(1) - beta) * old.astype(np.float32) + beta * new

        for i in range(len(self.net.layers)):
            for j, b in enumerate(self.net.bottom_vecs(i)):
                self.r_in[i][j] = blend(self.r_in[i][j], minmax(b) * e)
            for j, t in enumerate(self.net.top_vecs(i)):
                self.r_out[i][j] = blend(self.r_out[i][j], minmax(t) * e)
            for j, w in enumerate(self.net.layers[i].blobs):
                self.r_w[i][j] = minmax(w)

    # -- flags and parameters -------------------------------------------------------------------------
    def _qp(self, i):
        return self.net.layers[i].param.quantization_param

    def enable_selected_layers(self, k):
        """EnableQuantizationForSelectedLayers (§b.3): weights of conv-like layers, non-merged outputs."""
        q = self.qnet
        if not q.update_quantization_param:
            return
        glog.info(f"Enabling quantization flag in quantization_param at infer/iter index: {k}", "net.cpp:1938")
        ignored = set(q.ignored_layer_names)
        for i, ly in enumerate(self.net.layers):
            t = ly.param.type
            if not (t in QUANTIZABLE_TYPES or is_data_type(t)) or ly.param.name in ignored:
                continue
            qp = self._qp(i)
            self._size(qp, i)
            self.flags_on[i] = True
            if q.quantize_weights and t in CONV_LIKE:
                for qw in qp.qparam_w:
                    qw.quantize = True
            if q.quantize_activations and not self.graph.merged(i):
                outs = qp.qparam_out[:1] if is_data_type(t) else qp.qparam_out
                for qo in outs:
                    qo.quantize = True
                glog.info(f"Enabling quantization at output of: {t} {ly.param.name}", "net.cpp:1979")

    def _size(self, qp, i):
        for group, n in ((qp.qparam_in, len(self.graph.bottoms[i])), (qp.qparam_w, len(self.net.layers[i].blobs)),
                         (qp.qparam_out, len(self.graph.tops[i]))):
            while len(group) < n:
                group.add()

    def set_params(self, k):
        """SetQuantizationParams (§b.4) for every quantizable layer at forward ``k``; with frozen ranges, a repeated
        set of inputs writes the remembered result (:mod:`caffelite.jacinto.qmemo`)."""
        self.param_state = None
        if self.frozen and self.memo_params:
            if self._memo is None:
                self._memo = ParamsMemo(self)
            self.param_state = self._memo.set_params(k, self._set_params)
        else:
            self._set_params(k)

    def _set_params(self, k):
        q = self.qnet
        train = self.net.phase == TRAIN
        for i, ly in enumerate(self.net.layers):
            t = ly.param.type
            if not (t in QUANTIZABLE_TYPES or is_data_type(t)):
                continue
            qp = self._qp(i)
            self._size(qp, i)
            qp.precision = q.precision
            qp.rounding_scheme = fp.STOCHASTIC if train else q.rounding_scheme
            qp.power2_scale_weights = q.power2_scale_weights
            qp.power2_scale_activations = q.power2_scale_activations
            qp.quantized_infer_count = k - self.start
            for b, qw in enumerate(qp.qparam_w):
                bw = q.bitwidth_bias if (t == "BatchNorm" or b > 0) else q.bitwidth_weights
                mn, mx = self.r_w[i][b]
                write_qparams(qw, fp.estimate(mn, mx, bw, q.power2_scale_weights, mn >= 0, q.apply_offset_weights,
                                       qw.scale_applied))
            for j, qi in enumerate(qp.qparam_in):
                src = self.graph.writer[i][j]
                if src is not None:
                    so = self._qp(src[0]).qparam_out
                    if src[1] < len(so) and so[src[1]].HasField("scale_applied"):
                        qi.scale_applied = so[src[1]].scale_applied
                mn, mx = self.r_in[i][j]
                write_qparams(qi, fp.estimate(mn, mx, q.bitwidth_activations, q.power2_scale_activations, mn >= 0,
                                       q.apply_offset_activations, qi.scale_applied))
                if qi.quantize:
                    qi.scale_applied = qi.scale_target
            conv = t in CONV_LIKE and len(qp.qparam_w) > 0
            if conv:
                sa = max([qi.scale_applied for qi in qp.qparam_in], default=1.0) if qp.qparam_in else 1.0
                sa = float(np.float32(sa) * np.float32(qp.qparam_w[0].scale_target))
            for j, qo in enumerate(qp.qparam_out):
                if conv:
                    qo.scale_applied = sa
                mn, mx = self.r_out[i][j]
                write_qparams(qo, fp.estimate(mn, mx, q.bitwidth_activations, q.power2_scale_activations, mn >= 0,
                                       q.apply_offset_activations, qo.scale_applied))
                if conv and j > 0:
                    qo.scale_target = float(np.float32(qp.qparam_out[0].scale_target)
                                            * np.float32(qp.qparam_w[0].scale_target))
                if qo.quantize:
                    qo.scale_applied = qo.scale_target

    # -- the quantizer --------------------------------------------------------------------------------
    def _apply(self, arr, qq, rounding, clip):
        fp.quantize(arr, qq.scale_target, qq.offset, qq.bitwidth, qq.unsigned_quant, rounding, clip,
                    self.ties, out=arr)

    def _apply_weights(self, arr, qq, rounding, clip):
        """Quantize a param blob in place; remember it when the rounding was random (see share_weights)."""
        self._apply(arr, qq, rounding, clip)
        if rounding == fp.STOCHASTIC:
            self._touched.append(arr)

    def quantize_layer(self, i, layer, bottom, top):
        """Quantize (§b.5) at the end of layer ``i``'s forward: flagged inputs, weights once, outputs."""
        if not layer.param.HasField("quantization_param"):
            return
        qp = layer.param.quantization_param
        if qp.precision != DFP:
            return
        r = qp.rounding_scheme
        for j, qi in enumerate(qp.qparam_in):
            if qi.quantize and j < len(bottom):
                self._apply(bottom[j].data, qi, r, True)
        if qp.quantized_infer_count == 0:
            for b, qw in enumerate(qp.qparam_w):
                if qw.quantize and b < len(layer.blobs):
                    self._apply_weights(layer.blobs[b].data, qw, r, b == 0)  # biases are not clipped
        for j, qo in enumerate(qp.qparam_out):
            if qo.quantize and j < len(top):
                self._apply(top[j].data, qo, r, True)

    # -- display --------------------------------------------------------------------------------------
    def display(self, k):
        """Net::DisplayQuantizationParams (§b.7)."""
        phase = "Train" if self.net.phase == TRAIN else "Test"
        glog.info(f"Quantizing the net: {self.net.name} {phase}", "net.cpp:2050")
        for line in self.display_lines():
            glog.info(line, "net.cpp:2060")

    def display_lines(self):
        """The lines :meth:`display` logs: :meth:`_display_layer`'s lines for every layer with quantization_param."""
        out = []
        for i, ly in enumerate(self.net.layers):
            if ly.param.HasField("quantization_param"):
                out.extend(self._display_layer(i, ly.param.name, ly.param.quantization_param))
        return out

    def _display_layer(self, i, name, qp):
        """One line per labelled group, all of the group's quantized params on it."""
        groups = [(" Q weights:", qp.qparam_w[:1]), (" Q bias:", qp.qparam_w[1:2]),
                  (" Q input :", qp.qparam_in), (" Q output:", qp.qparam_out[:1])]
        out = []
        for label, group in groups:
            fields = [format_qparams(q) for q in group if q.quantize]
            if fields:
                out.append(f"{label}{i} Name:{name} " + " ".join(fields))
        return out
