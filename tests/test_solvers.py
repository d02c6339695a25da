"""Solver updates against real Caffe: every ``fixtures/solvers`` case, one update at a time.

For iteration k the stand-in net holds Caffe's ``param[k-1]`` and raw accumulated ``grad[k-1]``; our solver
applies one update (lr, clipping, iter_size normalisation, weight decay, history) and must give Caffe's
``param[k]``. The history carries over between steps, so a wrong history formula fails too. The history
after 6 and 12 updates must equal the one in Caffe's own solverstates.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from caffelite.errors import SolverError
from caffelite.io.blobs import blob_to_array
from caffelite.proto import caffe_pb2
from caffelite.solvers import SGDSolver, get_solver, solver_class

from helpers import all_close, close
from solver_fixture import CASES, TrajectoryNet, case_dir, solver_param, trajectory


def _run_one_step_trajectory(case, caplog=None):
    """Apply updates 1..12 on Caffe's inputs; returns the solver, its histories after 6 and 12, clip count."""
    net = TrajectoryNet(case)
    solver = get_solver(solver_param(case), net=net, test_nets=[])
    traj = trajectory(case)
    hist_at = {}
    for k in range(1, 13):
        for (key, _, _), b in zip(net.layout, net.learnable_params, strict=True):
            b.data[...] = traj[f"param/{key}"][k - 1]
            b.diff[...] = traj[f"grad/{key}"][k - 1]
        solver.iter = k - 1
        solver.apply_update()
        assert np.float32(solver.rate) == pytest.approx(float(traj["lr"][k - 1]), rel=1e-6), f"lr of update {k}"
        for (key, lr_mult, _), b in zip(net.layout, net.learnable_params, strict=True):
            if lr_mult == 0:  # BatchNorm statistics change in the forward, not in the update
                continue
            want = traj[f"param/{key}"][k]
            ok = close(b.data, want, rtol=2e-5, rel_atol=2e-6)
            assert ok.all(), (f"{case}: {key} after update {k}: max |diff| "
                              f"{np.abs(b.data - want).max():.3g} (max |w| {np.abs(want).max():.3g})")
        if k in (6, 12):
            hist_at[k] = [[h.copy() for h in hs] for hs in solver.history]
            hist_at[f"step{k}"] = solver.schedule.current_step
    return solver, hist_at


@pytest.mark.parametrize("case", CASES)
def test_one_step_updates_match_caffe(case):
    _run_one_step_trajectory(case)


