"""Data parallel on the CPU through MPI (mpi4py + MPICH from ``caffelite[mpi]``), launched by caffelite.

The central check: a 2-process run with the CPU all-reduce equals a 1-process run with the doubled
batch. The nets read the solvers fixture LMDB; the net has no BatchNorm (its batch statistics would make
two half batches differ from one whole batch by design).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import FIXTURES

mpi4py = pytest.importorskip("mpi4py")

from caffelite import parallel  # noqa: E402
from caffelite.net import TEST, Net  # noqa: E402

pytestmark = pytest.mark.skipif(parallel.find_mpiexec() is None, reason="no MPI launcher (pip install caffelite[mpi])")

DATA = os.path.join(FIXTURES, "solvers", "_data")

NET = """name: "dp_net"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ scale: 0.00390625 }} data_param {{ source: "{train}" batch_size: {batch} backend: LMDB }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: 0.00390625 }} data_param {{ source: "{test}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: {conv_out} kernel_size: 3 stride: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "xavier" }}
                         bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include {{ phase: TEST }} }}
"""

SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 4
display: 1
max_iter: {max_iter}
base_lr: 0.05
momentum: 0.9
weight_decay: 0.001
lr_policy: "step"
gamma: 0.5
stepsize: 3
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 7
"""


def _write_case(folder, batch=8, max_iter=8, snapshot=0, prefix="out/run", conv_out=4):
    os.makedirs(os.path.join(folder, "out"), exist_ok=True)
    with open(os.path.join(folder, "net.prototxt"), "w") as f:
        f.write(NET.format(train=os.path.join(DATA, "train_lmdb"), test=os.path.join(DATA, "test_lmdb"),
                           batch=batch, conv_out=conv_out))
    with open(os.path.join(folder, "solver.prototxt"), "w") as f:
        f.write(SOLVER.format(max_iter=max_iter, snapshot=snapshot, prefix=prefix))
    return os.path.join(folder, "solver.prototxt")


def _params(folder, model):
    net = Net(os.path.join(folder, "net.prototxt"), os.path.join(folder, model), TEST)
    return {n: np.array(b.data) for n, b in zip(net.learnable_param_names, net.learnable_params, strict=True)}


def _single_process(folder, prefix="out/single", max_iter=8):
    """The reference: one in-process solver with the whole batch (the doubled per-device batch)."""
    from caffelite.solvers import get_solver
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        s = get_solver("solver.prototxt")
        s.param.snapshot_prefix = prefix
        s.param.max_iter = max_iter
        s.solve()
    finally:
        os.chdir(cwd)
    return s


def _launch(folder, n=2, **kw):
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return parallel.launch("solver.prototxt", n, backend="mpi", timeout=240, **kw)
    finally:
        os.chdir(cwd)


