"""The per-output-channel threshold search of caffe-jacinto's sparsity (docs/jacinto-spec.md §a.3), vectorised.

jacinto walks a float32 grid per channel with a Python-like ``while`` loop (four passes, granularity 1000, 100,
10 and 1 times ``max|w_c| * 1e-7``) and counts the zero fraction at every grid point: 851 s for jsegnet21v2's
first step. The zero fraction is monotone in the threshold, so "the last grid point whose fraction does not
exceed ``fraction``" is "the last grid point below ``L_c``", where ``L_c`` is the (nmax+1)-th smallest
``|w_c|`` and ``nmax`` the largest count whose fraction is allowed. ``L_c`` comes from one partition of the
weights; the grid itself only involves per-channel scalars, and is replayed on the host with float32
``add.accumulate`` (sequential, as jacinto's ``t += dX``), so ``mode="exact"`` gives jacinto's thresholds.
``mode="direct"`` is the limit of an infinitely fine grid: every weight below ``min(L_c, cap_c)`` is zeroed.
"""

from __future__ import annotations

import numpy as np

from .. import backend

STEP_FACTOR = np.float32(1e-7)  # hard-coded in Solver::ThresholdNet (§a.1)
_PASSES = ((1000, 0), (100, 1), (10, 2), (1, 3))
MODES = ("exact", "direct")


def conv_geometry(shape, group, kernel):
    """``(ni, no)`` of a conv weight blob as jacinto computes them (§a.3): ``no = shape[0]``, ``ni = shape[1]*g``."""
    if len(shape) <= 1:
        n = int(np.prod(shape)) if shape else 1
        return n, n
    return int(shape[1]) * int(group), int(shape[0])


def is_eligible(ni, no, group, kh, kw, version="0.17"):
    """Whether jacinto prunes this Convolution (§a.3).

    0.17: ``(ni >= 32 or no >= 32) and g < no and kh > 2 and kw > 2 and g != no``. ``"0.16"`` is the build
    that made the reference logs: no kernel-size / ``g != no`` terms.
    """
    base = (ni >= 32 or no >= 32) and group < no
    if version == "0.16":
        return bool(base)
    return bool(base and kh > 2 and kw > 2 and group != no)


def channel_fraction(ni, no, factor):
    """The per-layer allowed zero fraction (§a.3): high if ni>=256 and no>=512, mid if both >= 32, else low."""
    f = np.float32(factor)
    if ni >= 256 and no >= 512:
        return f
    if ni >= 32 and no >= 32:
        return f
    return np.float32(f / np.float32(2.0))


def max_allowed_count(k, fraction):
    """Largest ``n`` in ``[0, k]`` with ``float32(n)/float32(k) <= fraction`` (jacinto's zero-fraction test)."""
    fr = np.float32(fraction)
    k32 = np.float32(k)
    n = int(np.floor(float(fr) * k))
    n = max(0, min(k, n))
    while n < k and np.float32(n + 1) / k32 <= fr:
        n += 1
    while n > 0 and np.float32(n) / k32 > fr:
        n -= 1
    if n == 0 and np.float32(0) > fr:  # negative fraction: even zero zeros is too many
        return -1
    return n


def _walk(lo, bound, dx, start):
    """Replay ``t = lo; while t < bound: t_sel = t; t += dx`` per channel in float32; ``start`` if none accepted."""
    lo = lo.astype(np.float32)
    res = start.astype(np.float32).copy()
    active = lo < bound
    if not active.any():
        return res
    res[active] = lo[active]
    cur = lo.copy()
    idx = np.nonzero(active)[0]
    while idx.size:
        span = (bound[idx] - cur[idx]) / np.where(dx[idx] > 0, dx[idx], 1)
        n = int(min(max(np.max(span), 1.0), 1e6)) + 4
        seq = np.empty((idx.size, n + 1), np.float32)
        seq[:, 0] = cur[idx]
        seq[:, 1:] = dx[idx, None]
        seq = np.add.accumulate(seq, axis=1, dtype=np.float32)  # sequential float32 sum, like t += dX
        ok = seq < bound[idx, None]
        nacc = ok.sum(axis=1)  # the sequence is non-decreasing, so accepted points are a prefix
        last = seq[np.arange(idx.size), np.maximum(nacc - 1, 0)]
        res[idx] = np.where(nacc > 0, last, res[idx])
        cur[idx] = seq[:, -1]
        stalled = seq[:, -1] <= seq[:, 0]
        more = (nacc == n + 1) & ~stalled  # walked the whole chunk without leaving: continue from its end
        idx = idx[more]
        if idx.size:
            cur[idx] = cur[idx] + dx[idx]
    return res


