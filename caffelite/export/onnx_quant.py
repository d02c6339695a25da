"""caffe-jacinto's dynamic fixed-point simulation as ONNX QuantizeLinear/DequantizeLinear pairs.

The simulation (``caffelite.jacinto.quantization``, spec docs/jacinto-spec.md §b.3-§b.5) fake-quantizes, at the end of
a layer's forward, every top whose ``qparam_out.quantize`` flag is on: ``y = clip(round(x*s + o), lo, hi)``,
``x' = (y - o) * inv`` with ``inv = 1/s`` in float32. With ``o`` an integer and an 8-bit range this is exactly
``DequantizeLinear(QuantizeLinear(x, inv, o), inv, o)`` (uint8 for unsigned, int8 for signed data): the
dequantized grid is jacinto's, the saturation range is jacinto's, and QuantizeLinear rounds half to even like
jacinto's GPU kernel (its CPU code rounds half away from zero; see ``ties``). For a power-of-two scale
(``power2_scale_activations``: ``s = 2^fl``) ``x / inv == x * s`` exactly, so the rounding decisions are
jacinto's bit for bit; for other scales ``x / inv`` and ``x * s`` can differ in the last bit, which changes a
value only when it lies within one float32 ulp of a rounding boundary. The "exact" form (``QDQ_FORMS``) rounds
``x * s`` formed in float64 instead, jacinto's decisions at any scale in a runtime that computes float64 (ONNX
Runtime; OpenVINO's CPU plugin computes it in float32). The simulation sums its quantized convolutions exactly
(float64, rounded once to float32, then the bias added: ``exact_sums``); a runtime's float32 convolution sums
in its own order and rounds some sums differently, which moves an occasional value across a rounding boundary.
So the "exact" form also writes each such convolution as float64 arithmetic: the input cast to double, one
MatMul per kernel tap (grouped as ``(G, Cout/G, Cin/G)`` weights), the sums added in double, cast to float and
the bias added; ONNX Runtime then computes the simulation's values (its Conv has no double kernel). An
InnerProduct that sums exactly becomes one double MatMul the same way.

Weights were quantized in place by the simulation (once, at forward ``quantization_start``), so the net's
float weights are already jacinto's dequantized values and are exported as they are; where they lie exactly
on an integer grid of the current scale with zero offset (power-of-two weight scales, ``apply_offset_weights:
false``), they are written as int8/uint8 (int16/uint16 from opset 21) initializers + DequantizeLinear, which
gives back the same float32 values. jacinto's default asymmetric 12-bit weights (a non-integer offset) stay
float. Flags jacinto never sets (``qparam_in.quantize``), a non-integer activation offset or a bitwidth other
than 8 for activations have no exact QDQ form and are refused.
"""

from __future__ import annotations

import json
import math

import numpy as np

from ..jacinto import attach_quantization, wants_quantization
from ..jacinto.fixed_point import int_range
from ..jacinto.qstate import RangeState


def find_hook(net):
    """The quantization hook attached to ``net`` (or None)."""
    for fn in net.hooks.forward_start:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, RangeState):
            return owner
    return None


def _flagged(net):
    return any(ly.param.HasField("quantization_param") and
               (any(q.quantize for q in ly.param.quantization_param.qparam_out) or
                any(q.quantize for q in ly.param.quantization_param.qparam_w))
               for ly in net.layers)


def check_ready(net, error):
    """Raise ``error(message)`` unless ``net``'s quantization parameters are known (a calibrated simulation)."""
    hook = find_hook(net)
    if getattr(hook, "version", "0.17") != "0.17":
        raise error(f"net '{net.name}': caffe-jacinto {hook.version}'s quantization (which layers quantize, and "
                    "when) is not exported; use the 0.17 simulation")
    if not _flagged(net):
        raise error(f"net '{net.name}' is quantized (quantize: true) but has no quantization ranges yet: run "
                    "calibration forwards with the quantization hook attached, or export from a quantized "
                    "caffemodel (or --quant-ranges FILE)")
    if hook is not None and hook.infer_count <= hook.start:
        raise error(f"net '{net.name}': the quantized weights are not set yet (the simulation quantizes them at "
                    f"forward {hook.start}); run at least {hook.start + 1 - hook.infer_count} more forward(s)")
    return hook


