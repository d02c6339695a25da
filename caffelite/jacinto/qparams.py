"""QuantizationParameter.QParams helpers shared by the 0.17 and 0.16 hooks: writing Estimate's values into a
QParams message, the field groups of the ``display_quantization`` dump (§b.7), and the quantized caffemodel's
NetParameter (§h).
"""

from __future__ import annotations

from .. import log as glog

#: the QParams fields Estimate writes in 0.17 (§b.4); the ``quantize`` flag is left alone
QPARAM_FIELDS = ("bitwidth", "unsigned_data", "unsigned_quant", "min", "max", "fracbits", "scale_target",
                 "scale_applied", "shiftbits", "offset")
#: 0.16 has no scale_applied chaining nor shiftbits (§b.6)
QPARAM_FIELDS_016 = tuple(f for f in QPARAM_FIELDS if f not in ("scale_applied", "shiftbits"))

QUANTIZED_SUFFIX = "___QUANTIZED__SEE_END_OFTHE_FILE"


def write_qparams(msg, values, fields=QPARAM_FIELDS):
    """Copy ``fields`` of ``values`` (a :class:`~caffelite.jacinto.fixed_point.QParamValues`) into ``msg``."""
    for f in fields:
        setattr(msg, f, getattr(values, f))


def format_qparams(q, version="0.17"):
    """One QParams' field group of Net::DisplayQuantizationParams (§b.7); 0.16 stops after ``max``."""
    g = glog.fmt
    text = (f"bitwidth:{q.bitwidth} fracbits:{q.fracbits} scale:{g(q.scale_target)} offset:{g(q.offset)} "
            f"unsigned_data:{int(q.unsigned_data)} min:{g(q.min)} max:{g(q.max)}")
    if version == "0.16":
        return text
    return f"{text} scale_applied:{g(q.scale_applied)} scale_target:{g(q.scale_target)}"


def quantized_net_proto(net):
    """``net.to_proto()`` with jacinto's quantized-model name suffix (§h) when the net quantizes; every layer's
    runtime quantization_param (flags, scales, ranges) is in it, as jacinto writes them."""
    p = net.to_proto()
    if net.net_param.quantize and not p.name.endswith(QUANTIZED_SUFFIX):
        p.name = f"{p.name}{QUANTIZED_SUFFIX}"
    return p
