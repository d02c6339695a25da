"""Caffe's SGD and Nesterov updates, vectorised over whole blobs.

Each ``compute_update(i, g, h, rate)`` receives the averaged, regularised gradient ``g`` of learnable
param ``i`` (a view of its ``diff``), the solver's history arrays for it and the local rate
(``lr * lr_mult``), and leaves the value to subtract from the weights in ``g`` (Caffe's ``diff``), updating
the history in place. Arithmetic stays in the blobs' dtype (float32), in Caffe's order of operations.
"""

from __future__ import annotations

from ..backend import get_array_module
from .base import Solver, register_solver


@register_solver("SGD", legacy=0)
class SGDSolver(Solver):
    """Stochastic gradient descent with momentum: ``h = m*h + rate*g; w -= h`` (docs/jacinto-spec.md §c.2)."""

    def compute_update(self, i, g, hist, local_rate, momentum):
        h = hist[0]
        g *= local_rate  # g is overwritten below anyway: no temporary (same float32 products as rate*g)
        h *= momentum
        h += g
        g[...] = h


@register_solver("Nesterov", legacy=1)
class NesterovSolver(Solver):
    """Nesterov's accelerated gradient, Caffe's form: ``w -= (1+m)*h_new - m*h_old``."""

    def compute_update(self, i, g, hist, local_rate, momentum):
        h = hist[0]
        prev = self.scratch(h)
        get_array_module(h).negative(h, out=prev)
        prev *= momentum  # -m*h_old
        g *= local_rate
        h *= momentum
        h += g
        g[...] = h
        g *= 1 + momentum
        g += prev
