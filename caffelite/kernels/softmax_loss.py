"""SoftmaxWithLoss's per-location loss and its gradient as CUDA kernels (the generic body: layers/loss.py).

Given the softmax probabilities ``prob`` (outer, C, inner) and the labels (outer·inner), per location:
``loss = −log(max(p_label, FLT_MIN)) · w_label`` and ``valid = label != ignore_label`` (0 loss when not
valid); backward ``dx = (prob − onehot(label)) · valid · scale`` with ``scale = loss_weight / normalizer``.
The generic body builds a one-hot (outer, C, inner) boolean and two float temporaries; the kernels read
prob once. Labels out of range are the layer's error to raise (it validates before calling).
"""

from __future__ import annotations

import numpy as np

from ..backend import cupy_module
from . import kernel, on_gpu

__all__ = ["softmax_loss_forward", "softmax_loss_backward", "FWD_SRC", "BWD_SRC"]

FLT_MIN = float(np.finfo(np.float32).tiny)

#: one thread per location (o, s); prob is (outer, C, inner)
FWD_SRC = """
    const long long o = i / INNER, s = i - o * INNER;
    const int lab = (int)label;                    // truncation, as Caffe's static_cast<int>
    if (HAS_IGNORE && lab == IGNORE) { loss = 0; valid = 0; }
    else {
        const T p = prob[(o * C + lab) * INNER + s];
        const T w = NW > 0 ? (T)weights[lab] : (T)1;
        loss = -log(max(p, (T)FLT_MIN_)) * w;
        valid = 1;
    }
"""

#: one thread per element (o, c, s) of prob
BWD_SRC = """
    const long long s = i % INNER, oc = i / INNER, c = oc % C, o = oc / C;
    const long long loc = o * INNER + s;
    const int lab = (int)label[loc];
    if (HAS_IGNORE && lab == IGNORE) { dx = 0; }
    else { dx = (prob[i] - (c == lab ? (T)1 : (T)0)) * (T)scale; }
"""

_FWD_ARGS = "raw T prob, T label, raw float64 weights, int32 C, int64 INNER, int32 NW, int32 HAS_IGNORE, " \
            "int32 IGNORE, float64 FLT_MIN_"
_BWD_ARGS = "raw T prob, raw T label, int32 C, int64 INNER, int32 HAS_IGNORE, int32 IGNORE, float64 scale"


def softmax_loss_forward(prob, label, ignore=None, label_weights=None):
    """``(loss, valid)`` per location, each (outer, inner): the layer sums loss and counts valid."""
    outer, c, inner = prob.shape
    w = np.asarray(label_weights if label_weights is not None else [], dtype=np.float64)
    if not on_gpu(prob):
        lbl = label.reshape(outer, inner).astype(np.int64)
        valid = np.ones(lbl.shape, bool) if ignore is None else lbl != ignore
        idx = np.where(valid, lbl, 0)
        p = np.take_along_axis(prob, idx[:, None, :], axis=1)[:, 0, :]
        loss = -np.log(np.maximum(p, prob.dtype.type(FLT_MIN)))
        if w.size:
            loss = loss * w.astype(loss.dtype)[idx]
        return np.where(valid, loss, 0).astype(prob.dtype), valid.astype(prob.dtype)
    cp = cupy_module()
    label = cp.ascontiguousarray(label.reshape(outer, inner), dtype=prob.dtype)
    loss = cp.empty((outer, inner), dtype=prob.dtype)
    valid = cp.empty((outer, inner), dtype=prob.dtype)
    kern = kernel("softmax_loss_fwd", "elementwise", _FWD_ARGS, "T loss, T valid", FWD_SRC)
    kern(cp.ascontiguousarray(prob), label, cp.asarray(w if w.size else np.zeros(1)), np.int32(c),
         np.int64(inner), np.int32(w.size), np.int32(ignore is not None),
         np.int32(ignore if ignore is not None else 0), np.float64(FLT_MIN), loss, valid)
    return loss, valid


def softmax_loss_backward(prob, label, scale, ignore=None, out=None):
    """``(prob − onehot(label)) · valid · scale`` with prob's shape (outer, C, inner)."""
    outer, c, inner = prob.shape
    if not on_gpu(prob):
        lbl = label.reshape(outer, inner).astype(np.int64)
        valid = np.ones(lbl.shape, bool) if ignore is None else lbl != ignore
        onehot = np.arange(c)[None, :, None] == np.where(valid, lbl, 0)[:, None, :]
        res = (prob - onehot) * (valid[:, None, :] * prob.dtype.type(scale))
        if out is None:
            return res.astype(prob.dtype)
        out[...] = res
        return out
    cp = cupy_module()
    if out is None:
        out = cp.empty(prob.shape, dtype=prob.dtype)
    label = cp.ascontiguousarray(label.reshape(outer, inner), dtype=prob.dtype)
    kern = kernel("softmax_loss_bwd", "elementwise", _BWD_ARGS, "T dx", BWD_SRC)
    kern(cp.ascontiguousarray(prob), label, np.int32(c), np.int64(inner), np.int32(ignore is not None),
         np.int32(ignore if ignore is not None else 0), np.float64(scale), out)
    return out
