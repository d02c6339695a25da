"""caffe-jacinto 0.16 quantization (docs/jacinto-spec.md §b.6), what produced the reference test_quantize log.

Differences from 0.17 (quantization.py): flags set by AddQuantizationParams (conv-like weights blob 0 only,
output flags by the next layer's type); one output range per layer over all its tops and one per weight
blob 0, replaced with expansion 2.0 for every k <= start, then averaged ``0.9 r + 0.1 new`` with expansion 1.2
(1.0 with power-of-2 ranges); 0.16 scale formulas (fixed_point.estimate_016, no scale_applied chaining);
rounding from the net setting in TRAIN too. Only the layers that quantized in the GPU build behind the
reference logs do so: Convolution, InnerProduct, Eltwise and ReLU at the start and the end of their forward
(weights before use), Concat at the end. (Deconvolution and Scale quantized only in 0.16's CPU code.)
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import log as glog
from . import fixed_point as fp
from .qgraph import CONV_LIKE
from .qparams import QPARAM_FIELDS_016, format_qparams, write_qparams
from .quantization import QuantizationHook

START_AND_END = ("Convolution", "InnerProduct", "Eltwise", "ReLU")
END_ONLY = ("Concat",)


class Quantization016Hook(QuantizationHook):
    """0.16 behaviour on the same hook points (the 0.17 QuantizationParameter message holds the values)."""

    version = "0.16"

    def __init__(self, net, ties="even"):
        super().__init__(net, ties)
        n = len(net.layers)
        self.r_out1 = np.zeros((n, 2))  # one range per layer output (over all tops)
        self.r_w1 = np.zeros((n, 2))    # one per weights (blob 0)
        self.power2 = bool(self.qnet.power2_scale_activations or self.qnet.power2_scale_weights)

    def attach(self):
        self.net.add_hook("before_forward", self._before_forward)
        return super().attach()

    def _quantizes(self, t):
        return t in START_AND_END or t in END_ONLY

    def _before_forward(self, net, i, layer, bottom, top):
        if self.enabled and self.infer_count >= self.start and layer.param.type in START_AND_END:
            self.quantize_layer(i, layer, bottom, top)

    def enable_selected_layers(self, k):
        """AddQuantizationParams (§b.6): weights blob 0 of conv-like layers, outputs by the next layer."""
        q = self.qnet
        glog.info(f"Adding quantization params at infer/iter index: {k}", "net.cpp:1843")
        for i, ly in enumerate(self.net.layers):
            t = ly.param.type
            want_w = q.quantize_weights and t in CONV_LIKE and ly.blobs
            want_o = q.quantize_activations and self.graph.output_flag_016(i)
            if not (want_w or want_o):
                continue
            qp = self._qp(i)
            self._size(qp, i)
            self.flags_on[i] = True
            if want_w:
                qp.qparam_w[0].quantize = True
            if want_o:
                for qo in qp.qparam_out:
                    qo.quantize = True

    def set_params(self, k):
        """SetQuantizationParams of 0.16: only layers that have a quantization_param; 0.16 formulas."""
        q = self.qnet
        for i, ly in enumerate(self.net.layers):
            if not ly.param.HasField("quantization_param"):
                continue
            qp = ly.param.quantization_param
            self._size(qp, i)
            qp.precision = q.precision
            qp.rounding_scheme = q.rounding_scheme
            qp.quantized_infer_count = k - self.start
            if qp.qparam_w:
                mn, mx = self.r_w1[i]
                write_qparams(qp.qparam_w[0], fp.estimate_016(mn, mx, q.bitwidth_weights, self.power2, mn >= 0,
                                                          q.apply_offset_weights), QPARAM_FIELDS_016)
            mn, mx = self.r_out1[i]
            for qo in qp.qparam_out:
                write_qparams(qo, fp.estimate_016(mn, mx, q.bitwidth_activations, self.power2, mn >= 0,
                                              q.apply_offset_activations), QPARAM_FIELDS_016)

    def quantize_layer(self, i, layer, bottom, top):
        """0.16 Quantize: weights blob 0 (every call, clipped) and flagged outputs."""
        if not layer.param.HasField("quantization_param"):
            return
        qp = layer.param.quantization_param
        if qp.precision != 1:
            return
        r = qp.rounding_scheme
        if qp.qparam_w and qp.qparam_w[0].quantize and layer.blobs:
            self._apply_weights(layer.blobs[0].data, qp.qparam_w[0], r, True)
        for j, qo in enumerate(qp.qparam_out):
            if qo.quantize and j < len(top):
                self._apply(top[j].data, qo, r, True)

    def update_ranges(self, k):
        """0.16 ranges (§b.6): replaced ×2 for k <= start, then 0.9·r + 0.1·new with ×1.2 (×1 if power2)."""
        f32 = np.float32
        if k <= self.start:
            e, beta = f32(2.0), f32(1.0)
        else:
            e, beta = (f32(1.0) if self.power2 else f32(1.2)), f32(0.1)
        for i, ly in enumerate(self.net.layers):
            tops = self.net.top_vecs(i)
            if tops:
                mins = [backend.to_numpy(t.data.min()) for t in tops if t.data.size]
                maxs = [backend.to_numpy(t.data.max()) for t in tops if t.data.size]
                if mins:
                    new = np.array([min(mins), max(maxs)], np.float32) * e
                    self.r_out1[i] = (f32(1) - beta) * self.r_out1[i].astype(f32) + beta * new
            if ly.blobs and ly.blobs[0].data.size:
                w = ly.blobs[0].data
                new = np.array([backend.to_numpy(w.min()), backend.to_numpy(w.max())], np.float32) * e
                self.r_w1[i] = (f32(1) - beta) * self.r_w1[i].astype(f32) + beta * new
        super().update_ranges(k)  # keep the per-blob tables too (saved/loaded with the ranges API)

    def range_tables(self):
        return [*super().range_tables(), self.r_out1, self.r_w1]

    def ranges(self):
        r = super().ranges()
        for i, name in enumerate(self.graph.names):
            r[name]["out016"] = self.r_out1[i].tolist()
            r[name]["w016"] = self.r_w1[i].tolist()
        return r

    def set_ranges(self, ranges):
        super().set_ranges(ranges)
        for i, name in enumerate(self.graph.names):
            r = ranges.get(name, {})
            if "out016" in r:
                self.r_out1[i] = r["out016"]
            if "w016" in r:
                self.r_w1[i] = r["w016"]

    def _display_layer(self, i, name, qp):
        # 0.16 prints no bias group and one line per quantized param
        out = []
        for label, group in ((" Q weights:", qp.qparam_w[:1]), (" Q input :", qp.qparam_in),
                             (" Q output:", qp.qparam_out[:1])):
            out.extend(f"{label}{i} Name:{name} {format_qparams(q, '0.16')}" for q in group if q.quantize)
        return out
