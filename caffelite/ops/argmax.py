"""ArgMax top-1 along an axis: the compiled kernel's entry point for :class:`caffelite.layers.reduction.ArgMaxLayer`.

The layer keeps its NumPy reference (ties to the larger index, np.argmax's NaN rule on the reversed axis); this
module only decides whether :func:`caffelite.ops.native_glue.argmax_top1`, bitwise the same, takes the call.
"""

from __future__ import annotations

from . import native_glue


def top1_native(x, axis: int, out) -> bool:
    """Write the top-1 indices of ``x`` along ``axis`` into ``out`` (``x``'s shape with that axis of size 1) with
    the compiled kernel and return True; False, with nothing written, when it cannot take the call (not loaded,
    switched off, or not C-contiguous float32 NumPy arrays)."""
    if x.ndim == 0 or x.shape[axis] < 1 or not native_glue.usable(x, out):
        return False
    native_glue.argmax_top1(x, axis, out)
    return True
