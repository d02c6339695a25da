"""Net hooks: callbacks around each layer's forward/backward and around a whole pass (Chainer's idiom).

Jacinto's quantization and sparsity attach here instead of living inside every layer
(ARCHITECTURE.md, "Jacinto features as hooks"). Per-layer events call ``fn(net, layer_index, layer, bottom,
top)``; pass events call ``fn(net)``. The Net only looks at a list when it is non-empty, so a net without
hooks pays nothing.
"""

from __future__ import annotations

#: events called per layer: fn(net, layer_index, layer, bottom, top)
LAYER_EVENTS = ("before_forward", "after_forward", "before_backward", "after_backward")
#: events called once per pass: fn(net)
PASS_EVENTS = ("forward_start", "forward_end", "backward_start", "backward_end")
EVENTS = LAYER_EVENTS + PASS_EVENTS


class HookSet:
    """The registered callbacks of one Net, one list per event (empty lists are falsy: the fast path)."""

    def __init__(self):
        for e in EVENTS:
            setattr(self, e, [])

    def add(self, event: str, fn) -> None:
        """Register ``fn`` for ``event`` (one of :data:`EVENTS`); callbacks run in registration order."""
        if event not in EVENTS:
            raise ValueError(f"unknown hook event '{event}' (known: {', '.join(EVENTS)})")
        if not callable(fn):
            raise TypeError(f"hook for '{event}' is not callable: {fn!r}")
        getattr(self, event).append(fn)

    def remove(self, event: str, fn) -> None:
        """Unregister ``fn`` from ``event`` (ValueError if it was not registered)."""
        if event not in EVENTS:
            raise ValueError(f"unknown hook event '{event}' (known: {', '.join(EVENTS)})")
        getattr(self, event).remove(fn)

    def clear(self) -> None:
        """Remove every callback."""
        for e in EVENTS:
            getattr(self, e).clear()

    def __bool__(self) -> bool:
        return any(getattr(self, e) for e in EVENTS)


def _mean_abs(a) -> float:
    from .backend import get_array_module
    return float(get_array_module(a).abs(a).sum()) / max(int(a.size), 1)


def _param_display_name(layer, k) -> str:
    specs = layer.param.param
    return specs[k].name if k < len(specs) and specs[k].name else str(k)


def add_debug_info_hooks(net) -> None:
    """Caffe's ``debug_info: true``: after each layer's forward, log the mean absolute value of each top and
    param; after its backward, of each bottom diff and param diff it computed (Caffe's Forward/
    BackwardDebugInfo wording, values as C++ streams print them)."""
    import logging
    log = logging.getLogger("caffelite")

    def forward(net, i, layer, bottom, top):
        name = net.layer_name(i)
        for blob_name, t in zip(net.top_ids(i), top, strict=True):
            log.info(f"    [Forward] Layer {name}, top blob {blob_name} data: {_mean_abs(t.data):g}")
        for k, b in enumerate(layer.blobs):
            log.info(f"    [Forward] Layer {name}, param blob {_param_display_name(layer, k)} data: "
                     f"{_mean_abs(b.data):g}")

    def backward(net, i, layer, bottom, top):
        name = net.layer_name(i)
        for j, (blob_name, b) in enumerate(zip(net.bottom_ids(i), bottom, strict=True)):
            if net.bottom_need_backward(i)[j]:
                log.info(f"    [Backward] Layer {name}, bottom blob {blob_name} diff: {_mean_abs(b.diff):g}")
        for k, b in enumerate(layer.blobs):
            if k < len(layer.param_propagate_down) and layer.param_propagate_down[k]:
                log.info(f"    [Backward] Layer {name}, param blob {k} diff: {_mean_abs(b.diff):g}")

    def backward_end(net):
        # Caffe's Net::Backward: norms over the learnable params, at ERROR level as Caffe logs them
        from .backend import get_array_module
        sums = [0.0, 0.0, 0.0, 0.0]
        for p in net.learnable_params:
            for k, a in enumerate((p.data, p.diff)):
                xp = get_array_module(a)
                sums[k] += float(xp.abs(a).sum())
                sums[k + 2] += float((a * a).sum())
        log.error(f"    [Backward] All net params (data, diff): L1 norm = ({sums[0]:g}, {sums[1]:g}); "
                  f"L2 norm = ({sums[2] ** 0.5:g}, {sums[3] ** 0.5:g})")

    net.add_hook("after_forward", forward)
    net.add_hook("after_backward", backward)
    net.add_hook("backward_end", backward_end)
