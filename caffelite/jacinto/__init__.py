"""caffe-jacinto's features as hooks: training-time sparsity (solver hook), dynamic fixed-point quantization
(net hook) and BatchNorm folding (``caffelite optimize``). Spec: ``shared/spec/jacinto.md`` §a, §b, §b.8.

The core modules never mention jacinto; :func:`attach_from_proto` installs what a net/solver asks for::

    from caffelite import jacinto
    hooks = jacinto.attach_from_proto(solver.net, solver)       # or (net,) for a test/deploy net
    hooks.quantization[0].save_ranges("ranges.json")
"""

from __future__ import annotations

from types import SimpleNamespace

from .quantization import QuantizationHook, quant_ranges_option, quantized_net_proto
from .sparsity import SparsityHook, attach_sparsity
from .sparsity_stats import display_sparsity
from .validate import check_quantization, check_sparsity_param

__all__ = ["attach_from_proto", "attach_quantization", "QuantizationHook", "SparsityHook", "attach_sparsity",
           "display_sparsity", "quantized_net_proto", "quant_ranges_option", "check_quantization",
           "check_sparsity_param"]


def wants_quantization(net_param):
    """True when the net has ``quantize: true`` or any layer carries a quantization_param (§b.1)."""
    return bool(net_param.quantize) or any(lp.HasField("quantization_param") for lp in net_param.layer)


def attach_quantization(net, version="0.17", ties="even"):
    """Install the quantization hook on ``net`` if its prototxt asks for it; returns the hook or None.

    ``version``: "0.17" (default) or "0.16" (what produced the reference test_quantize log, §b.6).
    """
    if not wants_quantization(net._param):
        return None
    if version == "0.16":
        from .quant016 import Quantization016Hook
        return Quantization016Hook(net, ties=ties).attach()
    if version != "0.17":
        raise ValueError(f"quantization version must be '0.16' or '0.17', not {version!r}")
    return QuantizationHook(net, ties=ties).attach()


def attach_from_proto(net=None, solver=None, *, quant_version="0.17", sparsity_version="0.16",
                      threshold_mode="exact", ties="even"):
    """Install every jacinto hook the prototxts ask for.

    ``net``: a Net (defaults to ``solver.net``); with a ``solver``, its test nets get quantization hooks too,
    and sparsity is attached when ``sparse_mode`` is not SPARSE_NONE. Returns a namespace with
    ``quantization`` (list of hooks, one per quantizing net) and ``sparsity`` (hook or None).
    """
    nets = []
    if net is not None:
        nets.append(net)
    if solver is not None:
        for n in [solver.net, *getattr(solver, "test_nets", [])]:
            if all(n is not m for m in nets):
                nets.append(n)
    quant = [h for h in (attach_quantization(n, quant_version, ties) for n in nets) if h is not None]
    sp = attach_sparsity(solver, sparsity_version, threshold_mode) if solver is not None else None
    return SimpleNamespace(quantization=quant, sparsity=sp)
