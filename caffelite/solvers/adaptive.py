"""Caffe's adaptive solvers: AdaGrad, RMSProp, AdaDelta, Adam, vectorised over whole blobs.

Formulas and history layouts are BVLC Caffe's (``caffe/src/caffe/solvers/*.cpp``) as pinned by the solver
fixtures: AdaDelta and Adam keep two history blobs per param, stored in the solverstate as ``[0:N]`` then
``[N:2N]`` (Adam: m then v; AdaDelta: squared gradients then squared updates).
"""

from __future__ import annotations

from ..backend import get_array_module
from ..errors import SolverError
from .base import Solver, register_solver


def _running_mean(xp, h, x, decay, tmp, square=True):
    """``h = decay*h + (1-decay)*x²`` (or ``*x`` with ``square=False``) in place, Caffe's order of operations."""
    if square:
        xp.multiply(x, x, out=tmp)
        tmp *= 1 - decay
    else:
        xp.multiply(x, 1 - decay, out=tmp)
    h *= decay
    h += tmp


def _divide_by_root(xp, g, h, tmp, delta, local_rate, num=None):
    """``g = local_rate * num / (sqrt(h) + delta)`` in place (``num`` defaults to ``g``; ``tmp`` is scratch),
    Caffe's order of operations."""
    xp.sqrt(h, out=tmp)
    tmp += delta
    xp.divide(g if num is None else num, tmp, out=g)
    g *= local_rate


@register_solver("AdaGrad", legacy=2)
class AdaGradSolver(Solver):
    """AdaGrad: ``H += g²; update = rate * g / (sqrt(H) + delta)``."""

    def check_param(self):
        if self.param.momentum != 0:
            raise SolverError("Momentum cannot be used with AdaGrad.")

    def compute_update(self, i, g, hist, local_rate, momentum):
        xp = get_array_module(g)
        h, tmp = hist[0], self.scratch(g)
        xp.multiply(g, g, out=tmp)
        h += tmp
        _divide_by_root(xp, g, h, tmp, self.delta, local_rate)


@register_solver("RMSProp", legacy=3)
class RMSPropSolver(Solver):
    """RMSProp: ``H = d*H + (1-d)*g²; update = rate * g / (sqrt(H) + delta)``."""

    def check_param(self):
        if self.param.momentum != 0:
            raise SolverError("Momentum cannot be used with RMSProp.")
        if not 0 <= self.param.rms_decay <= 1:
            raise SolverError("rms_decay should lie between 0 and 1.")

    def compute_update(self, i, g, hist, local_rate, momentum):
        xp = get_array_module(g)
        h, tmp = hist[0], self.scratch(g)
        _running_mean(xp, h, g, self.dtype.type(self.param.rms_decay), tmp)
        _divide_by_root(xp, g, h, tmp, self.delta, local_rate)


@register_solver("AdaDelta", legacy=4)
class AdaDeltaSolver(Solver):
    """AdaDelta (Zeiler): running averages of squared gradients and squared updates; ``momentum`` is rho."""

    history_factor = 2

    def compute_update(self, i, g, hist, local_rate, momentum):
        xp = get_array_module(g)
        hg, hu = hist
        tmp, tmp2 = self.scratch(g), self.scratch(g, 1)
        _running_mean(xp, hg, g, momentum, tmp)
        xp.add(hu, self.delta, out=tmp)
        xp.add(hg, self.delta, out=tmp2)
        tmp /= tmp2
        xp.sqrt(tmp, out=tmp)
        g *= tmp
        _running_mean(xp, hu, g, momentum, tmp)
        g *= local_rate


@register_solver("Adam", legacy=5)
class AdamSolver(Solver):
    """Adam (Kingma & Ba), Caffe's form: ``momentum`` is beta1, ``momentum2`` beta2, ``delta`` epsilon."""

    history_factor = 2

    def compute_update(self, i, g, hist, local_rate, momentum):
        xp = get_array_module(g)
        m, v = hist
        b1 = momentum
        b2 = self.dtype.type(self.param.momentum2)
        t = self.iter + 1
        # Caffe computes the bias correction in float: sqrt(1 - b2^t) / (1 - b1^t).
        corr = self.dtype.type((1 - float(b2) ** t) ** 0.5 / (1 - float(b1) ** t))
        tmp = self.scratch(g)
        _running_mean(xp, m, g, b1, tmp, square=False)
        _running_mean(xp, v, g, b2, tmp)
        _divide_by_root(xp, g, v, tmp, self.delta, local_rate * corr, num=m)
