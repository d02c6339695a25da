"""Softmax over one axis (Caffe's ``Softmax``), plus the helpers the loss layers share with it."""

from __future__ import annotations

from ..backend import get_array_module
from ..layer import Layer, register
from .common import canonical_axis

__all__ = ["SoftmaxLayer", "canonical_axis", "softmax", "split_axis"]


def split_axis(shape, axis):
    """(outer, channels, inner) counts of ``shape`` around ``axis``."""
    outer = 1
    for s in shape[:axis]:
        outer *= s
    inner = 1
    for s in shape[axis + 1:]:
        inner *= s
    return outer, shape[axis], inner


def softmax(x, axis):
    """Numerically stable softmax of ``x`` along ``axis`` (max subtracted first, as Caffe does)."""
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


@register("Softmax")
class SoftmaxLayer(Layer):
    """``y = exp(x) / Σ_axis exp(x)`` along ``softmax_param.axis`` (default 1)."""

    param_fields = {"softmax_param": ("engine", "axis")}

    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        # softmax_param.engine only picks an implementation in Caffe; the numbers are the same.
        self._axis_param = self.param.softmax_param.axis

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, self._axis_param, bottom[0].num_axes)
        top[0].reshape(bottom[0].shape)

    def _view(self, a):
        return a.reshape(split_axis(a.shape, self.axis))

    def forward(self, bottom, top):
        top[0].data[...] = softmax(self._view(bottom[0].data), 1).reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = self._view(top[0].data)
        dy = self._view(top[0].diff)
        # dx = (dy - Σ_axis dy·y) · y ; computed before assigning since top and bottom may be one blob
        dx = (dy - (dy * y).sum(axis=1, keepdims=True)) * y
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)
