"""Start one training process per device and wait for them (what ``caffelite train --gpu 0,1`` calls).

* GPUs (``backend="nccl"``): the launcher makes one NCCL unique id and starts ``len(devices)`` processes
  ``python -m caffelite.parallel.worker``, rank ``r`` on device ``devices[r]``; if one fails, the others are
  stopped.
* CPU (``backend="mpi"``): ``mpiexec -n N python -m caffelite.parallel.worker`` (mpi4py + an MPI runtime,
  ``pip install 'caffelite[mpi]'``); the MPI runtime stops every rank when one fails.

The job is described to the workers as one JSON argument (:func:`worker_config`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from ..errors import CaffeliteError, DeviceError

__all__ = ["launch", "worker_config", "find_mpiexec"]


def worker_config(solver_path, *, weights=None, snapshot=None, level=0, stages=(), flavor=None,
                  snapshot_format=None, sigint_effect="stop", sighup_effect="snapshot", backend="nccl",
                  devices=(), nccl_id=None):
    """The JSON-able job description every worker receives (paths made absolute: workers share the CWD)."""
    return {
        "solver": os.path.abspath(solver_path),
        "weights": weights or "",
        "snapshot": os.path.abspath(snapshot) if snapshot else "",
        "level": int(level), "stages": list(stages), "flavor": flavor, "snapshot_format": snapshot_format or "",
        "sigint_effect": sigint_effect, "sighup_effect": sighup_effect,
        "backend": backend, "devices": [int(d) for d in devices], "nccl_id": nccl_id,
    }


def find_mpiexec():
    """``mpiexec`` beside this Python (the ``mpich`` wheel installs it there) or on PATH; None if absent."""
    here = os.path.dirname(sys.executable)
    for name in ("mpiexec", "mpirun"):
        cand = os.path.join(here, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return shutil.which("mpiexec") or shutil.which("mpirun")


def launch(solver_path, devices, weights=None, snapshot=None, *, backend=None, level=0, stages=(), flavor=None,
           snapshot_format=None, sigint_effect="stop", sighup_effect="snapshot", env=None, timeout=None) -> int:
    """Train ``solver_path`` data-parallel; returns the exit status (0 when every replica succeeded).

    ``devices``: a list of GPU ids (NCCL, one process per GPU) or, with ``backend="mpi"``, a number of CPU
    processes (or a list whose length is that number). ``weights``: comma-separated caffemodels to fine-tune
    from; ``snapshot``: a .solverstate to resume. Only the root (rank 0) logs and writes snapshots."""
    if backend is None:
        backend = "mpi" if isinstance(devices, int) else "nccl"
    n = devices if isinstance(devices, int) else len(devices)
    if n < 1:
        raise CaffeliteError("data-parallel training needs at least one device")
    ids = list(range(n)) if isinstance(devices, int) else [int(d) for d in devices]
    kw = dict(weights=weights, snapshot=snapshot, level=level, stages=stages, flavor=flavor,
              snapshot_format=snapshot_format, sigint_effect=sigint_effect, sighup_effect=sighup_effect)
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    if backend == "mpi":
        return _launch_mpi(solver_path, n, kw, child_env, timeout)
    if backend == "nccl":
        return _launch_nccl(solver_path, ids, kw, child_env, timeout)
    raise CaffeliteError(f"unknown data-parallel backend '{backend}' (use 'nccl' or 'mpi')")


def _worker_cmd(config, *extra):
    return [sys.executable, "-m", "caffelite.parallel.worker", json.dumps(config), *extra]


def _launch_mpi(solver_path, n, kw, env, timeout):
    try:
        import mpi4py  # noqa: F401  (fail here, in the parent, with one clear line)
    except ImportError:
        raise DeviceError("CPU data-parallel training needs mpi4py and an MPI runtime: "
                          "pip install 'caffelite[mpi]'") from None
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise DeviceError("CPU data-parallel training needs an MPI launcher (mpiexec): "
                          "pip install 'caffelite[mpi]' installs MPICH's")
    config = worker_config(solver_path, backend="mpi", devices=range(n), **kw)
    proc = subprocess.Popen([mpiexec, "-n", str(n), *_worker_cmd(config)], env=env)
    return _wait([proc], timeout)


def _launch_nccl(solver_path, ids, kw, env, timeout):
    from .. import backend
    if not backend.cupy_available():
        raise DeviceError(f"--gpu {','.join(map(str, ids))}: multi-GPU training needs CuPy and NVIDIA GPUs "
                          "(install caffelite[cuda12x] or caffelite[cuda13x])")
    if len(set(ids)) != len(ids):
        raise CaffeliteError(f"--gpu: device ids repeat: {','.join(map(str, ids))}")
    from .nccl import encode_unique_id, new_unique_id
    uid = encode_unique_id(new_unique_id())
    config = worker_config(solver_path, backend="nccl", devices=ids, nccl_id=uid, **kw)
    procs = [subprocess.Popen(_worker_cmd(config, "--rank", str(r)), env=env) for r in range(len(ids))]
    return _wait(procs, timeout)


def _wait(procs, timeout):
    """Wait for every process; when one fails (or time runs out) stop the others it would leave waiting."""
    deadline = None if timeout is None else time.monotonic() + timeout
    status = 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [c for c in codes if c not in (None, 0)]
            if bad:
                status = bad[0]
                break
            if all(c == 0 for c in codes):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                status = 124
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        # the replicas got the same SIGINT and act on it (--sigint_effect, decided by the root): let them
        # finish their iteration and snapshot before anything is stopped
        status = 130
        for p in procs:
            try:
                p.wait(timeout=60)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                break
    for p in procs:  # only the processes this launcher started, one by one
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return int(status) if status > 0 else 1
