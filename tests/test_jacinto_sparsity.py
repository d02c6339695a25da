"""Sparsity (§a): counting and log format, the ThresholdNet schedule, SPARSE_UPDATE masking, resume.

These run the hook on a minimal stand-in for Net/Solver (layers with ``param`` and ``blobs``; ``add_hook``,
``add_state_provider``), so the schedule is tested independently of the engine; test_jacinto_integration.py
runs it inside the real solver.
"""

import contextlib
import logging
import re

import numpy as np
import pytest

from caffelite.blob import Blob
from caffelite.errors import SolverError
from caffelite.jacinto import sparsity as sp
from caffelite.jacinto import sparsity_stats as st
from caffelite.proto import caffe_pb2


class FakeLayer:
    def __init__(self, name, type_, shape=None, kernel=3, group=1):
        self.param = caffe_pb2.LayerParameter(name=name, type=type_)
        self.blobs = []
        if shape is not None:
            cp = self.param.convolution_param
            cp.num_output, cp.group = shape[0], group
            cp.kernel_size.append(kernel)
            self.blobs = [Blob(shape), Blob((shape[0],))]


class FakeNet:
    def __init__(self, layers):
        self.layers = layers
        self._param = caffe_pb2.NetParameter()  # no quantize: attach_from_proto installs no quantization


class FakeSolver:
    """Drives hooks like solvers/base.py: on_start, (update), after_update, ++iter."""

    def __init__(self, param, net):
        self.param, self.net, self.iter = param, net, 0
        self.hooks = {"on_start": [], "after_update": []}
        self.providers = {}

    def add_hook(self, e, fn):
        self.hooks[e].append(fn)

    def add_state_provider(self, name, g, s):
        self.providers[name] = (g, s)

    def step(self, n, rng):
        for _ in range(n):
            for fn in self.hooks["on_start"]:
                fn(self)
            for ly in self.net.layers:  # a fake SGD update: every weight moves, pruned ones included
                for b in ly.blobs:
                    b.data += (rng.standard_normal(b.shape) * 1e-3).astype(np.float32)
            for fn in self.hooks["after_update"]:
                fn(self)
            self.iter += 1


def make_net(seed=0):
    rng = np.random.default_rng(seed)
    layers = [FakeLayer("data", "Input"),
              FakeLayer("conv1", "Convolution", (32, 3, 3, 3)),
              FakeLayer("conv2", "Convolution", (64, 32, 3, 3)),
              FakeLayer("conv3", "Convolution", (64, 16, 3, 3), group=4),
              FakeLayer("conv1x1", "Convolution", (64, 64, 1, 1), kernel=1),
              FakeLayer("final", "Convolution", (8, 64, 3, 3)),
              FakeLayer("prob", "Softmax")]
    for ly in layers:
        for b in ly.blobs:
            # heavy-tailed like L1-trained weights, so the 0.2*max cap lets ~80 % through
            mag = np.exp(rng.standard_normal(b.shape) * 1.5) * 0.01
            b.data = (mag * rng.choice([-1.0, 1.0], b.shape)).astype(np.float32)
    layers[2].blobs[0].data[0, 0] = 0  # an exact zero in the loaded weights: frozen for the run
    return FakeNet(layers)


def solver_param(**kw):
    p = caffe_pb2.SolverParameter(max_iter=60, sparse_mode=caffe_pb2.SPARSE_UPDATE, sparsity_target=0.8,
                                  sparsity_step_iter=5, sparsity_start_iter=5, sparsity_start_factor=0.6,
                                  sparsity_step_factor=0.05, display_sparsity=5)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_defaults_and_counting_rules():
    p = caffe_pb2.SolverParameter()
    assert (p.sparse_mode, p.sparsity_target, p.sparsity_step_iter, p.sparsity_start_iter) == (0, 0, 1000, 0)
    assert np.float32(p.sparsity_step_factor) == np.float32(0.01)
    assert np.float32(p.sparsity_threshold_maxratio) == np.float32(0.2)
    assert np.float32(p.sparsity_threshold_value_max) == np.float32(0.2) and p.sparsity_itr_increment_bfr_applying
    net = make_net()
    # 'final' is followed by Softmax: not counted (§a.4); the 1x1 conv is counted though never pruned
    keys = [st.param_key(ly) for _, ly in st.count_candidates(net)]
    assert keys == ["conv1_param_0", "conv2_param_0", "conv3_param_0", "conv1x1_param_0"]
    counts = st.zero_counts(net)
    assert counts["conv2_param_0"] == (9, 64 * 32 * 9)  # w[0, 0] = 0: 9 exact zeros
    lines = st.format_sparsity(counts)
    assert lines[0] == "Num Params(4), Sparsity (zero_weights/count): "
    assert lines[1] == "conv1_param_0(0) "
    assert lines[-1] == "Total Sparsity (zero_weights/count) =  (9/32608) 0.000276"
    assert sp.SparsityHook(solver_param()).enabled


