"""Element-wise activation ("neuron") layers: one bottom, one top of the same shape, in-place allowed.

The base class :class:`NeuronLayer` and the smooth/arithmetic activations live here; the ReLU family (ReLU,
PReLU) is in :mod:`caffelite.layers.relu`.

Each layer gives a forward function of the input and a backward function of (input, output, top diff).
Caffe computes some backwards from the bottom data; when such a layer runs in place the bottom has been
overwritten by the output, so we keep a copy of the input in forward (as Caffe's PReLU does) whenever
the input cannot be recovered from the output. Layers whose backward only needs the output (Sigmoid,
TanH, Exp, ELU, ReLU with a non-negative slope) keep nothing.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..layer import TRAIN, Layer, register
from .common import copy_into

# Caffe's BNLL clamps exp's argument at this value (bnll_layer.cpp kBNLL_THRESHOLD).
_BNLL_THRESHOLD = 50.0


class NeuronLayer(Layer):
    """Base of the element-wise layers: shape the top like the bottom, save the input when needed."""

    param_fields = {}

    exact_num_bottom = 1
    exact_num_top = 1
    allows_in_place = True
    #: whether backward needs the input x (True: saved in forward when running in place)
    needs_input = False

    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = backend.get_array_module(x)
        self._save_input(bottom, top)
        top[0].data[...] = self.f(xp, x)

    def _save_input(self, bottom, top):
        """Keep a copy of the input when running in place and backward will need it (the top overwrites it)."""
        keep = top[0] is bottom[0] and self.needs_backward and self._input_needed()
        self._saved_x = copy_into(getattr(self, "_saved_x", None), bottom[0].data) if keep else None

    def _input(self, bottom):
        """The input for backward: the saved copy, else the bottom (the output when in place and not saved)."""
        saved = getattr(self, "_saved_x", None)
        return saved if saved is not None else bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self._input(bottom)
        y = top[0].data
        xp = backend.get_array_module(y)
        bottom[0].diff[...] = self.df(xp, x, y, top[0].diff)

    def _input_needed(self) -> bool:
        return self.needs_input

    # subclasses implement these two
    def f(self, xp, x):
        """The activation of ``x``."""
        raise NotImplementedError

    def df(self, xp, x, y, dy):
        """The bottom diff, from the input ``x`` (the output when in place and not saved), ``y`` and ``dy``."""
        raise NotImplementedError


@register("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """``y = 1 / (1 + exp(-x))``; backward from the output."""

    param_fields = {"sigmoid_param": ("engine",)}

    def f(self, xp, x):
        # 0.5 * tanh(0.5 x) + 0.5 is the overflow-free form of the logistic function
        half = x.dtype.type(0.5)
        return half * xp.tanh(half * x) + half

    def df(self, xp, x, y, dy):
        return dy * y * (1 - y)


@register("TanH")
class TanHLayer(NeuronLayer):
    """``y = tanh(x)``; backward from the output."""

    param_fields = {"tanh_param": ("engine",)}

    def f(self, xp, x):
        return xp.tanh(x)

    def df(self, xp, x, y, dy):
        return dy * (1 - y * y)


@register("ELU")
class ELULayer(NeuronLayer):
    """``y = lambda * (x > 0 ? x : alpha * (exp(x) - 1))`` (caffe-jacinto adds ``lambda``, default 1)."""

    param_fields = {"elu_param": ("alpha", "lambda")}

    def setup(self, bottom, top):
        p = self.param.elu_param
        self.alpha = float(p.alpha)
        self.lam = float(getattr(p, "lambda"))
        if self.lam <= 0:
            raise self.error("elu_param.lambda must be positive")

    def f(self, xp, x):
        t = x.dtype.type
        return t(self.lam) * xp.where(x > 0, x, t(self.alpha) * xp.expm1(xp.minimum(x, 0)))

    def df(self, xp, x, y, dy):
        # For x <= 0 the derivative lambda*alpha*exp(x) equals y + lambda*alpha, so the output suffices
        # (and x > 0 iff y > 0), which keeps it right in place.
        t = dy.dtype.type
        return xp.where(x > 0, dy * t(self.lam), dy * (y + t(self.lam * self.alpha)))


@register("AbsVal")
class AbsValLayer(NeuronLayer):
    """``y = |x|``; backward ``dy * sign(x)`` (0 at 0)."""

    needs_input = True

    def f(self, xp, x):
        return xp.abs(x)

    def df(self, xp, x, y, dy):
        return dy * xp.sign(x)


@register("BNLL")
class BNLLLayer(NeuronLayer):
    """``y = log(1 + exp(x))``, computed without overflow."""

    needs_input = True

    def f(self, xp, x):
        return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    def df(self, xp, x, y, dy):
        e = xp.exp(xp.minimum(x, x.dtype.type(_BNLL_THRESHOLD)))
        return dy * e / (e + 1)


@register("Power")
class PowerLayer(NeuronLayer):
    """``y = (shift + scale * x) ** power``."""

    param_fields = {"power_param": ("power", "scale", "shift")}

    needs_input = True

    def setup(self, bottom, top):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.diff_scale = self.power * self.scale

    def f(self, xp, x):
        t = x.dtype.type
        if self.diff_scale == 0:
            # Caffe: a constant output, 1 for power 0, else shift ** power
            return xp.full(x.shape, 1.0 if self.power == 0 else self.shift ** self.power, dtype=x.dtype)
        base = x * t(self.scale) + t(self.shift) if (self.scale != 1 or self.shift != 0) else x
        if self.power == 1:
            return base.copy() if base is x else base
        if self.power == 2:
            return base * base
        return xp.power(base, t(self.power))

    def df(self, xp, x, y, dy):
        t = dy.dtype.type
        if self.diff_scale == 0:
            return xp.zeros_like(dy)
        if self.power == 1:
            return dy * t(self.scale)
        base = x * t(self.scale) + t(self.shift)
        if self.power == 2:
            return dy * t(self.diff_scale) * base
        return dy * t(self.diff_scale) * xp.power(base, t(self.power - 1))


def _log_base(layer, base):
    """ln(base) for Exp/Log (``base`` -1 means e); Caffe requires a strictly positive base."""
    if base == -1:
        return 1.0
    if base <= 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base:g}")
    return math.log(base)


@register("Exp")
class ExpLayer(NeuronLayer):
    """``y = base ** (shift + scale * x)`` (base e by default); backward from the output."""

    param_fields = {"exp_param": ("base", "scale", "shift")}

    def setup(self, bottom, top):
        p = self.param.exp_param
        ln_base = _log_base(self, float(p.base))
        self.inner_scale = ln_base * float(p.scale)
        self.outer_scale = 1.0 if p.shift == 0 else math.exp(ln_base * float(p.shift))

    def f(self, xp, x):
        t = x.dtype.type
        y = xp.exp(x * t(self.inner_scale)) if self.inner_scale != 1 else xp.exp(x)
        return y * t(self.outer_scale) if self.outer_scale != 1 else y

    def df(self, xp, x, y, dy):
        return dy * y * dy.dtype.type(self.inner_scale)


@register("Log")
class LogLayer(NeuronLayer):
    """``y = log_base(shift + scale * x)`` (natural log by default)."""

    param_fields = {"log_param": ("base", "scale", "shift")}

    needs_input = True

    def setup(self, bottom, top):
        p = self.param.log_param
        self.base_scale = 1.0 / _log_base(self, float(p.base))
        self.scale, self.shift = float(p.scale), float(p.shift)

    def _inner(self, x):
        t = x.dtype.type
        return x * t(self.scale) + t(self.shift) if (self.scale != 1 or self.shift != 0) else x

    def f(self, xp, x):
        y = xp.log(self._inner(x))
        return y * x.dtype.type(self.base_scale) if self.base_scale != 1 else y

    def df(self, xp, x, y, dy):
        return dy * dy.dtype.type(self.scale * self.base_scale) / self._inner(x)


@register("Threshold")
class ThresholdLayer(NeuronLayer):
    """``y = 1 if x > threshold else 0``. Caffe implements no backward."""

    param_fields = {"threshold_param": ("threshold",)}

    def setup(self, bottom, top):
        self.threshold = float(self.param.threshold_param.threshold)

    def f(self, xp, x):
        return (x > x.dtype.type(self.threshold)).astype(x.dtype)

    backward = Layer.backward  # none, as in Caffe

    def allow_force_backward(self, bottom_index):
        # Caffe would abort in Backward (NOT_IMPLEMENTED); force_backward simply skips this layer instead
        return False


@register("Clip")
class ClipLayer(NeuronLayer):
    """``y = min(max(x, min), max)`` (BVLC ``clip_param``); gradient passes where min <= x <= max."""

    needs_input = True

    def setup(self, bottom, top):
        p = self.extra_param("clip_param")
        self.lo, self.hi = float(p.min), float(p.max)
        if self.lo > self.hi:
            raise self.error(f"clip_param.min ({self.lo:g}) must not exceed max ({self.hi:g})")

    def f(self, xp, x):
        t = x.dtype.type
        return xp.clip(x, t(self.lo), t(self.hi))

    def df(self, xp, x, y, dy):
        t = x.dtype.type
        return xp.where((x >= t(self.lo)) & (x <= t(self.hi)), dy, 0)


@register("Swish")
class SwishLayer(NeuronLayer):
    """``y = x * sigmoid(beta * x)`` (BVLC ``swish_param``); keeps the sigmoid for backward."""

    def setup(self, bottom, top):
        self.beta = float(self.extra_param("swish_param").beta)

    def f(self, xp, x):
        half = x.dtype.type(0.5)
        bx = x * x.dtype.type(self.beta) if self.beta != 1 else x
        self._sig = half * xp.tanh(half * bx) + half
        return x * self._sig

    def df(self, xp, x, y, dy):
        # d/dx x*s(bx) = s + b*x*s*(1-s) = b*y + s*(1 - b*y)   (in terms of the output: in-place safe)
        by = y * dy.dtype.type(self.beta)
        return dy * (by + self._sig * (1 - by))


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """Dropout: in TRAIN keep each element with probability 1-p and scale it by 1/(1-p); TEST is identity.

    The mask is drawn from :func:`caffelite.backend.rng` (or, when caffe-jacinto's
    ``dropout_param.random_seed`` is >= 0, from a generator of this layer seeded with it).
    """

    param_fields = {"dropout_param": ("dropout_ratio", "engine", "random_seed")}

    def setup(self, bottom, top):
        p = self.param.dropout_param
        self.ratio = float(p.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio:g}")
        self.scale = 1.0 / (1.0 - self.ratio)
        seed = int(p.random_seed)
        self._own_rng = np.random.default_rng(seed) if seed >= 0 else None
        self._mask = None

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.phase == TRAIN:
            xp = backend.get_array_module(x)
            g = self._own_rng if self._own_rng is not None else backend.rng()
            keep = g.random(x.shape, dtype=np.float32) >= np.float32(self.ratio)
            self._mask = xp.asarray(keep)
            top[0].data[...] = xp.where(self._mask, x * x.dtype.type(self.scale), 0)
        elif top[0] is not bottom[0]:
            top[0].data[...] = x

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if self.phase == TRAIN:
            xp = backend.get_array_module(dy)
            bottom[0].diff[...] = xp.where(self._mask, dy * dy.dtype.type(self.scale), 0)
        elif top[0] is not bottom[0]:
            bottom[0].diff[...] = dy
