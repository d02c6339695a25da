"""Caffe's adaptive solvers: AdaGrad, RMSProp, AdaDelta, Adam, vectorised over whole blobs.

Formulas and history layouts are BVLC Caffe's (``caffe/src/caffe/solvers/*.cpp``) as pinned by the solver
fixtures: AdaDelta and Adam keep two history blobs per param, stored in the solverstate as ``[0:N]`` then
``[N:2N]`` (Adam: m then v; AdaDelta: squared gradients then squared updates).
"""

from __future__ import annotations

from ..backend import get_array_module
from ..errors import SolverError
from .base import Solver, register_solver


@register_solver("AdaGrad", legacy=2)
class AdaGradSolver(Solver):
    """AdaGrad: ``H += g²; update = rate * g / (sqrt(H) + delta)``."""

    def check_param(self):
        if self.param.momentum != 0:
            raise SolverError("Momentum cannot be used with AdaGrad.")

    def compute_update(self, i, g, hist, local_rate, momentum):
        xp = get_array_module(g)
        h = hist[0]
        h += g * g
        g[...] = local_rate * (g / (xp.sqrt(h) + self.delta))


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
        h = hist[0]
        d = self.dtype.type(self.param.rms_decay)
        h *= d
        h += (1 - d) * (g * g)
        g[...] = local_rate * (g / (xp.sqrt(h) + self.delta))


@register_solver("AdaDelta", legacy=4)
class AdaDeltaSolver(Solver):
    """AdaDelta (Zeiler): running averages of squared gradients and squared updates; ``momentum`` is rho."""

    history_factor = 2

    def compute_update(self, i, g, hist, local_rate, momentum):
        xp = get_array_module(g)
        hg, hu = hist
        hg *= momentum
        hg += (1 - momentum) * (g * g)
        g *= xp.sqrt((hu + self.delta) / (hg + self.delta))
        hu *= momentum
        hu += (1 - momentum) * (g * g)
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
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        g[...] = (local_rate * corr) * (m / (xp.sqrt(v) + self.delta))