def test_two_processes_equal_one_process_with_the_doubled_batch(tmp_path, capfd):
    folder = str(tmp_path)
    _write_case(folder, batch=8, max_iter=8)  # 8 per solver = 4 per process on 2 processes
    assert _launch(folder) == 0
    err = capfd.readouterr().err
    assert err.count("Solving dp_net") == 1, "only the root logs"
    assert "Root Solver performance on device 0" in err and "Solver performance on device 1" in err
    files = sorted(os.listdir(os.path.join(folder, "out")))
    assert "run_iter_8.caffemodel" in files and "run_iter_8.solverstate" in files
    lines = []
    collect = logging.Handler()
    collect.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("caffelite")
    logger.addHandler(collect)
    try:
        _single_process(folder)
    finally:
        logger.removeHandler(collect)
    par, ref = _params(folder, "out/run_iter_8.caffemodel"), _params(folder, "out/single_iter_8.caffemodel")
    assert par.keys() == ref.keys()
    init = _params_at_start(folder)
    for k in ref:
        assert not np.allclose(ref[k], init[k]), f"{k} did not train"
        np.testing.assert_allclose(par[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # test scores: per-output means over replicas (§c.3) = the single process's scores
    single_scores = [ln for ln in lines if "Test net output" in ln]
    par_scores = [ln.split("] ")[-1] for ln in err.splitlines() if "Test net output" in ln]
    assert len(par_scores) == len(single_scores) == 6
    for a, b in zip(par_scores, single_scores, strict=True):
        va, vb = float(a.split("= ")[1].split()[0]), float(b.split("= ")[1].split()[0])
        assert va == pytest.approx(vb, rel=1e-4, abs=1e-6), (a, b)


def _params_at_start(folder):
    from caffelite.solvers import get_solver
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        s = get_solver("solver.prototxt")
        return {n: np.array(b.data) for n, b in zip(s.net.learnable_param_names, s.net.learnable_params,
                                                      strict=True)}
    finally:
        os.chdir(cwd)


def test_two_process_resume_equals_uninterrupted(tmp_path):
    folder = str(tmp_path)
    _write_case(folder, batch=8, max_iter=8, snapshot=4)
    assert _launch(folder) == 0
    whole = _params(folder, "out/run_iter_8.caffemodel")
    os.rename(os.path.join(folder, "out/run_iter_8.caffemodel"), os.path.join(folder, "out/whole.caffemodel"))
    assert _launch(folder, snapshot=os.path.join(folder, "out/run_iter_4.solverstate")) == 0
    resumed = _params(folder, "out/run_iter_8.caffemodel")
    for k in whole:
        np.testing.assert_allclose(resumed[k], whole[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_a_failing_replica_ends_the_job_with_an_error(tmp_path):
    folder = str(tmp_path)
    _write_case(folder)
    with open(os.path.join(folder, "solver.prototxt"), "a") as f:
        f.write('type: "NoSuchSolver"\n')
    assert _launch(folder) != 0


COLLECTIVES = textwrap.dedent("""
    import sys, numpy as np
    from caffelite.parallel import MPICommunicator
    c = MPICommunicator()
    a = np.full((2, 3), c.rank + 1.0, np.float32)
    b = np.arange(5, dtype=np.float64) * (c.rank + 1)
    c.allreduce_mean([a, b])
    assert np.all(a == np.float32(1.5)), a
    assert np.allclose(b, np.arange(5) * 1.5), b
    s = np.full(4, c.rank + 1, np.int32)
    c.allreduce_sum([s])
    assert np.all(s == 3), s
    w = np.full(3, 10.0 * (c.rank + 1), np.float32)
    c.broadcast([w])
    assert np.all(w == 10.0), w
    assert c.broadcast_scalar(c.rank + 42) == 42
    c.barrier()
    with open(f"{sys.argv[1]}/rank{c.rank}", "w") as f:
        f.write(f"ok {c.rank} {c.size}")
""")


def test_mpi_collectives_between_two_processes(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    out = subprocess.run([parallel.find_mpiexec(), "-n", "2", sys.executable, str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["ok 0 2", "ok 1 2"]


JACINTO_SOLVER = """sparse_mode: SPARSE_UPDATE
sparsity_target: 0.5
sparsity_start_iter: 2
sparsity_step_iter: 2
sparsity_start_factor: 0.2
sparsity_step_factor: 0.1
display_sparsity: 2
"""


def test_jacinto_state_is_decided_once_and_shared(tmp_path, capfd):
    """Sparsity masks and quantization ranges (from each replica's own activations) agree on every replica."""
    folder = str(tmp_path)
    _write_case(folder, batch=8, max_iter=6, conv_out=32)  # jacinto prunes convs with >= 32 outputs only
    with open(os.path.join(folder, "solver.prototxt"), "a") as f:
        f.write(JACINTO_SOLVER)
    net_path = os.path.join(folder, "net.prototxt")
    with open(net_path) as f:
        text = f.read()
    with open(net_path, "w") as f:
        f.write(text.replace('name: "dp_net"\n', 'name: "dp_net"\nquantize: true\n'
                             'net_quantization_param { quantization_start: 2 }\n'))
    assert _launch(folder) == 0
    err = capfd.readouterr().err
    assert "All 2 replicas hold identical weights" in err
    assert "Sparsity after update" in err and "Enabling quantization" in err
    ref = _params(folder, "out/run_iter_6.caffemodel")
    assert np.count_nonzero(ref["conv1/0"] == 0) > 0, "sparsity was applied"


def test_batchnorm_statistics_are_averaged_so_replicas_agree(tmp_path, capfd):
    """The solvers fixture net (BatchNorm + Scale): each replica's running statistics come from its own half
    batch; they are averaged after every update, so the end-of-run check finds identical replicas."""
    case = os.path.join(FIXTURES, "solvers", "sgd_step")
    with open(os.path.join(case, "train_val.prototxt")) as f:
        net = f.read().replace("../_data/", DATA + "/")
    (tmp_path / "train_val.prototxt").write_text(net)
    with open(os.path.join(case, "solver.prototxt")) as f:
        solver = f.read().replace("max_iter: 12", "max_iter: 4").replace("snapshot: 6", "snapshot: 4")
    (tmp_path / "solver.prototxt").write_text(solver.replace('snapshot_prefix: "snapshot"',
                                                             'snapshot_prefix: "out/bn"'))
    os.makedirs(tmp_path / "out")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert parallel.launch("solver.prototxt", 2, backend="mpi", timeout=240) == 0
    finally:
        os.chdir(cwd)
    err = capfd.readouterr().err
    assert "All 2 replicas hold identical weights" in err
    assert os.path.exists(tmp_path / "out" / "bn_iter_4.caffemodel")