def test_log_format_matches_reference():
    # the reference line: Total Sparsity (zero_weights/count) =  (1.60974e+06/2.69117e+06) 0.598
    counts = {"a_param_0": (1609740, 2000000), "b_param_0": (0, 691168)}
    assert st.format_sparsity(counts)[-1] == "Total Sparsity (zero_weights/count) =  (1.60974e+06/2.69117e+06) 0.598"
    assert st.format_sparsity(counts, connectivity=True)[0].startswith("Num Params(2), ConnectivitySparsity")


@contextlib.contextmanager
def capture_log():
    """The messages logged by the 'caffelite' logger at INFO and above meanwhile (it does not propagate to the
    root logger pytest's caplog watches). Shared by the jacinto test modules."""

    class Handler(logging.Handler):
        def emit(self, record):
            msgs.append(record.getMessage())

    msgs, h, lg = [], Handler(logging.INFO), logging.getLogger("caffelite")
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    try:
        yield msgs
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)


@pytest.fixture
def records():
    with capture_log() as msgs:
        yield msgs


def _run(version, iters=60, seed=0, **kw):
    net = make_net(seed)
    solver = FakeSolver(solver_param(**kw), net)
    hook = sp.attach_sparsity(solver, version=version)
    solver.step(iters, np.random.default_rng(seed + 1))
    return net, solver, hook


def test_schedule_shape_like_reference(records):
    net, solver, hook = _run("0.16")
    msgs = records
    finds = [m for m in msgs if m.startswith("Finding and applying sparsity")]
    pat = re.compile(r"sparsity_target=0\.8 sparsity_factor=(\S+) sparsity_achieved=(\S+) iter=(\d+)$")
    parsed = [pat.search(m).groups() for m in finds]
    factors = [float(f) for f, _, _ in parsed]
    achieved = [float(a) for _, a, _ in parsed]
    iters = [int(i) for _, _, i in parsed]
    assert iters == list(range(5, 5 * (len(iters) + 1), 5))  # every step_iter from start_iter (0.16: iter=5 ...)
    assert factors[0] == 0.6 and np.allclose(np.diff(factors), 0.05, atol=1e-6)  # factor +step each time
    assert achieved[0] < 0.001 and all(b > a for a, b in zip(achieved, achieved[1:], strict=False))
    assert achieved[-1] < 0.8  # stops as soon as the target is reached ...
    final = st.sparsity(net, hook.masks)
    assert final >= 0.8 or factors[-1] + 0.05 > 0.95  # ... or the factor passes target + 0.15
    assert msgs.count("All zero weights of convolution layers are frozen") == len(finds) + 1
    assert "Sparsity after training:" in msgs
    totals = [m for m in msgs if m.startswith("Total Sparsity")]
    assert len(totals) == 60 // 5 + 1
    # pruned weights stay zero under updates (SPARSE_UPDATE) and the loaded exact zeros stay frozen
    for i, m in hook.masks.items():
        w = net.layers[i].blobs[0].data
        assert np.all(w[m == 0] == 0)
    assert np.all(net.layers[2].blobs[0].data[0, 0] == 0)
    # the reference (0.16) build had no kernel-size rule: the 1x1 conv is pruned too; grouped 3x3 is eligible
    assert np.count_nonzero(net.layers[4].blobs[0].data == 0) > 0
    assert np.count_nonzero(net.layers[3].blobs[0].data == 0) > 0