def prepare(net, weights=None, ranges=None, error=ValueError):
    """Attach the simulation to a freshly loaded quantized ``net`` and bring it to its steady state: ranges
    from ``ranges`` (a ``save_ranges`` JSON file) or from the quantization_param of the ``weights``
    caffemodel, frozen; then forwards of zeros until the weights are quantized and every scale is set (frozen
    ranges make the zeros irrelevant). Returns the hook."""
    hook = attach_quantization(net)
    if ranges:
        hook.load_ranges(ranges)  # a fresh net: its next forward is forward quantization_start
    else:
        used = hook.load_ranges_from_caffemodel(weights) if weights else 0
        if not used:
            raise error(f"net '{net.name}' is quantized (quantize: true) but "
                        f"{'the caffemodel holds no quantization ranges' if weights else 'no weights were given'}"
                        ": give --quant-ranges FILE (from --quant-ranges save) or a caffemodel written by a "
                        "quantized run")
    zeros = {n: np.zeros(net.blobs[n].shape, np.float32) for n in net.inputs}
    while hook.infer_count <= hook.start:
        net.forward(**zeros)
    return hook


#: "runtime": QuantizeLinear(x, 1/s) -> DequantizeLinear(1/s), the int8 pattern runtimes (OpenVINO, TensorRT)
#: recognise; ONNX Runtime computes ``x / (1/s)`` in float32, which can differ from jacinto's exact ``x*s`` by
#: one level when ``x*s`` lies within an ulp of a rounding boundary (never for power-of-two scales).
#: "exact": ``Round(Cast<double>(x) * s)`` -> QuantizeLinear(scale 1) -> DequantizeLinear(1/s): jacinto's
#: quantizer bit for bit at any scale where float64 is computed as such (ONNX Runtime; OpenVINO's CPU plugin
#: lowers it to float32, TensorRT has no float64), at the cost of ops that int8 runtimes do not fuse.
QDQ_FORMS = ("runtime", "exact")


def _pow2_bits(scale):
    m, e = math.frexp(scale)
    return e - 1 if m == 0.5 else None


