"""Learning-rate, momentum and weight-decay schedules of Caffe's SGD-family solvers.

One registry of lr policies keyed by Caffe's ``lr_policy`` strings. BVLC's policies (fixed, step, exp, inv,
multistep, poly, sigmoid) plus the caffe-jacinto 0.17 / NVCaffe extras that change the rate
(``docs/jacinto-spec.md`` §c.1): ``rampup_interval``/``rampup_lr`` warm-up (squared in 0.17, linear in
0.16), ``min_lr`` (a floor for every policy and the end point of ``poly``). §c.2: ``momentum_policy``
(fixed, poly, opt) and ``weight_decay_policy`` (fixed, poly).

Rates are computed in float64 from the proto's float32 fields and returned as float32 values, as Caffe does
(``GetLearningRate`` returns ``Dtype``).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import SolverError
from ..registry import Registry

_POLICIES = Registry("lr_policy")


def policy(name):
    """Decorator registering ``fn(sp, it, sched) -> rate`` under the Caffe ``lr_policy`` string ``name``."""

    return _POLICIES.decorator(name)


def known_policies():
    """The registered lr_policy strings."""
    return _POLICIES.names()


def _need(sp, field, policy_name):
    if not sp.HasField(field):
        raise SolverError(f"lr_policy '{policy_name}' needs solver field '{field}'")
    return getattr(sp, field)


@policy("fixed")
def _fixed(sp, it, sched):
    return sp.base_lr


@policy("step")
def _step(sp, it, sched):
    stepsize = _need(sp, "stepsize", "step")
    if stepsize <= 0:
        raise SolverError("lr_policy 'step': stepsize must be positive")
    sched.current_step = it // stepsize
    return sp.base_lr * math.pow(sp.gamma, sched.current_step)


@policy("exp")
def _exp(sp, it, sched):
    return sp.base_lr * math.pow(sp.gamma, it)


@policy("inv")
def _inv(sp, it, sched):
    # Caffe computes the base of the power in float (Dtype(1) + gamma * iter).
    base = np.float32(1) + np.float32(sp.gamma) * np.float32(it)
    return sp.base_lr * math.pow(float(base), -sp.power)


@policy("multistep")
def _multistep(sp, it, sched):
    # Advances by at most one step per call, exactly like Caffe (which is why it is stateful).
    if sched.current_step < len(sp.stepvalue) and it >= sp.stepvalue[sched.current_step]:
        sched.current_step += 1
        sched.emit(f"MultiStep Status: Iteration {it}, step = {sched.current_step}")
    return sp.base_lr * math.pow(sp.gamma, sched.current_step)


@policy("poly")
def _poly(sp, it, sched):
    if sp.max_iter <= 0:
        raise SolverError("lr_policy 'poly' needs a positive max_iter")
    frac = float(np.float32(1) - np.float32(it) / np.float32(sp.max_iter))
    # caffe-jacinto 0.17: (base_lr - min_lr)*(...)^power + min_lr; BVLC has min_lr = 0 (§c.1).
    return (sp.base_lr - sp.min_lr) * math.pow(max(frac, 0.0), sp.power) + sp.min_lr


@policy("sigmoid")
def _sigmoid(sp, it, sched):
    if sp.gamma < 0:  # Caffe: "Check failed: gamma >= 0" (fixtures README)
        raise SolverError("lr_policy 'sigmoid' needs gamma >= 0")
    x = np.float32(-sp.gamma) * (np.float32(it) - np.float32(sp.stepsize))
    return sp.base_lr * float(np.float32(1) / (np.float32(1) + np.exp(x, dtype=np.float32)))


class LRSchedule:
    """The per-iteration hyper-parameters of a solver: learning rate, momentum, effective weight decay.

    ``current_step`` is Caffe's stateful step counter (saved in the solverstate). ``emit`` is called with
    log messages such as ``MultiStep Status: ...``. ``jacinto_version`` selects 0.16's linear warm-up.
    """

    def __init__(self, sp, emit=None, jacinto_version="0.17"):
        self.sp = sp
        self.current_step = 0
        self._emit = emit
        self.jacinto_version = jacinto_version
        name = sp.lr_policy
        if name not in _POLICIES:
            if name == "plateau":
                raise SolverError("lr_policy 'plateau' is declared by caffe-jacinto's proto but not implemented "
                                  "(Caffe: Unknown learning rate policy)")
            raise SolverError(f"Unknown learning rate policy: '{name}' (known: {', '.join(known_policies())})")
        self._fn = _POLICIES[name]
        if sp.momentum_policy not in ("fixed", "poly", "opt"):
            raise SolverError(f"Unknown momentum_policy: '{sp.momentum_policy}' (known: fixed, poly, opt)")
        if sp.weight_decay_policy not in ("fixed", "poly"):
            raise SolverError(f"Unknown weight_decay_policy: '{sp.weight_decay_policy}' (known: fixed, poly)")

    def emit(self, msg):
        if self._emit is not None:
            self._emit(msg)

    def rate(self, it) -> np.float32:
        """The learning rate used by the update of iteration ``it`` (Caffe's ``GetLearningRate``)."""
        sp = self.sp
        if it < sp.rampup_interval:  # §c.1 warm-up, before the policy
            frac = it / sp.rampup_interval
            if self.jacinto_version == "0.17":
                frac = frac * frac
            lr = sp.rampup_lr + (sp.base_lr - sp.rampup_lr) * frac
        else:
            lr = self._fn(sp, it, self)
        lr = max(lr, sp.min_lr)  # 0.17 floor; min_lr defaults to 0
        return np.float32(lr)

    def momentum(self, it, rate) -> np.float32:
        """The momentum of iteration ``it`` (§c.2 momentum_policy)."""
        sp = self.sp
        m = sp.momentum
        if sp.momentum_policy == "poly" and sp.max_iter > 0:
            m = m + (sp.max_momentum - m) * math.pow(it / sp.max_iter, sp.momentum_power)
        elif sp.momentum_policy == "opt":
            m = (1.0 - 0.5 * math.sqrt(max(float(rate), 0.0))) ** 2
            if sp.HasField("max_momentum"):
                m = min(m, sp.max_momentum)
        return np.float32(m)

    def weight_decay(self, it) -> np.float32:
        """The effective weight decay of iteration ``it`` (§c.2 weight_decay_policy)."""
        sp = self.sp
        wd = sp.weight_decay
        if sp.weight_decay_policy == "poly" and sp.max_iter > 0:
            wd = wd * math.pow(it / sp.max_iter, sp.weight_decay_power)
        return np.float32(wd)