def channel_thresholds(w, fraction, maxratio=0.2, value_max=0.2, mode="exact"):
    """Per-output-channel thresholds of weight blob ``w`` (any array module), as a host float32 array.

    Weights with ``|w| <= t_c`` are then zeroed (:func:`apply_thresholds`). ``mode`` is "exact" (jacinto's grid)
    or "direct" (largest threshold allowed by ``fraction`` and the caps, no grid).
    """
    if mode not in MODES:
        raise ValueError(f"threshold mode must be one of {MODES}, not {mode!r}")
    xp = backend.get_array_module(w)
    c = int(w.shape[0]) if w.ndim > 1 else 1
    a = xp.abs(w.reshape(c, -1).astype(xp.float32))
    k = a.shape[1]
    m = backend.to_numpy(a.max(axis=1)).astype(np.float32)
    nmax = max_allowed_count(k, fraction)
    if nmax < 0:
        big = np.full(c, -np.inf, np.float32)
        return big
    if nmax >= k:
        lim = np.full(c, np.inf, np.float32)
    else:
        lim = backend.to_numpy(xp.partition(a, nmax, axis=1)[:, nmax]).astype(np.float32)
    cap = np.minimum(np.minimum(np.float32(value_max), (m * np.float32(maxratio)).astype(np.float32)), m)
    if mode == "direct":
        bound = np.minimum(lim, cap)
        # the largest float32 strictly below the bound: zero everything < bound (ties at the bound stay)
        t = np.nextafter(bound, np.float32(-np.inf)).astype(np.float32)
        return np.where(bound > 0, t, np.float32(0)).astype(np.float32)
    step = (m * STEP_FACTOR).astype(np.float32)
    tsel = np.zeros(c, np.float32)
    for gran, it in _PASSES:
        dx = (step * np.float32(gran)).astype(np.float32)
        span = (dx * np.float32(20)).astype(np.float32)
        start = tsel
        if it == 0:
            lo = np.zeros(c, np.float32)
            hi = cap
        else:
            lo = np.maximum((start - span).astype(np.float32), np.float32(0))
            hi = (start + span).astype(np.float32)
        bound = np.minimum(np.minimum(hi, cap), lim)
        tsel = _walk(lo, bound, dx, start)
    return tsel


def apply_thresholds(w, thresholds):
    """Zero, in place, the weights of each output channel with ``|w| <= t_c`` (§a.3); returns ``w``."""
    xp = backend.get_array_module(w)
    c = int(w.shape[0]) if w.ndim > 1 else 1
    t = xp.asarray(np.asarray(thresholds, np.float32))
    keep = xp.abs(w.reshape(c, -1)) > t[:, None]
    w *= keep.reshape(w.shape).astype(w.dtype)  # in place on w itself (reshape may copy)
    return w


def reference_grid_search(wc, fraction, maxratio=0.2, value_max=0.2):
    """A direct, per-element transcription of jacinto's grid search for ONE channel (tests only; slow)."""
    f32 = np.float32
    wc = np.asarray(wc, np.float32).ravel()
    k = wc.size
    aw = np.abs(wc)
    m = f32(max(abs(wc.max()), abs(wc.min())))
    step = f32(m * STEP_FACTOR)
    cap = min(f32(value_max), f32(m * f32(maxratio)), m)
    fr = f32(fraction)
    tsel = f32(0)
    for gran, it in _PASSES:
        dx = f32(step * f32(gran))
        span = f32(dx * f32(20))
        start = tsel
        lo = f32(0) if it == 0 else max(f32(start - span), f32(0))
        hi = cap if it == 0 else f32(start + span)
        t = lo
        while t < hi and t < cap:
            z = f32(np.count_nonzero(aw <= t)) / f32(k)
            if z <= fr:
                tsel = t
            else:
                break
            t = f32(t + dx)
    return tsel
