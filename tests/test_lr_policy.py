"""Learning-rate policies: every fixture case's rates (real Caffe) and the caffe-jacinto extras (§c.1/§c.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffelite.errors import SolverError
from caffelite.proto import caffe_pb2
from caffelite.solvers.lr_policy import LRSchedule, known_policies

from solver_fixture import CASES, solver_param, trajectory


@pytest.mark.parametrize("case", CASES)
def test_rates_equal_caffe(case):
    sched = LRSchedule(solver_param(case))
    want = trajectory(case)["lr"]
    got = np.array([sched.rate(k) for k in range(len(want))], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_multistep_advances_once_per_call_and_logs():
    p = solver_param("sgd_multistep")
    msgs = []
    sched = LRSchedule(p, emit=msgs.append)
    rates = [float(sched.rate(k)) for k in range(12)]
    assert msgs == ["MultiStep Status: Iteration 4, step = 1", "MultiStep Status: Iteration 8, step = 2"]
    assert sched.current_step == 2
    assert rates[3] == pytest.approx(0.02) and rates[4] == pytest.approx(0.01) and rates[8] == pytest.approx(0.005)
    # resumed at iteration 10 with current_step 0 (a fresh schedule), Caffe catches up one step per call
    s2 = LRSchedule(p)
    assert float(s2.rate(10)) == pytest.approx(0.01) and float(s2.rate(11)) == pytest.approx(0.005)


def _sp(**kw):
    p = caffe_pb2.SolverParameter(base_lr=0.1, max_iter=100, **kw)
    return p


def test_rampup_squared_in_017_linear_in_016():
    p = _sp(lr_policy="fixed", rampup_interval=10, rampup_lr=0.01)
    r17 = LRSchedule(p).rate(5)
    r16 = LRSchedule(p, jacinto_version="0.16").rate(5)
    assert float(r17) == pytest.approx(0.01 + 0.09 * 0.25, rel=1e-6)
    assert float(r16) == pytest.approx(0.01 + 0.09 * 0.5, rel=1e-6)
    assert float(LRSchedule(p).rate(10)) == pytest.approx(0.1)


def test_min_lr_floor_and_poly_end_point():
    p = _sp(lr_policy="poly", power=2.0, min_lr=0.001)
    s = LRSchedule(p)
    assert float(s.rate(100)) == pytest.approx(0.001)
    assert float(s.rate(50)) == pytest.approx(0.099 * 0.25 + 0.001, rel=1e-6)
    p = _sp(lr_policy="exp", gamma=0.5, min_lr=0.01)
    assert float(LRSchedule(p).rate(20)) == pytest.approx(0.01)


def test_inv_sigmoid_closed_forms():
    p = _sp(lr_policy="inv", gamma=0.1, power=0.75)
    assert float(LRSchedule(p).rate(7)) == pytest.approx(0.1 * (1 + 0.7) ** -0.75, rel=1e-6)
    p = _sp(lr_policy="sigmoid", gamma=0.5, stepsize=6)
    assert float(LRSchedule(p).rate(2)) == pytest.approx(0.1 / (1 + math.exp(-0.5 * (2 - 6))), rel=1e-6)


def test_bad_policies_are_clear_errors():
    with pytest.raises(SolverError, match="plateau"):
        LRSchedule(_sp(lr_policy="plateau"))
    with pytest.raises(SolverError, match="Unknown learning rate policy"):
        LRSchedule(_sp(lr_policy="cosine"))
    with pytest.raises(SolverError, match="gamma >= 0"):
        LRSchedule(_sp(lr_policy="sigmoid", gamma=-1, stepsize=3)).rate(0)
    with pytest.raises(SolverError, match="stepsize"):
        LRSchedule(_sp(lr_policy="step", gamma=0.1)).rate(0)
    with pytest.raises(SolverError, match="momentum_policy"):
        LRSchedule(_sp(lr_policy="fixed", momentum_policy="cyclic"))
    assert {"fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"} <= set(known_policies())


def test_momentum_and_weight_decay_policies():
    p = _sp(lr_policy="fixed", momentum=0.9, momentum_policy="poly", max_momentum=0.99, momentum_power=1.0)
    s = LRSchedule(p)
    assert float(s.momentum(50, s.rate(50))) == pytest.approx(0.945, rel=1e-6)
    p = _sp(lr_policy="fixed", momentum=0.9, momentum_policy="opt")
    s = LRSchedule(p)
    assert float(s.momentum(0, np.float32(0.04))) == pytest.approx((1 - 0.5 * 0.2) ** 2, rel=1e-6)
    p = _sp(lr_policy="fixed", weight_decay=1e-4, weight_decay_policy="poly", weight_decay_power=0.5)
    assert float(LRSchedule(p).weight_decay(25)) == pytest.approx(1e-4 * 0.5, rel=1e-6)
    assert float(LRSchedule(_sp(lr_policy="fixed", weight_decay=1e-4)).weight_decay(25)) == pytest.approx(1e-4)
