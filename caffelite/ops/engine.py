"""Which engine runs each convolution of a net: dense float, sparse float or 8-bit integer.

Engines (:data:`ENGINES`):
- ``"dense"``: the float path of :mod:`caffelite.ops.conv` (compiled direct kernel, BLAS for 1x1, NumPy
  reference otherwise);
- ``"sparse"``: the compiled sparse kernels (:mod:`caffelite.ops.sparse_conv`), which skip the zero
  weights; same sums in the same order as the dense kernel, so the same values;
- ``"int8"``: an integer engine registered with :func:`register` (none is built in here);
- ``"auto"`` (the default): per layer, the engine measured to be faster for its weights (for ``sparse``:
  the layer's zero fraction against :data:`caffelite.ops.sparse_conv.AUTO_MIN_ZERO_FRACTION`).

The request comes from ``Net.engine`` (setting it re-plans), else the ``CAFFELITE_ENGINE`` environment
variable, else ``"auto"`` (:func:`resolve`). :func:`plan` decides per Convolution layer and stores the decision
as ``layer.engine_plan``; each forward records what actually ran as ``layer.engine_used`` (``"dense"``,
``"sparse"``, ``"int8"``; None for layers that are not convolutions or have not run), which ``caffelite time``
prints. The forward itself is chosen in one place, :func:`caffelite.ops.conv_dispatch.conv_forward`.

Rules (why: a packed copy of the weights must never go stale and change results):
- only TEST-phase nets plan ``sparse``/``int8``; a TRAIN net (its weights change every iteration) and a net
  whose weights are shared from another net (``Net.share_weights_from``: a solver's test nets) run dense
  whatever is asked;
- packed weights are rebuilt by ``Net.copy_from``, by ``Net.repack()`` and whenever a layer's weight array is
  replaced (``Blob.set_data_array``); after editing weights IN PLACE (``net.params[name][0].data[...] = ...``)
  call ``net.repack()``;
- a forward with a per-layer ``before_forward`` / ``after_forward`` hook runs dense (caffe-jacinto's
  quantization rewrites weights in place there), unless every such hook function has an attribute
  ``observer = True`` (it only watches, as ``caffelite time``'s timers do).

Another engine plugs in per layer with :func:`register`: ``register(name, chooser, runner)``; ``chooser(net,
layer, requested)`` returns True when that engine should run ``layer`` (it may prepare state on the layer), and
``runner(layer, x, w, b, out, scale, shift, relu_slope)`` computes the forward and returns True (False: it
cannot take this call now, so the dense path runs and ``engine_used`` says so). Or per net with
:func:`register_net`: ``register_net(name, fn)``; a TEST net whose requested engine is ``name`` hands each
forward to ``fn(net, start, end)`` (True: it ran it and set ``engine_used`` on the layers).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CaffeliteError

ENGINES = ("dense", "sparse", "int8", "auto")
ENV_VAR = "CAFFELITE_ENGINE"

#: name -> (chooser, runner) of engines registered by other modules (e.g. "int8")
_REGISTRY: dict = {}
#: whole-net engines: name -> fn(net, start, end) -> True when it ran the forward (the "int8" engine of quantized
#: nets, registered by caffelite.jacinto: it keeps activations in integers from layer to layer)
_NET_REGISTRY: dict = {}


class EngineError(CaffeliteError, ValueError):
    """An engine request that cannot be honoured (unknown name, kernels not built)."""


def register(name: str, chooser, runner) -> None:
    """Plug in the engine ``name`` (one of :data:`ENGINES` other than dense/auto): see the module docstring."""
    if name not in ENGINES or name in ("dense", "auto"):
        raise ValueError(f"cannot register engine '{name}' (one of {', '.join(ENGINES[1:3])})")
    _REGISTRY[name] = (chooser, runner)


def register_net(name: str, fn) -> None:
    """Plug in a whole-net engine: a net asking for ``name`` runs each forward as ``fn(net, start, end)``."""
    if name not in ENGINES or name in ("dense", "auto"):
        raise ValueError(f"cannot register engine '{name}'")
    _NET_REGISTRY[name] = fn


def net_runner(net):
    """The whole-net forward of the engine ``net`` asks for, or None (layer-by-layer forward; always for the
    nets :func:`sparse_allowed` refuses, e.g. TRAIN nets)."""
    fn = _NET_REGISTRY.get(getattr(net, "_engine", None))
    return fn if fn is not None and sparse_allowed(net) else None


def run_whole_net(net, start, end) -> bool:
    """Run layers ``start``..``end`` of ``net`` on its whole-net engine; False when it has none (the Net then
    runs its layers one by one)."""
    fn = net_runner(net)
    if fn is None or not fn(net, start, end):
        return False
    net._fused_chains = []  # nothing was fused: a backward re-runs nothing
    return True


def resolve(requested: str | None = None) -> str:
    """The engine to use: ``requested`` if given, else ``$CAFFELITE_ENGINE``, else ``"auto"``; validated."""
    source = "engine"
    if requested is None:
        requested = os.environ.get(ENV_VAR, "").strip() or "auto"
        source = ENV_VAR
    name = str(requested).strip().lower()
    if name not in ENGINES:
        raise EngineError(f"{source}={requested!r}: unknown engine (one of {', '.join(ENGINES)})")
    if name == "sparse":
        from . import sparse_conv
        if not sparse_conv.available():
            raise EngineError(f"{source}=sparse needs the compiled sparse kernels ({sparse_conv.why_unavailable()}); "
                              "reinstall caffelite with a C compiler present (pip install -e .) or use the "
                              "dense or auto engine")
    elif name == "int8" and "int8" not in _REGISTRY and "int8" not in _NET_REGISTRY:
        raise EngineError(f"{source}=int8: the int8 engine is not available in this build")
    return name


def is_conv(layer) -> bool:
    """Layers the engines apply to: Convolution (not Deconvolution)."""
    return layer.type == "Convolution"


def sparse_allowed(net) -> bool:
    """Whether ``net`` may run packed (sparse/int8) weights at all: TEST phase, NumPy, weights not shared."""
    from ..layer import TEST
    return net.phase == TEST and not getattr(net, "weights_shared", False) and getattr(net, "xp", np) is np


def plan(net, requested: str) -> None:
    """Decide ``layer.engine_plan`` for every Convolution of ``net`` and (re)pack the weights that need it."""
    from . import sparse_conv
    ok = sparse_allowed(net)
    net.net_engine_state = None  # a whole-net engine rebuilds its packed weights too
    for layer in net.layers:
        if not is_conv(layer):
            continue
        layer.engine_used = None
        layer.sparse_pack = None
        choice = "dense"
        if ok and requested in ("sparse", "auto") and sparse_conv.available():
            stats = sparse_conv.layer_stats(layer)
            if requested == "sparse" or stats.zero_fraction >= sparse_conv.auto_threshold(stats.kind):
                layer.sparse_pack = sparse_conv.pack_layer(layer)
                if layer.sparse_pack is not None:
                    choice = "sparse"
        if ok and choice == "dense" and requested not in ("dense", "sparse"):
            # a registered engine: the one asked for, or under auto the first that wants the layer
            for name, (chooser, _) in _REGISTRY.items():
                if (requested in (name, "auto")) and chooser(net, layer, requested):
                    choice = name
                    break
        layer.engine_plan = choice


def auto_choice(kind: str, zero_fraction: float, tap_positions: int) -> str:
    """The engine ``auto`` gives a Convolution in a TEST net on this machine: ``kind`` "direct", "pointwise" or
    "depthwise", the zero fraction of its weights, and Cg*kh*kw (for ``caffelite info``)."""
    from . import sparse_conv
    ok = (sparse_conv.available() and tap_positions <= sparse_conv.MAX_TAP_POSITIONS
          and zero_fraction >= sparse_conv.auto_threshold(kind))
    return "sparse" if ok else "dense"


def conv_kind_of_param(lp, weight_shape) -> str:
    """The kind of a Convolution LayerParameter with weights of ``weight_shape`` (Cout, Cg, kh, kw): "depthwise"
    (one input and one output channel per group), "pointwise" (1x1, stride 1, no pad) or "direct"."""
    from .depthwise import is_depthwise

    cp = lp.convolution_param
    group = int(cp.group)
    if len(weight_shape) == 4 and is_depthwise(weight_shape[1] * group, weight_shape[0], group):
        return "depthwise"
    one = weight_shape[2:] == (1, 1) if len(weight_shape) == 4 else False
    strides = list(cp.stride) + [cp.stride_h, cp.stride_w]
    pads = list(cp.pad) + [cp.pad_h, cp.pad_w]
    if one and all(s in (0, 1) for s in strides) and not any(pads):
        return "pointwise"
    return "direct"


def runner(name: str):
    """The forward function of a registered engine (None when not registered)."""
    entry = _REGISTRY.get(name)
    return None if entry is None else entry[1]


def begin_forward(net) -> None:
    """Called by the Net at the start of each forward: suspend packed engines on this net's convolutions while a
    per-layer forward hook that may rewrite weights (jacinto's quantization does, in place) is registered on it.
    The flag lives on the net's own layers, so another net's forward (in another thread, or run from inside a
    hook of this one) never changes what this one runs."""
    hooks = (*net.hooks.before_forward, *net.hooks.after_forward)
    flag = any(not getattr(fn, "observer", False) for fn in hooks)
    if getattr(net, "_engines_suspended", None) is not flag:
        net._engines_suspended = flag
        for layer in net.layers:
            if is_conv(layer):
                layer.engine_suspended = flag


def suspended(layer) -> bool:
    """Whether ``layer``'s net has suspended the packed-weight engines for its current forward."""
    return getattr(layer, "engine_suspended", False)
