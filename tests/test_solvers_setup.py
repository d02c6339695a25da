"""caffelite.solvers.setup: the training set-up shared by ``caffelite train`` and the data-parallel replicas."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from caffelite.solvers import read_solver_param
from caffelite.solvers.setup import SignalHandler, hms, prepare_training

from solver_fixture import copy_case


@pytest.fixture
def case(tmp_path, monkeypatch):
    d = copy_case(tmp_path, "sgd_step")
    monkeypatch.chdir(d)
    return d


def _first_param(net):
    return np.array(net.learnable_params[0].data, copy=True)


def test_wires_the_handler_the_flavor_and_the_snapshot_format(case):
    handler = SignalHandler("none", "stop")
    try:
        solver, attached = prepare_training(read_solver_param("solver.prototxt"), handler, flavor="jacinto",
                                            snapshot_format="bvlc", attach=lambda s: ("hooks", s))
        assert handler.installed and signal.getsignal(signal.SIGINT) == handler._handle
    finally:
        handler.restore()
    assert not handler.installed and signal.getsignal(signal.SIGINT) != handler._handle
    assert attached == ("hooks", solver)
    assert solver.requested_action is handler and solver.snapshot_form == "bvlc" and solver.flavor == "jacinto"


def test_attaches_the_hooks_before_copying_the_weights_into_every_net(case):
    seen = []
    handler = SignalHandler()
    try:
        solver, _ = prepare_training(read_solver_param("solver.prototxt"), handler,
                                     attach=lambda s: seen.append(_first_param(s.net)), weights="init.caffemodel")
    finally:
        handler.restore()
    ref, _ = prepare_training(read_solver_param("solver.prototxt"), SignalHandler())
    ref.requested_action.restore()
    ref.net.copy_from("init.caffemodel")
    want = _first_param(ref.net)
    assert np.array_equal(_first_param(solver.net), want) and not np.array_equal(seen[0], want)
    for t in solver.test_nets:
        assert t.learnable_params[0].data is not solver.net.learnable_params[0].data
        assert np.array_equal(_first_param(t), want)


def test_a_handler_installed_by_the_caller_stays_its_own(case):
    handler = SignalHandler().install()
    try:
        solver, attached = prepare_training(read_solver_param("solver.prototxt"), handler,
                                            snapshot="snapshot_iter_6.solverstate", weights="init.caffemodel")
        assert attached is None and solver.requested_action is handler and solver.snapshot_form is None
    finally:
        handler.restore()


def test_missing_weights_name_the_file(case):
    handler = SignalHandler()
    try:
        with pytest.raises(FileNotFoundError, match="nope.caffemodel"):
            prepare_training(read_solver_param("solver.prototxt"), handler, weights="init.caffemodel,nope.caffemodel")
    finally:
        handler.restore()


def test_hms():
    assert [hms(s) for s in (0, 59.9, 61, 3600, 3725)] == ["0s", "59s", "1m 1s", "1h 0m 0s", "1h 2m 5s"]
