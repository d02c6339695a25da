"""caffe-jacinto's features as hooks: training-time sparsity (solver hook), dynamic fixed-point quantization
(net hook) and BatchNorm folding (``caffelite optimize``). Spec: ``docs/jacinto-spec.md`` §a, §b, §b.8.

The core modules never mention jacinto. Importing this package registers a net and a solver extension
(:mod:`caffelite.extensions`), so every ``Net`` and solver built afterwards gets what its prototxt asks for,
as every caffe-jacinto Net and Solver does (``caffelite.Net``/``get_solver`` import it first;
``extensions=False`` opts out). :func:`attach_from_proto` does the same explicitly, with options::

    from caffelite import jacinto
    hooks = jacinto.attach_from_proto(solver.net, solver)       # or (net,) for a test/deploy net
    hooks = jacinto.attach_from_proto(net, solver, version="0.16")  # caffe-jacinto 0.16's behaviour
    hooks.quantization[0].save_ranges("ranges.json")
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from ..errors import CaffeliteError
from ..extensions import register_net_extension, register_solver_extension
from ..ops import engine as _engine
from .qparams import quantized_net_proto
from .qstate import quant_ranges_option
from .quantization import QuantizationHook
from .sparsity import DEFAULT_VERSION, VERSIONS, SparsityHook, attach_sparsity
from .sparsity_stats import display_sparsity
from .validate import check_quantization, check_sparsity_param

__all__ = ["attach_from_proto", "attach_quantization", "QuantizationHook", "SparsityHook", "attach_sparsity",
           "display_sparsity", "quantized_net_proto", "quant_ranges_option", "check_quantization",
           "check_sparsity_param", "resolve_version", "add_version_argument", "VERSIONS", "ENV_VERSION"]

#: environment variable selecting the version when neither the caller nor the solver does
ENV_VERSION = "CAFFELITE_JACINTO_VERSION"


def resolve_version(version=None, solver=None):
    """The caffe-jacinto version whose sparsity/quantization behaviour to reproduce: "0.17" or "0.16".

    First found wins: ``version`` (e.g. a ``--jacinto_version`` flag), ``$CAFFELITE_JACINTO_VERSION``, the
    solver's ``flavor`` ("jacinto016" means 0.16), else "0.17". 0.16 is what produced the reference logs
    (sparsity iteration ordering §a.2, eligibility §a.3, quantization §b.6).
    """
    for v, where in ((version, "version"), (os.environ.get(ENV_VERSION) or None, f"${ENV_VERSION}")):
        if v is not None:
            v = str(v).strip()
            if v not in VERSIONS:
                raise CaffeliteError(f"{where}: caffe-jacinto version must be one of {', '.join(VERSIONS)}, not {v!r}")
            return v
    if getattr(solver, "flavor", None) == "jacinto016":
        return "0.16"
    return DEFAULT_VERSION


def add_version_argument(parser):
    """``--jacinto_version 0.16|0.17`` for a command's parser (pass ``args.jacinto_version`` to
    :func:`attach_from_proto` as ``version``)."""
    parser.add_argument("--jacinto_version", choices=VERSIONS, default=None,
                        help="caffe-jacinto behaviour of sparsity and quantization: 0.17 (default) or 0.16 (what "
                             f"produced the reference logs); default: ${ENV_VERSION}, else 0.16 with "
                             "--flavor jacinto016, else 0.17")


def wants_quantization(net_param):
    """True when the net has ``quantize: true`` or any layer carries a quantization_param (§b.1)."""
    return bool(net_param.quantize) or any(lp.HasField("quantization_param") for lp in net_param.layer)


def attach_quantization(net, version=DEFAULT_VERSION, ties="even"):
    """Install the quantization hook on ``net`` if its prototxt asks for it; returns the hook or None.

    ``version``: "0.17" (default) or "0.16" (what produced the reference test_quantize log, §b.6).
    Idempotent: a hook with the same settings already on ``net`` is returned; another version's is replaced.
    """
    param = getattr(net, "net_param", None)  # a stand-in net without a NetParameter asks for nothing
    if param is None or not wants_quantization(param):
        return None
    if version not in VERSIONS:
        raise ValueError(f"quantization version must be '0.16' or '0.17', not {version!r}")
    old = getattr(net, "_quantization_hook", None)
    if old is not None:  # idempotent: the net extension may have attached it already
        if old.version == version and old.ties == ties:
            return old
        old.detach()
    if version == "0.16":
        from .quant016 import Quantization016Hook
        hook = Quantization016Hook(net, ties=ties).attach()
    else:
        hook = QuantizationHook(net, ties=ties).attach()
    net._quantization_hook = hook
    return hook


def attach_from_proto(net=None, solver=None, *, version=None, quant_version=None, sparsity_version=None,
                      threshold_mode="exact", ties="even"):
    """Install every jacinto hook the prototxts ask for.

    ``net``: a Net (defaults to ``solver.net``); with a ``solver``, its test nets get quantization hooks too,
    and sparsity is attached when ``sparse_mode`` is not SPARSE_NONE. Returns a namespace with
    ``quantization`` (list of hooks, one per quantizing net) and ``sparsity`` (hook or None).
    ``version`` ("0.16"/"0.17", see :func:`resolve_version`) applies to both; ``quant_version`` and
    ``sparsity_version`` override it for one feature.
    """
    v = resolve_version(version, solver)
    quant_version = quant_version or v
    sparsity_version = sparsity_version or v
    nets = []
    if net is not None:
        nets.append(net)
    if solver is not None:
        for n in [solver.net, *getattr(solver, "test_nets", [])]:
            if all(n is not m for m in nets):
                nets.append(n)
    quant = []
    for k, n in enumerate(nets):
        h = attach_quantization(n, quant_version, ties)
        if h is None:
            continue
        quant.append(h)
        if solver is not None and hasattr(solver, "add_state_provider"):  # resume continues exactly
            solver.add_state_provider(f"jacinto_quantization/{k}", h.get_state, h.set_state)
    sp = attach_sparsity(solver, sparsity_version, threshold_mode) if solver is not None else None
    return SimpleNamespace(quantization=quant, sparsity=sp)


def _net_extension(net):
    """Every Net quantizes when its prototxt says so, as caffe-jacinto's ``Net::ForwardFromTo`` does (§b.2)."""
    attach_quantization(net, resolve_version())


def _solver_extension(solver):
    """Every solver prunes (``sparse_mode``) and quantizes its nets as caffe-jacinto's Solver does."""
    attach_from_proto(None, solver)


register_net_extension("jacinto", _net_extension)
register_solver_extension("jacinto", _solver_extension)


def _run_int8(net, start, end):
    """The "int8" whole-net engine (quantized nets in integers); its module and compiled kernels load on the
    first forward that asks for it, not with every Net."""
    from .int8_engine import run_net

    return run_net(net, start, end)


_engine.register_net("int8", _run_int8)
