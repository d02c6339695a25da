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
