"""Resume never continues silently from a half-written snapshot: the .solverstate is written last (its presence
implies its caffemodel and sidecar), a state without its sidecar resumes with one warning naming what starts
fresh, and "newest snapshot" logic picks the newest complete one. The slow test kills a training process with
SIGKILL at random moments and checks that resuming each time ends on the uninterrupted run's weights."""

import glob
import logging
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import caffelite
from caffelite.solvers import snapshot as snap

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 dim: 8 dim: 8 dim: 8 }
                     data_filler { type: "gaussian" std: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" }
layer { name: "loss" type: "EuclideanLoss" bottom: "conv1" bottom: "target" top: "loss" }
"""


def _setup(d, max_iter=6, snapshot=0, prefix="snap/s", net=NET):
    (d / "train.prototxt").write_text(net)
    (d / "solver.prototxt").write_text(
        f'net: "train.prototxt" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: {max_iter} '
        f'snapshot: {snapshot} display: 0 snapshot_prefix: "{prefix}" random_seed: 3')
    return str(d / "solver.prototxt")


def test_state_is_written_last(tmp_path, monkeypatch):
    """A crash while the sidecar is written leaves no .solverstate for that iteration: resume takes the
    previous complete snapshot."""
    monkeypatch.chdir(tmp_path)
    solver = caffelite.get_solver(_setup(tmp_path))
    solver.step(2)
    solver.snapshot()
    solver.step(2)
    real = snap.atomic_open

    def crash(path):
        if str(path).endswith(snap.SIDECAR_SUFFIX):
            raise KeyboardInterrupt("killed mid-snapshot")
        return real(path)

    monkeypatch.setattr(snap, "atomic_open", crash)
    with pytest.raises(KeyboardInterrupt):
        solver.snapshot()
    assert os.path.exists("snap/s_iter_4.caffemodel")
    assert not os.path.exists("snap/s_iter_4.solverstate")
    assert snap.latest_snapshot("snap/s") == "snap/s_iter_2.solverstate"


def test_latest_snapshot_skips_incomplete(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = caffelite.get_solver(_setup(tmp_path))
    for _ in range(3):
        solver.step(2)
        solver.snapshot()
    os.remove("snap/s_iter_6.solverstate.extra.npz")   # a copy that lost its companion
    assert snap.latest_snapshot("snap/s") == "snap/s_iter_4.solverstate"
    from caffelite.pipeline import segmentation
    monkeypatch.setattr(segmentation, "PREFIX", "s")
    assert segmentation.latest_snapshot("snap", "solverstate") == (4, os.path.join("snap", "s_iter_4.solverstate"))
    # states written by Caffe have no sidecar at all: the newest one (with its caffemodel) is taken
    for p in glob.glob("snap/*.npz"):
        os.remove(p)
    assert snap.latest_snapshot("snap/s") == "snap/s_iter_6.solverstate"


def test_resume_without_sidecar_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    solver = caffelite.get_solver(_setup(tmp_path))
    solver.step(2)
    state = solver.snapshot()
    os.remove(state + snap.SIDECAR_SUFFIX)
    again = caffelite.get_solver("solver.prototxt")
    with caplog.at_level(logging.WARNING, logger="caffelite"):
        again.restore(state)
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1, warns
    assert "s_iter_2.solverstate.extra.npz" in warns[0] and "random generator" in warns[0]
    assert "differ from an uninterrupted" in warns[0]
    assert again.iter == 2
    np.testing.assert_array_equal(again.net.params["conv1"][0].data, solver.net.params["conv1"][0].data)
    # with its sidecar: silent
    solver.step(2)
    state = solver.snapshot()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="caffelite"):
        caffelite.get_solver("solver.prototxt").restore(state)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _train(cwd, snapshot=None):
    cmd = [sys.executable, "-m", "caffelite", "train", "--solver", "solver.prototxt"]
    if snapshot:
        cmd += ["--snapshot", snapshot]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _newest_iter(snapdir):
    """Newest iteration with any snapshot file (complete or not) in ``snapdir``."""
    names = (os.path.basename(p) for p in glob.glob(os.path.join(snapdir, "s_iter_*")))
    its = [int(n.split("_iter_")[1].split(".")[0]) for n in names]
    return max(its, default=0)


@pytest.mark.slow
def test_kill_9_at_random_moments(tmp_path):
    """20 SIGKILLs at random moments while training (snapshots every 2 iterations, so many land mid-snapshot),
    each time resumed from the newest snapshot: the final weights equal an uninterrupted run's bit for bit,
    and every snapshot left on disk is complete and loads."""
    big = NET.replace("num_output: 8", "num_output: 64").replace("dim: 8 dim: 8 dim: 8", "dim: 64 dim: 8 dim: 8")
    ref, run = tmp_path / "ref", tmp_path / "run"
    for d in (ref, run):
        d.mkdir()
        _setup(d, max_iter=300, snapshot=2, net=big)
    assert _train(ref).wait(timeout=600) == 0
    snapdir = str(run / "snap")
    rng = random.Random(1234)
    kills = mid_snapshot = 0
    while kills < 20:
        state = snap.latest_snapshot(os.path.join(snapdir, "s"))
        p = _train(run, os.path.relpath(state, run) if state else None)
        start_iter = _newest_iter(snapdir)
        while p.poll() is None and _newest_iter(snapdir) <= start_iter:  # wait until it trains
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        if p.poll() is not None:  # finished before the kill
            assert p.returncode == 0
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        newest = snap.latest_snapshot(os.path.join(snapdir, "s"))
        mid_snapshot += _newest_iter(snapdir) > int(newest.split("_iter_")[1].split(".")[0])
    assert kills == 20, f"the run finished after {kills} kills: make it longer"
    assert mid_snapshot >= 1, "no kill landed between a snapshot's first file and its .solverstate"
    state = snap.latest_snapshot(os.path.join(snapdir, "s"))
    assert _train(run, os.path.relpath(state, run)).wait(timeout=600) == 0
    final = "snap/s_iter_300.caffemodel"
    assert (run / final).read_bytes() == (ref / final).read_bytes()
    states = sorted(glob.glob(os.path.join(snapdir, "*.solverstate")))
    assert len(states) > 20
    cwd = os.getcwd()
    os.chdir(run)
    try:
        for s in states:  # every snapshot on disk is complete and loads
            assert snap.is_complete(s), s
            caffelite.get_solver("solver.prototxt").restore(s)
    finally:
        os.chdir(cwd)
    for m in glob.glob(os.path.join(snapdir, "*.caffemodel")):
        caffelite.io.read_weights(m)
    print(f"{kills} kills, {mid_snapshot} between a snapshot's first file and its .solverstate")
