"""Caffe's GradientChecker, in float64: compare a layer's backward with central differences.

The objective is Caffe's: ``0.5 * sum over tops of top.data**2`` (so each top's diff is its data), or, for
a loss layer, the loss itself with top diff 1. Step 1e-2, threshold 1e-3 relative to max(|a|, |b|, 1).
Elements whose input lies within ``kink_range`` of ``kink`` (e.g. ReLU at 0) are skipped, as Caffe does.
Like Caffe's checker, every forward starts from the same random state, so a TRAIN Dropout draws one mask.
"""

from __future__ import annotations

import numpy as np

from caffelite import backend
from caffelite.blob import Blob
from caffelite.layer import TEST, create_layer


def make_blobs(arrays):
    out = []
    for a in arrays:
        b = Blob(a.shape, np.float64)
        b.data[...] = a
        out.append(b)
    return out


def _objective(layer, bottom, top, loss, rng_state):
    backend.set_rng_state(rng_state)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    if loss:
        return float(top[0].data.reshape(-1)[0])
    return 0.5 * sum(float(np.sum(t.data.astype(np.float64) ** 2)) for t in top)


def check_layer_gradient(param, bottom_arrays, *, phase=TEST, num_top=None, check_bottoms=None,
                         check_params=True, step=1e-2, threshold=1e-3, kink=0.0, kink_range=-1.0,
                         extra=None, init_params=None, max_checks=300, seed=0):
    """Numerically check ``param``'s layer. Returns the number of elements compared (asserts on mismatch).

    ``bottom_arrays``: float64 inputs. ``check_bottoms``: indices of bottoms to check (default: all).
    ``init_params``: callable(layer) to set param values after setup. ``max_checks``: per blob, a random
    subset of at most this many elements is checked (keeps the suite fast on larger blobs).
    """
    layer = create_layer(param, phase, extra)
    bottom = make_blobs(bottom_arrays)
    n_top = num_top if num_top is not None else len(param.top)
    top = [Blob((), np.float64) for _ in range(n_top)]
    layer.check_blob_counts(bottom, top)
    layer.setup(bottom, top)
    for b in layer.blobs:  # params in float64 too
        if b.dtype != np.float64:
            nb = Blob(b.shape, np.float64)
            nb.data[...] = b.data
            b.__init__(b.shape, np.float64)
            b.data[...] = nb.data
    if init_params is not None:
        init_params(layer)
    loss = bool(layer.is_loss)
    check_bottoms = list(range(len(bottom))) if check_bottoms is None else list(check_bottoms)

    # analytic gradient
    state = backend.rng_state()
    _objective(layer, bottom, top, loss, state)
    for t in top:
        t.diff[...] = 0
    if loss:
        top[0].diff.reshape(-1)[0] = 1.0
    else:
        for t in top:
            t.diff[...] = t.data
    for b in layer.blobs:
        b.diff[...] = 0
    propagate = [i in check_bottoms for i in range(len(bottom))]
    layer.backward(top, propagate, bottom)
    targets = [(bottom[i], bottom[i].diff.copy(), f"bottom {i}") for i in check_bottoms]
    if check_params:
        targets += [(b, b.diff.copy(), f"param {k}") for k, b in enumerate(layer.blobs)
                    if getattr(layer, "param_propagate_down", None) is None or not layer.param_propagate_down
                    or layer.param_propagate_down[k]]
    rs = np.random.default_rng(seed)
    checked = 0
    for blob, analytic, what in targets:
        flat = blob.data.reshape(-1)
        idx = np.arange(flat.size)
        if flat.size > max_checks:
            idx = rs.choice(flat.size, max_checks, replace=False)
        for i in idx:
            x = flat[i]
            if kink_range > 0 and abs(x - kink) <= kink_range:
                continue
            flat[i] = x + step
            plus = _objective(layer, bottom, top, loss, state)
            flat[i] = x - step
            minus = _objective(layer, bottom, top, loss, state)
            flat[i] = x
            est = (plus - minus) / (2 * step)
            comp = float(analytic.reshape(-1)[i])
            scale = max(abs(est), abs(comp), 1.0)
            assert abs(est - comp) <= threshold * scale, (
                f"{param.type} '{param.name}' {what}[{i}]: analytic {comp:.6g} vs numeric {est:.6g}")
            checked += 1
    _objective(layer, bottom, top, loss, state)
    return checked
