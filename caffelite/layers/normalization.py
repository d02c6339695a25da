"""Normalisation layers: LRN (across / within channels) and MVN. BatchNorm lives in :mod:`.batch_norm`."""

from __future__ import annotations

from ..backend import get_array_module
from ..layer import Layer, register
from .common import copy_into
from .batch_norm import BatchNormLayer, convert_blobs, split_for_bvlc  # noqa: F401  (re-exported)


def window_sum(a, axis, size):
    """Sum of each centred window of odd ``size`` along ``axis``, zero-padded at the borders."""
    xp = get_array_module(a)
    pre = (size - 1) // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (pre, size - 1 - pre)
    p = xp.pad(a, pad)
    n = a.shape[axis]
    out = None
    for o in range(size):  # `size` whole-array adds (local_size is small), never a loop over elements
        s = p[(slice(None),) * axis + (slice(o, o + n),)]
        out = s.copy() if out is None else out + s
    return out


@register("LRN")
class LRNLayer(Layer):
    """Local response normalisation.

    ACROSS_CHANNELS: ``scale = k + α/n · Σ_{window over c} x²``, ``y = x · scale^-β``.
    WITHIN_CHANNEL: Caffe builds it from AVE pooling (pad (n−1)/2, stride 1) and Power layers, so
    ``y = x · (1 + α/n² · Σ_{n×n window} x²)^-β``: ``k`` is not used and border windows still divide by n².
    """

    param_fields = {"lrn_param": ("local_size", "alpha", "beta", "norm_region", "k", "engine")}

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        lp = self.param.lrn_param
        self.size = int(lp.local_size)
        if self.size % 2 == 0:
            raise self.error("LRN only supports odd values for local_size")
        self.alpha, self.beta, self.k = float(lp.alpha), float(lp.beta), float(lp.k)
        self.across = lp.norm_region == lp.ACROSS_CHANNELS
        if not self.across and lp.norm_region != lp.WITHIN_CHANNEL:
            raise self.unsupported("lrn_param.norm_region", lp.norm_region)

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.error("Input must have 4 axes, corresponding to (num, channels, height, width)")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.across:
            self.scale = self.k + (self.alpha / self.size) * window_sum(x * x, 1, self.size)
        else:
            box = window_sum(window_sum(x * x, 2, self.size), 3, self.size)
            self.scale = 1 + (self.alpha / (self.size * self.size)) * box
        # keep x when in place: backward needs it after top has overwritten it (only if backward will run)
        self._x = copy_into(getattr(self, "_x", None), x) if top[0] is bottom[0] and self.needs_backward else None
        top[0].data[...] = x * self.scale ** -self.beta

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].data if self._x is None else self._x
        y, dy = top[0].data, top[0].diff
        ratio = dy * y / self.scale
        if self.across:
            acc = window_sum(ratio, 1, self.size)
            n = self.size
        else:
            acc = window_sum(window_sum(ratio, 2, self.size), 3, self.size)
            n = self.size * self.size
        dx = dy * self.scale ** -self.beta - (2 * self.alpha * self.beta / n) * x * acc
        bottom[0].diff[...] = dx


@register("MVN")
class MVNLayer(Layer):
    """Mean-variance normalisation per sample (``across_channels``) or per sample and channel.

    ``y = (x − μ)`` or, with ``normalize_variance``, ``y = (x − μ) / (σ + eps)`` with σ the biased standard
    deviation: Caffe adds eps to the std, not to the variance.
    """

    param_fields = {"mvn_param": ("normalize_variance", "across_channels", "eps")}

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        mp = self.param.mvn_param
        self.across = bool(mp.across_channels)
        self.normalize_variance = bool(mp.normalize_variance)
        self.eps = float(mp.eps)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        n = shape[0] if shape else 1
        c = shape[1] if len(shape) > 1 else 1
        self.rows = n if self.across else n * c
        top[0].reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.rows, -1)
        xc = x - x.mean(axis=1, keepdims=True)
        if self.normalize_variance:
            self.std = (xc * xc).mean(axis=1, keepdims=True) ** 0.5 + self.eps
            xc = xc / self.std
        top[0].data[...] = xc.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.rows, -1)
        g = dy - dy.mean(axis=1, keepdims=True)
        if self.normalize_variance:
            # Caffe's formula (reads the top, as Caffe does): exact up to the eps on the std
            y = top[0].data.reshape(self.rows, -1)
            g = (g - y * (dy * y).mean(axis=1, keepdims=True)) / self.std
        bottom[0].diff[...] = g.reshape(bottom[0].shape)
