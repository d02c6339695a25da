"""BatchNorm's compute: batch statistics, normalisation and their gradients; the one place that chooses how they
run. The layer (:mod:`caffelite.layers.batch_norm`) keeps the semantics: which statistics, running averages,
parameter diffs.

Arrays are viewed as (N, C, S) (S = H·W), ``m = N·S`` values per channel. The reference formulas
(:func:`batch_stats`, :func:`train_forward_reference`, :func:`train_backward_reference`)::

    μ = Σx/m,  σ² = Σ(x − μ)²/m (two-pass, biased),  inv = 1/sqrt(σ² + eps),  x̂ = (x − μ)·inv,  y = x̂·γ + β
    dγ = Σ dy·x̂,  dβ = Σ dy,  dx = (dy − x̂·dγ/m − dβ/m)·inv·γ        (γ = 1, β = 0 without scale_bias)

with per-channel sums over the contiguous axis first, then N (:func:`chan_sum`). The entry points
:func:`train_forward` / :func:`train_backward` pick, in this order:

1. the compiled kernels (:mod:`caffelite.ops.native_bn`) for C-contiguous float32 NumPy arrays, when built and
   enabled (:func:`caffelite.ops.native.enabled`);
2. on CuPy arrays, the named kernel ``bn_stats`` (:mod:`caffelite.kernels.batchnorm`) for μ and σ², the
   reference expressions for the rest;
3. on NumPy, the cache-blocked variants :func:`train_forward_blocked` / :func:`train_backward_blocked`, bitwise
   equal to the reference (``tests/test_ops_batch_norm.py``, ``tests/test_layers_batch_norm_blocked.py``).

:func:`inference_forward` is the global-statistics forward (the deploy hot path), the same on every backend.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..kernels import batchnorm as kbn
from ..kernels import on_gpu
from . import native_bn

__all__ = ["chan_sum", "batch_stats", "train_forward_reference", "train_backward_reference", "train_forward",
           "train_backward", "train_forward_blocked", "train_backward_blocked", "inference_forward", "BLOCK_BYTES"]

#: bytes of the input one block of the blocked TRAIN passes covers (NumPy): its temporaries then stay in a
#: core's L2 cache, so each pass reads and writes the large arrays once instead of once per operation
BLOCK_BYTES = 1 << 20


def chan_sum(a):
    """Per-channel sums of an (N, C, S) array: the contiguous axis first (pairwise, fast), then N."""
    return a.sum(axis=2).sum(axis=0)


def _vec(v):
    return v.reshape(1, -1, 1)


def _new_scratch(name, shape, like):
    return get_array_module(like).empty(shape, like.dtype)


# -- the reference ---------------------------------------------------------------------------------------------

def batch_stats(x):
    """``(μ, σ²)`` per channel of ``x`` (N, C, S): the mean and the biased two-pass variance."""
    m = x.shape[0] * x.shape[2]
    mean = chan_sum(x) / m
    d = x - _vec(mean)
    return mean, chan_sum(d * d) / m


def _normalize(x, mean, var, gamma, beta, eps):
    """``(y, x̂, inv)`` from the statistics (the reference's second half)."""
    xp = get_array_module(x)
    inv = 1 / xp.sqrt(var + eps)
    xhat = (x - _vec(mean)) * _vec(inv)
    y = xhat if gamma is None else xhat * _vec(gamma) + _vec(beta)
    return y, xhat, inv


def train_forward_reference(x, gamma, beta, eps: float):
    """The reference TRAIN forward of ``x`` (N, C, S): returns ``(y, x̂, μ, σ², inv)``; ``gamma``/``beta`` (C,)
    or None."""
    mean, var = batch_stats(x)
    y, xhat, inv = _normalize(x, mean, var, gamma, beta, eps)
    return y, xhat, mean, var, inv


def train_backward_reference(dy, xhat, inv, gamma):
    """The reference TRAIN backward: ``(dx, dγ, dβ)`` from ``dy``, ``x̂`` (N, C, S) and ``inv``, ``gamma`` (C,)."""
    m = xhat.shape[0] * xhat.shape[2]
    dgamma, dbeta = chan_sum(dy * xhat), chan_sum(dy)
    scale = inv if gamma is None else inv * gamma
    dx = (dy - xhat * _vec(dgamma / m) - _vec(dbeta / m)) * _vec(scale)
    return dx, dgamma, dbeta


# -- the dispatchers -------------------------------------------------------------------------------------------

def train_forward(x, y, gamma, beta, eps: float, xhat=None, scratch=None):
    """TRAIN forward of ``x`` (N, C, S) into ``y`` (``x``'s size, any layout; may share ``x``'s memory) and, when
    given, into ``xhat`` (N, C, S, C-contiguous; x̂ for backward). ``gamma``/``beta``: (C,) or None. ``scratch``:
    ``(name, shape, like) -> array`` for work arrays kept across calls (a new array each call by default).
    Returns ``(μ, σ², inv)``, each (C,)."""
    if native_bn.usable(x, y, gamma, beta):
        return native_bn.bn_train_forward(x, y.reshape(x.shape), xhat, gamma, beta, eps)
    if on_gpu(x):
        mean, var = kbn.channel_stats(x)
        out, xh, inv = _normalize(x, mean, var, gamma, beta, eps)
        y[...] = out.reshape(y.shape)
        if xhat is not None:
            xhat[...] = xh
        return mean, var, inv
    return train_forward_blocked(x, y, gamma, beta, eps, xhat, scratch)


def train_backward(dy, xhat, inv, gamma, dx=None, scratch=None):
    """TRAIN backward: returns ``(dγ, dβ)`` (C,) and, when ``dx`` is given (``dy``'s size; may be ``dy``),
    writes the input gradient there. ``dy`` and ``x̂``: (N, C, S); ``inv``, ``gamma``: (C,) (``gamma`` None
    without scale_bias)."""
    if native_bn.usable(dy, xhat, dx):
        scale = inv if gamma is None else inv * gamma
        return native_bn.bn_train_backward(dy.reshape(xhat.shape), xhat, np.ascontiguousarray(scale, np.float32),
                                           None if dx is None else dx.reshape(xhat.shape))
    if on_gpu(dy):
        d, dgamma, dbeta = train_backward_reference(dy.reshape(xhat.shape), xhat, inv, gamma)
        if dx is not None:
            dx[...] = d.reshape(dx.shape)
        return dgamma, dbeta
    return train_backward_blocked(dy, xhat, inv, gamma, dx, scratch)


def inference_forward(x, y, mean, inv, gamma, beta) -> None:
    """Global-statistics forward ``y = (x − μ)·(inv·γ) + β`` written straight into ``y`` (N, C, S) — a few
    whole-array passes, no temporaries. ``mean``, ``inv`` (1, C, 1); ``gamma``/``beta`` (1, C, 1) or None."""
    xp = get_array_module(x)
    xp.subtract(x, mean, out=y)
    xp.multiply(y, inv if gamma is None else inv * gamma, out=y)
    if gamma is not None:
        xp.add(y, beta, out=y)


# -- the cache-blocked NumPy variants --------------------------------------------------------------------------

def row_blocks(xp, rows, row_len, itemsize):
    """Slices over the rows of an (N·C, S) view: whole rows (a row's sum is then bitwise the one of
    :func:`chan_sum`), about :data:`BLOCK_BYTES` each on the CPU; one block on a GPU (no gain from blocking)."""
    if xp is not np:
        return [slice(0, rows)]
    k = max(1, BLOCK_BYTES // max(1, row_len * itemsize))
    return [slice(i, min(i + k, rows)) for i in range(0, rows, k)] or [slice(0, rows)]


def _rows(xp, v, n):
    """A per-channel vector as an (N·C, 1) column matching the rows of the (N·C, S) views."""
    return xp.tile(v.reshape(-1), n)[:, None]


def train_forward_blocked(x, y, gamma, beta, eps: float, xhat=None, scratch=None):
    """:func:`train_forward` in blocks of whole rows of the (N·C, S) view so that the temporaries stay in cache:
    one pass for Σx, one writing x − μ and its per-row Σ(x − μ)², one scaling that to x̂ (kept in ``xhat``
    when given) and writing y. Each value comes from the same float operations, in the same order, as
    :func:`train_forward_reference`, and each row's sum is NumPy's pairwise sum of the whole row, so the
    results are bitwise those of it."""
    xp = get_array_module(x)
    scratch = scratch or _new_scratch
    n, c, s = x.shape
    m = n * s
    rows = n * c
    xr = x.reshape(rows, -1)
    yr = y.reshape(xr.shape) if y.flags.c_contiguous else xp.empty(xr.shape, xr.dtype)
    blocks = row_blocks(xp, rows, xr.shape[1], xr.dtype.itemsize)
    tmp = scratch("_tmp", (blocks[0].stop, xr.shape[1]), xr)
    keep = xhat is not None
    xh = xhat.reshape(xr.shape) if keep else None
    mean = chan_sum(x) / m
    mrow = _rows(xp, mean, n)
    sq = xp.empty(rows, xr.dtype)
    for b in blocks:
        t = tmp[:b.stop - b.start]
        d = xh[b] if keep else t
        xp.subtract(xr[b], mrow[b], out=d)
        xp.multiply(d, d, out=t)
        t.sum(axis=1, out=sq[b])
    var = sq.reshape(n, c).sum(axis=0) / m  # two-pass, biased
    inv = 1 / xp.sqrt(var + eps)
    irow = _rows(xp, inv, n)
    if gamma is not None:
        grow, brow = _rows(xp, gamma, n), _rows(xp, beta, n)
    for b in blocks:
        if keep:
            t = xh[b]
        else:
            t = tmp[:b.stop - b.start]
            xp.subtract(xr[b], mrow[b], out=t)
        xp.multiply(t, irow[b], out=t)  # x̂
        if gamma is None:
            yr[b] = t
        else:
            xp.multiply(t, grow[b], out=yr[b])
            xp.add(yr[b], brow[b], out=yr[b])
    if not y.flags.c_contiguous:
        y[...] = yr.reshape(y.shape)
    return mean, var, inv


def train_backward_blocked(dy, xhat, inv, gamma, dx=None, scratch=None):
    """:func:`train_backward` in blocks as the forward: one pass for the two sums, one writing dx, with the float
    operations of :func:`train_backward_reference` in its order (bitwise equal to it)."""
    xp = get_array_module(dy)
    scratch = scratch or _new_scratch
    n, c, s = xhat.shape
    m = n * s
    rows = n * c
    xh = xhat.reshape(rows, -1)
    dyr = dy.reshape(xh.shape)
    blocks = row_blocks(xp, rows, xh.shape[1], xh.dtype.itemsize)
    tmp = scratch("_tmp", (blocks[0].stop, xh.shape[1]), xh)
    gs, bs = xp.empty(rows, xh.dtype), xp.empty(rows, xh.dtype)
    for b in blocks:
        t = tmp[:b.stop - b.start]
        xp.multiply(dyr[b], xh[b], out=t)
        t.sum(axis=1, out=gs[b])
        dyr[b].sum(axis=1, out=bs[b])
    dgamma = gs.reshape(n, c).sum(axis=0)
    dbeta = bs.reshape(n, c).sum(axis=0)
    if dx is None:
        return dgamma, dbeta
    scale = inv if gamma is None else inv * gamma
    arow, brow, srow = _rows(xp, dgamma / m, n), _rows(xp, dbeta / m, n), _rows(xp, scale, n)
    dxr = dx.reshape(xh.shape) if dx.flags.c_contiguous else xp.empty(xh.shape, dx.dtype)
    for b in blocks:
        t = tmp[:b.stop - b.start]
        xp.multiply(xh[b], arow[b], out=t)
        xp.subtract(dyr[b], t, out=t)
        xp.subtract(t, brow[b], out=t)
        xp.multiply(t, srow[b], out=dxr[b])
    if not dx.flags.c_contiguous:
        dx[...] = dxr.reshape(dx.shape)
    return dgamma, dbeta