def test_017_ordering(records):
    net, _, _ = _run("0.17", iters=12)
    assert np.count_nonzero(net.layers[4].blobs[0].data == 0) == 0  # 0.17: 1x1 convs are never pruned
    msgs = records
    finds = [m for m in msgs if m.startswith("Finding and applying sparsity")]
    assert [m.rsplit("iter=", 1)[1] for m in finds] == ["5", "10"]
    # 0.17 logs the per-layer geometry lines (verbose), 0.16's reference build did not
    assert any(m == "conv1x1 ni=64 no=64" for m in msgs)


def test_016_counts_updates_before_thresholding(records):
    # 0.16: "iter=5" after exactly 5 updates; 0.17 "iter=5" after 6 (§a.2)
    # 0.16 with sparsity_itr_increment_bfr_applying: false increments after, like 0.17
    for version, flag, expect_iter in (("0.16", True, 4), ("0.17", True, 5), ("0.16", False, 5)):
        net = make_net()
        solver = FakeSolver(solver_param(sparsity_itr_increment_bfr_applying=flag), net)
        sp.attach_sparsity(solver, version=version)
        seen = []
        solver.add_hook("after_update", lambda s, seen=seen, net=net: seen.append((s.iter, st.sparsity(net))))
        solver.step(7, np.random.default_rng(0))
        first = next(i for i, z in seen if z > 0.1)
        assert first == expect_iter, version


@pytest.mark.parametrize("version", ["0.16", "0.17"])
def test_resume_is_exact(records, version):
    full_net, full_solver, _ = _run(version, iters=40)
    net = make_net()
    solver = FakeSolver(solver_param(), net)
    hook = sp.attach_sparsity(solver, version=version)
    rng = np.random.default_rng(1)
    solver.step(17, rng)
    state = hook.get_state()
    weights = [[b.data.copy() for b in ly.blobs] for ly in net.layers]
    # a fresh solver resumed from the state continues exactly
    net2 = make_net()
    for ly, ws in zip(net2.layers, weights, strict=True):
        for b, w in zip(ly.blobs, ws, strict=True):
            b.data = w
    solver2 = FakeSolver(solver_param(), net2)
    solver2.iter = 17
    hook2 = sp.attach_sparsity(solver2, version=version)
    solver2.providers["jacinto_sparsity"][1](state)
    assert hook2.factor == hook.factor
    solver2.step(40 - 17, rng)
    for a, b in zip(full_net.layers, net2.layers, strict=True):
        for x, y in zip(a.blobs, b.blobs, strict=True):
            np.testing.assert_array_equal(x.data, y.data)


def test_not_reached_explanation(records):
    # the cap (0.2*max|w| per channel) prevents 0.9: one line per layer says why
    _run("0.17", iters=60, sparsity_target=0.9, sparsity_step_factor=0.1)
    msgs = records
    assert any(m.startswith("Sparsity target 0.9 not reached") for m in msgs)
    assert any(m.startswith("  conv1x1_param_0 (0): not pruned: ineligible kernel") for m in msgs)
    assert any("conv2_param_0" in m and "cap reached" in m for m in msgs)


@pytest.mark.parametrize("field,value", [("sparsity_target", 1.0), ("sparsity_target", -0.1),
                                         ("sparsity_step_factor", -0.01), ("sparsity_step_iter", -5),
                                         ("sparsity_start_iter", -1)])
def test_bad_input(field, value):
    with pytest.raises(SolverError, match=field):
        sp.SparsityHook(solver_param(**{field: value}))


def test_none_mode_does_nothing():
    net = make_net()
    solver = FakeSolver(solver_param(sparse_mode=caffe_pb2.SPARSE_NONE), net)
    assert sp.attach_sparsity(solver) is None


