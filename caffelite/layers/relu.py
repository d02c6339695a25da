"""The ReLU family: ReLU (through :mod:`caffelite.ops.relu`, which picks the compiled, blocked or plain body)
and PReLU (a learned negative slope)."""

from __future__ import annotations

from .. import backend
from ..layer import register
from ..ops import relu as R
from .common import filled_param_blob, param_propagate
from .neuron import NeuronLayer


@register("ReLU")
class ReLULayer(NeuronLayer):
    """``y = max(x, 0) + negative_slope * min(x, 0)``."""

    param_fields = {"relu_param": ("negative_slope", "engine")}

    def setup(self, bottom, top):
        self.slope = float(self.param.relu_param.negative_slope)

    def _input_needed(self):
        # With slope >= 0 the output has the input's sign, so (y > 0) == (x > 0): nothing to save.
        return self.slope < 0

    def forward(self, bottom, top):
        # with a negative slope the input cannot be recovered from the output: saved first when in place and
        # backward will need it (the op writes the top, which may be the bottom)
        self._save_input(bottom, top)
        R.relu_forward(bottom[0].data, top[0].data, self.slope)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            # the input: the saved copy, else the bottom (the output when in place: same sign test)
            R.relu_backward(self._input(bottom), top[0].diff, bottom[0].diff, self.slope)

    def f(self, xp, x):
        return R.relu_reference(x, self.slope)

    def df(self, xp, x, y, dy):
        return R.relu_grad_reference(x, dy, self.slope)


@register("PReLU")
class PReLULayer(NeuronLayer):
    """ReLU with a learned negative slope per channel (axis 1) or one shared slope (``channel_shared``)."""

    param_fields = {"prelu_param": ("filler", "channel_shared")}

    needs_input = True

    def setup(self, bottom, top):
        p = self.param.prelu_param
        if len(bottom[0].shape) < 2:
            raise self.error("Number of axes of bottom blob must be >=2.")
        self.channel_shared = bool(p.channel_shared)
        shape = () if self.channel_shared else (bottom[0].shape[1],)
        # Caffe's default slope filler is constant 0.25.
        self.blobs = [filled_param_blob(shape, p.filler if p.HasField("filler") else None, 0.25, bottom[0])]

    def reshape(self, bottom, top):
        if not self.channel_shared and bottom[0].shape[1] != self.blobs[0].count:
            raise self.error(f"PReLU has {self.blobs[0].count} slopes but the bottom has "
                             f"{bottom[0].shape[1]} channels")
        super().reshape(bottom, top)

    def _slope(self, x):
        a = self.blobs[0].data.astype(x.dtype, copy=False)
        if self.channel_shared:
            return a.reshape(())
        return a.reshape((1, -1) + (1,) * (x.ndim - 2))

    def f(self, xp, x):
        return xp.where(x > 0, x, x * self._slope(x))

    def df(self, xp, x, y, dy):
        neg = x <= 0
        if param_propagate(self, 0):
            # slope diff accumulates sum(dy * x) over the non-positive inputs
            g = xp.where(neg, dy * x, 0)
            if self.channel_shared:
                self.blobs[0].diff[...] += g.sum()
            else:
                axes = (0,) + tuple(range(2, x.ndim))
                self.blobs[0].diff[...] += g.sum(axis=axes)
        return xp.where(neg, dy * self._slope(x), dy)

    def backward(self, top, propagate_down, bottom):
        x = self._input(bottom)
        xp = backend.get_array_module(x)
        dx = self.df(xp, x, top[0].data, top[0].diff)  # also accumulates the slope diff
        if propagate_down[0]:
            bottom[0].diff[...] = dx