class QdqHook:
    """Adds the QDQ pairs after each quantizing layer and gives quantized weights integer initializers."""

    def __init__(self, net, hook=None, form="runtime"):
        if form not in QDQ_FORMS:
            raise ValueError(f"qdq form must be one of {QDQ_FORMS}, not {form!r}")
        self.net = net
        self.form = form
        self.ties = getattr(hook, "ties", "even")
        self.blobs = {}  # ONNX tensor -> {"bits", "fracbits" | "scale", "signed"} for the metadata

    @staticmethod
    def wanted(net):
        return wants_quantization(net.net_param) and bool(net.net_param.quantize)

    def _qp(self, layer):
        return layer.param.quantization_param if layer.param.HasField("quantization_param") else None

    def param(self, g, layer, k, w):
        """int8/16 initializer + DequantizeLinear when ``w`` lies exactly on the current zero-offset grid."""
        qp = self._qp(layer)
        if qp is None or k >= len(qp.qparam_w) or not qp.qparam_w[k].quantize:
            return None
        q = qp.qparam_w[k]
        bw = int(q.bitwidth)
        if q.offset != 0 or bw > 16 or (bw > 8 and g.opset < 21):
            return None
        st = np.float32(q.scale_target)
        inv = np.float32(1) / st
        ints = w.astype(np.float64) * np.float64(st)
        lo, hi = int_range(bw, q.unsigned_quant)
        if not (np.all(ints == np.rint(ints)) and ints.min(initial=0) >= lo and ints.max(initial=0) <= hi):
            return None
        if not np.array_equal(ints.astype(np.float32) * inv, w):
            return None
        unsigned = bool(q.unsigned_quant)
        dt = (np.uint8 if unsigned else np.int8) if bw <= 8 else (np.uint16 if unsigned else np.int16)
        name = g.layer_name + ("/W" if k == 0 else "/b")
        qi = g.const(name + "_quantized", ints, dt)
        out = g.node("DequantizeLinear", [qi, g.const(name + "_scale", inv), g.const(name + "_zero", 0, dt)],
                     hint=name)
        self.blobs[name] = self._describe(bw, st, not unsigned)
        return out

    def conv(self, g, layer):
        """The "exact" form of a Convolution whose simulation sums exactly (``layer.exact_sums``, see the module
        docstring): float64 tap by tap. Returns True when it wrote the layer, False to leave it to Conv."""
        if self.form != "exact" or layer.param.type != "Convolution" or not getattr(layer, "exact_sums", False) \
                or g.layer in g.folded:
            return False
        from .onnx_layers import weights

        gm, group = layer.geom, int(layer.group)
        w = weights(layer, 0).astype(np.float64)  # float32 values, exact in double
        cout, cg = w.shape[:2]
        mg = cout // group
        dbl, flt = g.onnx.TensorProto.DOUBLE, g.onnx.TensorProto.FLOAT
        name = g.layer_name
        bias = weights(layer, 1).reshape(-1, 1, 1) if len(layer.blobs) > 1 else None
        for j in range(len(layer.param.bottom)):
            n = g.bottom_shape(j)[0]
            _, _, ho, wo = g.top_shape(j)
            x = g.node("Cast", [g.bottom(j)], hint=f"{name}/x_f64", to=dbl)
            if gm.ph or gm.pw:
                pads = g.const(f"{name}/pads", [0, 0, gm.ph, gm.pw, 0, 0, gm.ph, gm.pw], np.int64)
                x = g.node("Pad", [x, pads], hint=f"{name}/x_padded")
            cols = g.shape_const((n, group, cg, ho * wo))
            axes = g.const(f"{name}/axes", [2, 3], np.int64)  # the same for every tap
            steps = g.const(f"{name}/steps", [gm.sh, gm.sw], np.int64)
            acc = None
            for ki in range(gm.kh):
                for kj in range(gm.kw):
                    r0, c0 = ki * gm.dh, kj * gm.dw
                    ends = [r0 + gm.sh * (ho - 1) + 1, c0 + gm.sw * (wo - 1) + 1]
                    xs = g.node("Slice", [x, g.const(f"{name}/starts", [r0, c0], np.int64),
                                          g.const(f"{name}/ends", ends, np.int64), axes, steps],
                                hint=f"{name}/tap")
                    xs = g.node("Reshape", [xs, cols], hint=f"{name}/tap_cols")
                    wt = g.const(f"{name}/W_tap", w[:, :, ki, kj].reshape(group, mg, cg), np.float64)
                    p = g.node("MatMul", [wt, xs], hint=f"{name}/tap_sum")
                    acc = p if acc is None else g.node("Add", [acc, p], hint=f"{name}/sum")
            y = g.node("Cast", [g.reshape(acc, (n, cout, ho, wo))], hint=f"{name}/sum_f32", to=flt)
            if bias is None:
                g.node("Identity", [y], [g.top(j)])
            else:
                g.node("Add", [y, g.const(f"{name}/b", bias)], [g.top(j)])
        return True

    def inner_product(self, g, layer, flat, axis):
        """The "exact" form of an InnerProduct whose simulation sums exactly: the flattened input cast to double,
        one MatMul with the double weights, cast to float, then the bias. Returns True when it wrote the layer."""
        if self.form != "exact" or not getattr(layer, "exact_sums", False):
            return False
        from .onnx_layers import weights

        w = weights(layer, 0).astype(np.float64)  # (N, K), or (K, N) with transpose
        name = g.layer_name
        x = g.node("Cast", [flat], hint=f"{name}/x_f64", to=g.onnx.TensorProto.DOUBLE)
        y = g.node("MatMul", [x, g.const(f"{name}/W_kn", w if layer.transpose else w.T, np.float64)],
                   hint=f"{name}/sum")
        y = g.node("Cast", [y], hint=f"{name}/sum_f32", to=g.onnx.TensorProto.FLOAT)
        if len(layer.blobs) > 1:
            y = g.node("Add", [y, g.const(f"{name}/b", weights(layer, 1))], hint=f"{name}/biased")
        if axis == 1:
            g.node("Identity", [y], [g.top(0)])
        else:
            g.reshape(y, g.top_shape(0), g.top(0))
        return True

    @staticmethod
    def _describe(bw, st, signed):
        fl = _pow2_bits(float(st))
        d = {"bits": int(bw), "signed": bool(signed)}
        if fl is not None:
            d["fracbits"] = fl
        else:
            d["scale"] = float(st)
        return d

    def after_layer(self, g, i):
        """QuantizeLinear -> DequantizeLinear on each flagged top of layer ``i`` (as the simulation does in place)."""
        layer = self.net.layers[i]
        qp = self._qp(layer)
        if qp is None or qp.precision != 1:  # DYNAMIC_FIXED_POINT
            return
        if any(q.quantize for q in qp.qparam_in):
            raise g.error("quantizes its inputs (qparam_in.quantize), which the simulation applies after the "
                          "layer ran, in place; that has no ONNX form here")
        for j, q in enumerate(qp.qparam_out):
            if not q.quantize or j >= len(layer.param.top):
                continue
            if int(q.bitwidth) != 8:
                raise g.error(f"top {j} is quantized to {q.bitwidth} bits; QDQ export supports 8-bit activations")
            if q.offset != int(q.offset):
                raise g.error(f"top {j} has a non-integer quantization offset {q.offset} "
                              "(apply_offset_activations), which no ONNX zero point represents")
            blob = layer.param.top[j]
            x = g.current[blob]
            st = np.float32(q.scale_target)
            unsigned = bool(q.unsigned_quant)
            dt = np.uint8 if unsigned else np.int8
            scale = g.const(f"{blob}/q_scale", np.float32(1) / st)
            zp = g.const(f"{blob}/q_zero", int(q.offset), dt)
            if self.form == "exact":
                y = self._exact_quantize(g, blob, x, st, zp)
            else:
                y = g.node("QuantizeLinear", [x, scale, zp], hint=f"{blob}/quantized")
            dq = g.node("DequantizeLinear", [y, scale, zp], hint=f"{blob}/dequantized")
            g.set_current(blob, dq)
            self.blobs[blob] = self._describe(8, st, not unsigned)

    @staticmethod
    def _exact_quantize(g, blob, x, st, zp):
        """The integers jacinto rounds to, ``rint(x*s)``, with ``x*s`` formed in float64 where it is exact (as
        the simulation does), then QuantizeLinear with scale 1 adds the zero point and saturates."""
        x64 = g.node("Cast", [x], hint=f"{blob}/f64", to=g.onnx.TensorProto.DOUBLE)
        y64 = g.node("Mul", [x64, g.const(f"{blob}/q_mul", np.float64(st), np.float64)], hint=f"{blob}/scaled")
        r64 = g.node("Round", [y64], hint=f"{blob}/rounded")  # half to even, like jacinto's GPU kernel
        # an integer: exact in float32 up to 2^24, and larger values saturate the same after float32 rounding
        r32 = g.node("Cast", [r64], hint=f"{blob}/rounded_f32", to=g.onnx.TensorProto.FLOAT)
        one = g.const(f"{blob}/q_one", 1.0)
        return g.node("QuantizeLinear", [r32, one, zp], hint=f"{blob}/quantized")

    def metadata(self):
        """Model metadata: fractional bits (or scale) per quantized blob, the QDQ form and the rounding note."""
        note = "QuantizeLinear rounds half to even, as jacinto's GPU kernel"
        if self.ties != "even":
            note += "; the simulation rounded half away from zero (jacinto's CPU code): exact ties may differ"
        return {"quantization": "caffe-jacinto dynamic fixed point as QuantizeLinear/DequantizeLinear",
                "quantization_qdq_form": self.form,
                "quantization_rounding": note,
                "quantization_blobs": json.dumps(self.blobs, sort_keys=True)}
