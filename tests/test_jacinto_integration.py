"""Sparsity and quantization inside the real solver: a sparse run with the reference log's shape, resume
exactness through the snapshot sidecar, and a quantized TRAIN net."""

import os
import re

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite.jacinto import sparsity_stats
from caffelite.proto import caffe_pb2

from test_jacinto_sparsity import capture_log

NET = """
name: "tiny_sparse"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 12 dim: 12 } shape { dim: 4 dim: 32 dim: 12 dim: 12 }
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 0.5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "conv3" bottom: "target" top: "loss" }
"""


def _solver(tmp_path, max_iter=40, quantize=False, version=None, **kw):
    from caffelite import jacinto
    from caffelite.solvers import get_solver  # noqa: F401
    from caffelite.solvers import solver_class
    net = text_format.Parse(NET, caffe_pb2.NetParameter())
    net.quantize = quantize
    sp = caffe_pb2.SolverParameter(
        base_lr=1e-4, momentum=0.9, lr_policy="fixed", max_iter=max_iter, display=0, random_seed=7,
        weight_decay=1e-4, regularization_type="L1", snapshot=20, snapshot_prefix=str(tmp_path / "snap"),
        snapshot_after_train=False, sparse_mode=caffe_pb2.SPARSE_UPDATE, sparsity_target=0.8,
        sparsity_step_factor=0.05, sparsity_step_iter=5, sparsity_start_iter=5, sparsity_start_factor=0.6,
        display_sparsity=5)
    sp.net_param.CopyFrom(net)
    for k, v in kw.items():
        setattr(sp, k, v)
    solver = solver_class(sp)(sp)
    hooks = jacinto.attach_from_proto(solver.net, solver, version=version)
    return solver, hooks


@pytest.fixture
def records():
    with capture_log() as msgs:
        yield msgs


def _conv_weights(solver):
    return {n: solver.net.layer_dict[n].blobs[0].data.copy() for n in ("conv1", "conv2", "conv3")}


def _heavy_tailed(solver, seed=3):
    """L1-trained-like conv weights (log-normal magnitudes), so the 0.2*max cap lets ~80 % be pruned."""
    rng = np.random.default_rng(seed)
    for n in ("conv1", "conv2", "conv3"):
        w = solver.net.layer_dict[n].blobs[0].data
        w[...] = np.exp(rng.standard_normal(w.shape) * 1.5) * 0.01 * rng.choice([-1.0, 1.0], w.shape)


def test_sparse_run_shape(tmp_path, records):
    """The shape of REF:sparse/run.log, made by caffe-jacinto 0.16 (so 0.16 ordering, explicitly)."""
    solver, hooks = _solver(tmp_path, version="0.16", display=5)
    assert hooks.sparsity.version == "0.16"
    _heavy_tailed(solver)
    solver.solve()
    # 0.16: "iter=10" follows exactly 10 updates, so it is logged before the "Iteration 10 (...)" display line
    # (as in the reference log: "Finding ... iter=1000" precedes "Iteration 1000 (")
    find10 = next(i for i, m in enumerate(records) if m.startswith("Finding") and m.endswith("iter=10"))
    assert find10 < next(i for i, m in enumerate(records) if m.startswith("Iteration 10 ("))
    finds = [m for m in records if m.startswith("Finding and applying sparsity")]
    assert len(finds) >= 3
    pat = re.compile(r"sparsity_factor=(\S+) sparsity_achieved=(\S+) iter=(\d+)")
    parsed = [pat.search(m).groups() for m in finds]
    assert [int(i) for _, _, i in parsed] == list(range(5, 5 * len(parsed) + 1, 5))
    factors = [float(f) for f, _, _ in parsed]
    assert np.allclose(np.diff(factors), 0.05, atol=1e-6)
    achieved = [float(a) for _, a, _ in parsed]
    # like the reference log: sparsity rises by about step_factor per thresholding, until the target ...
    steps = np.diff(achieved[1:])
    assert np.all(steps > 0.02) and np.all(steps < 0.08), achieved
    assert achieved[-1] < 0.8 <= sparsity_stats.sparsity(solver.net, hooks.sparsity.masks)
    # ... then no more thresholding: the last "Finding" is followed only by unchanged totals
    totals = [m for m in records if m.startswith("Total Sparsity")]
    k = next(i for i, m in enumerate(totals) if float(m.rsplit(" ", 1)[1]) >= 0.8)
    assert len(set(totals[k:])) == 1 and len(totals) > k + 2
    assert "Sparsity after training:" in records
    total = [m for m in records if m.startswith("Total Sparsity")][-1]
    # conv3 is counted (no Softmax follows); all three convs are eligible (ni or no >= 32)
    assert re.match(r"Total Sparsity \(zero_weights/count\) =  \(\d+/19296\) 0\.\d+", total)
    # masks hold through the SGD updates (SPARSE_UPDATE)
    for i, m in hooks.sparsity.masks.items():
        assert np.all(solver.net.layers[i].blobs[0].data[m == 0] == 0)


