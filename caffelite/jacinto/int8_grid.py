"""The integer view of caffe-jacinto's quantized blobs for the int8 engine (:mod:`.int8_engine`): a blob's grid
(``x = (q - off) * inv``, spec §b.5), the checks that a net can run in integers now, and the integers of the float
simulation's blobs (what tests compare the engine with).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CaffeliteError
from ..layer import TEST
from ..ops import int8 as i8op
from . import fixed_point as fp
from .quantization import DFP, QuantizationHook

class Int8Error(CaffeliteError, ValueError):
    """A net the integer engine cannot run as asked (no quantization, no ranges yet, ...)."""


@dataclass(frozen=True)
class QGrid:
    """One quantized blob's grid: ``x = (q - off) * inv`` (float32 result), q in [lo, hi]."""

    st: float
    inv: float
    off: float
    lo: int
    hi: int

    @classmethod
    def of(cls, qq):
        lo, hi = fp.int_range(qq.bitwidth, qq.unsigned_quant)
        st = np.float32(qq.scale_target)
        return cls(float(st), float(np.float32(1.0) / st), float(np.float32(qq.offset)), lo, hi)

    def dequantize(self, q):
        """The simulation's float32 values of integers ``q`` (fixed_point.quantize's last step)."""
        return ((q.astype(np.float64) - self.off) * self.inv).astype(np.float32)

    def quantize(self, x, ties):
        """Integers of float ``x`` on this grid (fixed_point.quantize without the dequantization)."""
        return i8op.quantize_float(x, self.st, self.off, self.lo, self.hi, ties)

    def lut_from(self, src: QGrid, fn, ties):
        """A table over ``src``'s integers: this grid's integer of ``fn(src.dequantize(q))``."""
        q = np.arange(src.lo, src.hi + 1, dtype=np.int64)
        return self.quantize(fn(src.dequantize(q)), ties)


def find_hook(net):
    """The net's :class:`QuantizationHook`, or None."""
    h = getattr(net, "_quantization_hook", None)
    if isinstance(h, QuantizationHook):
        return h
    for fn in net.hooks.forward_start:
        h = getattr(fn, "__self__", None)
        if isinstance(h, QuantizationHook):
            return h
    return None


def check_ready(net, hook=None):
    """Raise :class:`Int8Error` (one line saying what to do) unless ``net`` can run in integers now."""
    p = net.net_param
    if not p.quantize:
        raise Int8Error(f"net '{net.name}': the int8 engine runs quantized nets only; add 'quantize: true' to the "
                        "prototxt (and get ranges by calibration) or use the dense engine")
    hook = hook or find_hook(net)
    if hook is None or not hook.enabled:
        raise Int8Error(f"net '{net.name}': no caffe-jacinto 0.17 quantization is attached (quantization_start must "
                        "be > 0; attach it with caffelite.jacinto.attach_from_proto)")
    if getattr(net, "xp", np) is not np:
        raise Int8Error(f"net '{net.name}': the int8 engine runs on the CPU; use the dense engine on the GPU")
    if net.phase != TEST:
        raise Int8Error(f"net '{net.name}': the int8 engine runs TEST nets only (TRAIN rounds stochastically)")
    if getattr(hook, "version", "0.17") != "0.17":
        raise Int8Error(f"net '{net.name}': the int8 engine reproduces caffe-jacinto 0.17's quantization, not "
                        f"{hook.version}'s (use --jacinto_version 0.17 or the dense engine)")
    q = hook.qnet
    if q.precision != DFP or q.rounding_scheme != fp.NEAREST:
        raise Int8Error(f"net '{net.name}': the int8 engine needs dynamic fixed point with NEAREST rounding")
    if hook.infer_count < hook.start:
        raise Int8Error(f"net '{net.name}': quantized but no ranges yet: run {hook.start - hook.infer_count} "
                        "calibration forward(s) and freeze them (--quant-ranges freeze), or load them "
                        "(--quant-ranges load FILE, or a quantized caffemodel)")
    if q.update_quantization_param and not hook.frozen:
        raise Int8Error(f"net '{net.name}': the quantization ranges are still updated every forward; freeze them "
                        "(--quant-ranges freeze or load FILE; hook.freeze_ranges()) to run in integers")
    return hook


def simulation_ints(net):
    """{blob: integers} of the float simulation's quantized blobs after a forward (each blob's last writer's
    quantizer); raises Int8Error when a blob is not on its grid (the simulation did not quantize it)."""
    writer = {}
    for i, ly in enumerate(net.layers):
        for j, name in enumerate(net.top_ids(i)):
            g = None
            if ly.param.HasField("quantization_param"):
                qo = ly.param.quantization_param.qparam_out
                g = QGrid.of(qo[j]) if j < len(qo) and qo[j].quantize else None
            writer[name] = g
    out = {}
    for name, g in writer.items():
        if g is None:
            continue
        y = net.blobs[name].data.astype(np.float64) * g.st + g.off
        r = np.rint(y)
        if r.size and np.abs(y - r).max() > 1e-3:
            raise Int8Error(f"blob '{name}' is not on its quantization grid (max distance {np.abs(y - r).max():.3g})")
        out[name] = np.clip(r, g.lo, g.hi).astype(np.int16)
    return out
