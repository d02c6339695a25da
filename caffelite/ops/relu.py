"""ReLU forward and backward: the one place that chooses how they run.

``y = x > 0 ? x : x·slope`` and ``dx = x > 0 ? dy : dy·slope`` (Caffe's ReLU; slope 0 gives ``maximum(x, 0)``
and ``dy·[x > 0]``). Each entry point picks, in this order:

1. the compiled kernel (:mod:`caffelite.ops.native_bn`) for C-contiguous float32 NumPy arrays, when built and
   enabled (:func:`caffelite.ops.native.enabled`);
2. for slope 0 on contiguous NumPy arrays, the cache-blocked variants :func:`relu_into` / :func:`relu_grad_into`
   (bitwise equal to the reference, ``tests/test_layers_relu_blocked.py``);
3. the reference expressions :func:`relu_reference` / :func:`relu_grad_reference` (any ``xp``, CuPy included:
   one fused element-wise pass there, so no named CuPy kernel is needed).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from . import native_bn

__all__ = ["relu_forward", "relu_backward", "relu_reference", "relu_grad_reference", "relu_into",
           "relu_grad_into", "RELU_BLOCK"]

#: elements per block of the blocked CPU variants
RELU_BLOCK = 1 << 17
_ZEROS = {}


def relu_reference(x, slope: float):
    """The plain forward expression: ``where(x > 0, x, x·slope)`` (a new array)."""
    xp = get_array_module(x)
    return xp.where(x > 0, x, x * x.dtype.type(slope))


def relu_grad_reference(x, dy, slope: float):
    """The plain backward expression: ``where(x > 0, dy, dy·slope)`` (a new array; Caffe's
    ``dy·((x > 0) + slope·(x <= 0))``)."""
    xp = get_array_module(dy)
    return xp.where(x > 0, dy, dy * dy.dtype.type(slope))


def _zeros(dtype):
    """A read-only block of RELU_BLOCK zeros of ``dtype``, shared by all calls."""
    z = _ZEROS.get(dtype)
    if z is None or z.size < RELU_BLOCK:
        z = np.zeros(RELU_BLOCK, dtype)
        z.flags.writeable = False
        _ZEROS[dtype] = z
    return z


def relu_into(x, out):
    """``out = max(x, 0)`` (``out`` may be ``x``). NumPy's maximum against a scalar runs a scalar loop; against an
    array of zeros it runs its vector loop, 3-4x faster and with the same results (NaN kept, −0 → +0), so on
    the CPU the input goes by blocks against a block of zeros that stays in cache."""
    xp = get_array_module(x)
    if xp is not np or not (x.flags.c_contiguous and out.flags.c_contiguous):
        xp.maximum(x, 0, out=out)
        return
    xf, of = x.reshape(-1), out.reshape(-1)
    n = xf.size
    z = _zeros(xf.dtype)
    for i in range(0, n, RELU_BLOCK):
        j = min(i + RELU_BLOCK, n)
        np.maximum(xf[i:j], z[:j - i], out=of[i:j])


def relu_grad_into(x, dy, out):
    """``out = dy·[x > 0]`` (``out`` may be ``dy``), by blocks on the CPU so that the mask stays in cache."""
    xp = get_array_module(x)
    if xp is not np or not (x.flags.c_contiguous and dy.flags.c_contiguous and out.flags.c_contiguous):
        xp.multiply(dy, x > 0, out=out)
        return
    xf, df, of = x.reshape(-1), dy.reshape(-1), out.reshape(-1)
    n = xf.size
    mask = np.empty(min(n, RELU_BLOCK), bool)
    for i in range(0, n, RELU_BLOCK):
        j = min(i + RELU_BLOCK, n)
        m = mask[:j - i]
        np.greater(xf[i:j], 0, out=m)
        np.multiply(df[i:j], m, out=of[i:j])


def relu_forward(x, y, slope: float) -> None:
    """Write ReLU of ``x`` into ``y`` (same shape; ``y`` may be ``x``)."""
    if native_bn.usable(x, y):
        native_bn.relu_forward(x, y, slope)
    elif slope == 0:
        relu_into(x, y)
    else:
        y[...] = relu_reference(x, slope)


def relu_backward(x, dy, dx, slope: float) -> None:
    """Write ReLU's input gradient into ``dx`` from the input ``x`` (or, for slope >= 0, the output: same sign
    test) and the top diff ``dy``; ``dx`` may be ``dy``."""
    if native_bn.usable(x, dy, dx):
        native_bn.relu_backward(x, dy, dx, slope)
    elif slope == 0:
        relu_grad_into(x, dy, dx)
    else:
        dx[...] = relu_grad_reference(x, dy, slope)