def test_017_is_the_default_and_thresholds_after_the_display(tmp_path, records):
    solver, hooks = _solver(tmp_path, max_iter=11, display=5)
    assert hooks.sparsity.version == "0.17"
    _heavy_tailed(solver)
    solver.solve()
    find10 = next(i for i, m in enumerate(records) if m.startswith("Finding") and m.endswith("iter=10"))
    assert find10 > next(i for i, m in enumerate(records) if m.startswith("Iteration 10 ("))


def test_sparse_resume_is_exact(tmp_path, records):
    os.makedirs(tmp_path / "a", exist_ok=True)
    full, fh = _solver(tmp_path / "a")
    full.solve()
    want = _conv_weights(full)
    state = str(tmp_path / "a" / "snap_iter_20.solverstate")  # taken mid-run, masks + factor in its sidecar
    assert os.path.exists(state)
    os.makedirs(tmp_path / "b", exist_ok=True)
    resumed, hooks = _solver(tmp_path / "b")
    resumed.solve(resume_file=state)
    assert hooks.sparsity.factor == fh.sparsity.factor
    got = _conv_weights(resumed)
    for n in want:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)


def test_quantized_train_net_runs(tmp_path, records):
    solver, hooks = _solver(tmp_path, max_iter=4, quantize=True, sparse_mode=caffe_pb2.SPARSE_NONE)
    assert len(hooks.quantization) == 1 and hooks.sparsity is None
    solver.step(3)
    q = hooks.quantization[0]
    assert q.infer_count == 3
    qp = solver.net.layer_dict["relu1"].param.quantization_param
    assert qp.qparam_out[0].quantize and qp.rounding_scheme == 1  # STOCHASTIC in TRAIN (§b.4)
    assert any(m.startswith("Enabling quantization at output of: ReLU relu1") for m in records)


def test_quantized_sparse_resume_is_exact(tmp_path, records):
    """Quantization in TRAIN (stochastic rounding, ranges, scale_applied state) and sparsity together: a run
    resumed from the iteration-20 snapshot ends with the same weights and quantization parameters."""
    os.makedirs(tmp_path / "a", exist_ok=True)
    full, fh = _solver(tmp_path / "a", max_iter=26, quantize=True)
    full.solve()
    state = str(tmp_path / "a" / "snap_iter_20.solverstate")
    os.makedirs(tmp_path / "b", exist_ok=True)
    resumed, hooks = _solver(tmp_path / "b", max_iter=26, quantize=True)
    resumed.solve(resume_file=state)
    assert hooks.quantization[0].infer_count == fh.quantization[0].infer_count
    for n, w in _conv_weights(full).items():
        np.testing.assert_array_equal(_conv_weights(resumed)[n], w, err_msg=n)
    for name in ("conv1", "relu1", "conv3"):
        qp = resumed.net.layer_dict[name].param.quantization_param
        assert qp == full.net.layer_dict[name].param.quantization_param, name