def test_reference_jsegnet21v2_counting():
    """The sparse stage's own net: 17 counted conv blobs, 2.69117e+06 weights, all eligible (§a.6)."""
    import os

    from caffelite import io
    from caffelite.layer import TEST
    from caffelite.net import Net
    from caffelite.jacinto import threshold as th
    from conftest import REFERENCE

    p = io.read_net(os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", "sparse", "deploy.prototxt"))
    p.layer[0].input_param.shape[0].dim[:] = [1, 3, 32, 64]
    net = Net(p, TEST)
    lines = st.format_sparsity(st.zero_counts(net))
    assert lines[0] == "Num Params(17), Sparsity (zero_weights/count): "
    assert lines[-1] == "Total Sparsity (zero_weights/count) =  (0/2.69117e+06) 0"
    # same key order as the reference log (std::map order)
    assert [ln.split("(")[0] for ln in lines[1:4]] == ["conv1a_param_0", "conv1b_param_0", "ctx_conv1_param_0"]
    geo = {ly.param.name: st.layer_geometry(ly) for _, ly in st.conv_layers(net)}
    assert all(th.is_eligible(*g) for g in geo.values())
    # fractions at factor 0.6: conv1a (ni=3) and ctx_final (no=8) get low = 0.3, as in the reference log
    f = np.float32(0.6)
    assert th.channel_fraction(*geo["conv1a"][:2], f) == np.float32(0.3)
    assert th.channel_fraction(*geo["ctx_final"][:2], f) == np.float32(0.3)
    assert th.channel_fraction(*geo["res5a_branch2b"][:2], f) == f


class EndEventSolver(FakeSolver):
    """A solver offering the ``on_solve_end`` event (fired once after the training loop, as Solver.solve)."""

    def __init__(self, param, net):
        super().__init__(param, net)
        self.hooks["on_solve_end"] = []

    def solve(self, rng):
        self.step(self.param.max_iter - self.iter, rng)
        for fn in self.hooks["on_solve_end"]:
            fn(self)


@pytest.mark.parametrize("with_event", [False, True])
def test_end_of_training(records, with_event):
    net = make_net()
    cls = EndEventSolver if with_event else FakeSolver
    solver = cls(solver_param(max_iter=12), net)
    hook = sp.attach_sparsity(solver)
    assert hook.end_event == with_event
    rng = np.random.default_rng(0)
    if with_event:
        solver.solve(rng)
    else:
        solver.step(12, rng)
    msgs = records
    assert msgs.count("Sparsity after training:") == 1
    # the closing display follows the last "Sparsity after update" (iter 10 of 12 with display_sparsity 5)
    assert max(i for i, m in enumerate(msgs) if m == "Sparsity after update:") < msgs.index("Sparsity after training:")
    # the final ThresholdNet ran at iter=max_iter: 0.17 thresholds at 5 and 10 only (12 is not a multiple)
    assert [m.rsplit("iter=", 1)[1] for m in msgs if m.startswith("Finding")] == ["5", "10"]


def test_version_selection(monkeypatch):
    from types import SimpleNamespace

    from caffelite import jacinto
    from caffelite.errors import CaffeliteError
    monkeypatch.delenv(jacinto.ENV_VERSION, raising=False)
    assert jacinto.resolve_version() == "0.17" == sp.DEFAULT_VERSION
    jac16 = SimpleNamespace(flavor="jacinto016")
    assert jacinto.resolve_version(None, jac16) == "0.16"
    assert jacinto.resolve_version("0.17", jac16) == "0.17"
    monkeypatch.setenv(jacinto.ENV_VERSION, "0.16")
    assert jacinto.resolve_version() == "0.16" and jacinto.resolve_version("0.17") == "0.17"
    monkeypatch.setenv(jacinto.ENV_VERSION, "0.18")
    with pytest.raises(CaffeliteError, match="0.16, 0.17"):
        jacinto.resolve_version()
    monkeypatch.delenv(jacinto.ENV_VERSION)
    net = make_net()
    solver = FakeSolver(solver_param(), net)
    solver.flavor = "jacinto016"
    assert jacinto.attach_from_proto(None, solver).sparsity.version == "0.16"
    solver2 = FakeSolver(solver_param(), make_net())
    assert jacinto.attach_from_proto(None, solver2).sparsity.version == "0.17"
    assert jacinto.attach_from_proto(None, solver2, version="0.17", sparsity_version="0.16").sparsity.version == "0.16"
    import argparse
    parser = argparse.ArgumentParser()
    jacinto.add_version_argument(parser)
    assert parser.parse_args(["--jacinto_version", "0.16"]).jacinto_version == "0.16"
    assert parser.parse_args([]).jacinto_version is None