@pytest.mark.parametrize("case", CASES)
def test_history_matches_caffe_solverstate(case):
    solver, hist_at = _run_one_step_trajectory(case)
    n = len(solver.history)
    for k in (6, 12):
        st = caffe_pb2.SolverState.FromString(open(os.path.join(case_dir(case), f"snapshot_iter_{k}.solverstate"),
                                                   "rb").read())
        assert st.iter == k
        assert len(st.history) == n * solver.history_factor
        for j, blob in enumerate(st.history):
            if solver.lr_mults[j % n] == 0 and solver.type != "SGD":
                # Caffe's adaptive histories of the BatchNorm statistics (lr_mult 0) hold float noise of diffs
                # that trajectory.npz records as 0; their update is 0 either way.
                continue
            theirs = blob_to_array(blob).reshape(hist_at[k][j % n][j // n].shape)
            ours = hist_at[k][j % n][j // n]
            assert all_close(ours, theirs, rtol=1e-4, rel_atol=1e-5), f"{case} history[{j}] at {k}"
        # current_step is set by step/multistep only (fixtures README)
        if solver.param.lr_policy in ("step", "multistep"):
            assert st.current_step == hist_at[f"step{k}"]


def test_clip_triggers_like_caffe():
    import json

    from caffelite import log as glog
    meta = json.load(open(os.path.join(case_dir("sgd_clip"), "meta.json")))
    with glog.capture() as messages:
        _run_one_step_trajectory("sgd_clip")
    lines = [m for m in messages if "Gradient clipping" in m]
    assert len(lines) == len(meta["log"]["clip"]) == 9
    for line, (norm, _clip, scale) in zip(lines, meta["log"]["clip"], strict=True):
        parts = line.split()
        assert float(parts[7]) == pytest.approx(norm, rel=1e-4)
        assert float(parts[-1]) == pytest.approx(scale, rel=1e-4)


def test_solver_registry_and_legacy_type():
    p = caffe_pb2.SolverParameter(solver_type=caffe_pb2.SolverParameter.NESTEROV)
    assert solver_class(p).__name__ == "NesterovSolver"
    p = caffe_pb2.SolverParameter(type="Adam")
    assert solver_class(p).type == "Adam"
    with pytest.raises(SolverError, match="Unknown solver type"):
        solver_class(caffe_pb2.SolverParameter(type="Lion"))


def test_momentum_rejected_by_adagrad_and_rmsprop():
    for t in ("AdaGrad", "RMSProp"):
        p = solver_param("adagrad")
        p.type = t
        p.momentum = 0.9
        with pytest.raises(SolverError, match="Momentum cannot be used"):
            get_solver(p, net=TrajectoryNet("adagrad"), test_nets=[])


def test_update_is_vectorised_over_large_blobs():
    """A 4M-weight param updates in well under a second: no per-element Python work."""
    import time

    from caffelite.blob import Blob

    class BigNet:
        name, layers, outputs = "big", (), ()

        def __init__(self):
            self.learnable_params = [Blob((2048, 2048)), Blob((2048,))]
            self.params_lr = [1.0, 2.0]
            self.params_weight_decay = [1.0, 0.0]

    p = solver_param("sgd_step")
    net = BigNet()
    s = SGDSolver(p, net, [])
    for b in net.learnable_params:
        b.data[...] = 1.0
        b.diff[...] = 0.5
    t = time.perf_counter()
    s.apply_update()
    assert time.perf_counter() - t < 1.0
    lr = np.float32(0.02)
    want = np.float32(1) - lr * (np.float32(0.5) + np.float32(0.0005) * np.float32(1))
    np.testing.assert_allclose(net.learnable_params[0].data[0, :3], want, rtol=1e-6)


def test_jacinto_batchnorm_scale_bias_get_decay():
    """caffe-jacinto forces lr_mult/decay_mult 1 on a 5-blob BatchNorm's γ/β and 0 on its statistics (§c.2)."""
    from caffelite.blob import Blob
    from caffelite.solvers import netutil

    class BN:
        type = "BatchNorm"
        blobs = [Blob((4,)) for _ in range(5)]

    class N:
        layers = [BN()]
        learnable_params = BN.blobs
        params_lr = [0.0, 0.0, 0.0, 0.0, 0.0]
        params_weight_decay = [0.0] * 5

    lr, decay = netutil.param_mults(N())
    assert lr == [0, 0, 0, 1, 1] and decay == [0, 0, 0, 1, 1]


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_one_step_updates_on_gpu(case):
    """The same update bodies on CuPy arrays give Caffe's trajectory (GPU parity)."""
    from caffelite import backend
    backend.set_mode_gpu()
    try:
        solver, _ = _run_one_step_trajectory(case)
        assert backend.get_array_module(solver.history[0][0]) is not np
    finally:
        backend.set_mode_cpu()


def test_larc_scales_the_local_rate():
    """LARC (§c.2): rate = lr * eta*||w||/||g|| ("scale") or min(lr, r) ("clip"); lr_mult 0 stays frozen."""
    from caffelite.blob import Blob

    class N:
        name, layers, outputs = "n", (), ()

        def __init__(self):
            self.learnable_params = [Blob((3,)), Blob((2,))]
            self.params_lr = [1.0, 0.0]
            self.params_weight_decay = [0.0, 0.0]

    for policy, expect in (("scale", lambda lr, r: lr * r), ("clip", min)):
        p = caffe_pb2.SolverParameter(type="SGD", base_lr=0.5, lr_policy="fixed", momentum=0.0, larc=True,
                                      larc_policy=policy, larc_eta=0.01)
        net = N()
        s = SGDSolver(p, net, [])
        w = np.array([3.0, 4.0, 0.0], dtype=np.float32)  # ||w|| = 5
        g = np.array([0.0, 0.0, 0.1], dtype=np.float32)  # ||g|| = 0.1  -> r = 0.01*5/0.1 = 0.5
        net.learnable_params[0].data[...] = w
        net.learnable_params[0].diff[...] = g
        net.learnable_params[1].diff[...] = 1.0
        s.apply_update()
        rate = expect(0.5, 0.5)
        np.testing.assert_allclose(net.learnable_params[0].data, w - rate * g, rtol=1e-6)
        np.testing.assert_array_equal(net.learnable_params[1].data, 0)


def test_test_nets_follow_caffes_rules(tmp_path):
    """test_net_param, then ``net`` for the remaining test_iter; each test net gets TEST phase and test_state."""
    from google.protobuf import text_format

    from caffelite.solvers import netutil
    text = """name: "t" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "only_train" type: "ReLU" bottom: "x" top: "y" include { phase: TRAIN } }
    layer { name: "staged" type: "ReLU" bottom: "x" top: "z" include { stage: "s1" } }"""
    net_param = text_format.Parse(text, caffe_pb2.NetParameter())
    p = caffe_pb2.SolverParameter(net_param=net_param, test_iter=[1, 2])
    p.test_net_param.add().CopyFrom(net_param)
    p.test_state.add()
    p.test_state.add().stage.append("s1")
    nets = netutil.build_test_nets(p)
    assert len(nets) == 2
    assert [list(n.layer_dict) for n in nets] == [["in"], ["in", "staged"]]
    train = netutil.build_train_net(p)
    assert list(train.layer_dict) == ["in", "only_train"]
    bad = caffe_pb2.SolverParameter(test_iter=[1, 2])
    bad.test_net_param.add().CopyFrom(net_param)
    with pytest.raises(SolverError, match="test_iter"):
        netutil.build_test_nets(bad)
    with pytest.raises(SolverError, match="exactly one"):
        netutil.build_train_net(caffe_pb2.SolverParameter())
