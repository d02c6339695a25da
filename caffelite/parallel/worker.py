"""One data-parallel replica process: ``python -m caffelite.parallel.worker CONFIG_JSON [--rank R]``.

Started by :func:`caffelite.parallel.launch` (never by hand). It does what ``caffelite train`` does for one
device — read the solver, build it, load weights or resume, attach the jacinto hooks — with three changes:
the nets are read with each reader's batch divided among the devices (docs/jacinto-spec.md §c.3), a
:class:`~caffelite.parallel.replica.DataParallel` keeps the replica in step with the others, and only the
root logs. At the end every replica reports its speed to the root, which logs NVCaffe's performance lines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import numpy as np

from .. import backend
from .. import log as glog
from ..errors import CaffeliteError
from .comm import MPICommunicator
from .replica import DataParallel
from .shard import divide_batch_sizes

__all__ = ["main", "make_communicator", "inline_nets", "run_replica"]


def make_communicator(config, rank=None):
    """The communicator this process joins, with the device selected (GPU) or CPU mode set (MPI)."""
    if config["backend"] == "mpi":
        backend.set_mode_cpu()
        return MPICommunicator()
    if config["backend"] == "nccl":
        from .nccl import NcclCommunicator, decode_unique_id
        devices = config["devices"]
        device = devices[int(rank)]
        backend.set_device(device)
        backend.set_mode_gpu()
        return NcclCommunicator(len(devices), int(rank), decode_unique_id(config["nccl_id"]), device)
    raise CaffeliteError(f"unknown data-parallel backend '{config['backend']}'")


def _resolve(path, base_dir):
    # Caffe opens net files relative to the CWD; like caffelite's solver, fall back to the solver's folder
    if os.path.exists(path) or os.path.isabs(path):
        return path
    alt = os.path.join(base_dir, path)
    return alt if os.path.exists(alt) else path


def inline_nets(param, base_dir, n_devices):
    """Read the solver's net files into its ``*_param`` fields and divide their batch sizes for ``n_devices``.

    Returns ``[(layer, old, new)]`` for the train net (the batch each replica uses)."""
    from .. import io
    for field, target in (("net", "net_param"), ("train_net", "train_net_param")):
        if param.HasField(field):
            getattr(param, target).CopyFrom(io.read_net(_resolve(getattr(param, field), base_dir)))
            param.ClearField(field)
    for path in list(param.test_net):
        param.test_net_param.add().CopyFrom(io.read_net(_resolve(path, base_dir)))
    param.ClearField("test_net")
    changed = []
    for field in ("net_param", "train_net_param"):
        if param.HasField(field):
            changed += divide_batch_sizes(getattr(param, field), n_devices, "train")
    for net in param.test_net_param:
        divide_batch_sizes(net, n_devices, "test")
    return changed


def run_replica(config, comm):
    """Build this replica's solver, keep it in step through ``comm``, train; returns the solver."""
    from .. import jacinto
    from ..solvers import read_solver_param
    from ..solvers.setup import SignalHandler, hms, prepare_training

    path = config["solver"]
    param = read_solver_param(path)
    param.train_state.level = config["level"]
    for s in config["stages"]:
        param.train_state.stage.append(s)
    inline_nets(param, os.path.dirname(path), comm.size)
    if param.random_seed < 0:
        # one seed for all: identical fillers (broadcast anyway) and identical shuffles, so the interleaved
        # shares of a shuffled ImageData list stay disjoint
        seed = int(np.random.SeedSequence().entropy % (2**31)) if comm.is_root else 0
        param.random_seed = int(comm.broadcast_scalar(seed))
    # the handler is installed once the solver is built; the jacinto hooks follow the launcher's environment
    handler = SignalHandler(config["sigint_effect"], config["sighup_effect"])
    solver, _ = prepare_training(param, handler, flavor=config.get("flavor") or "bvlc",
                                 snapshot_format=config["snapshot_format"],
                                 attach=lambda s: jacinto.attach_from_proto(s.net, s),
                                 snapshot=config["snapshot"], weights=config["weights"])
    if config["snapshot"]:
        solver.restore(config["snapshot"])  # before the replicas compare and broadcast their parameters
    replica = DataParallel(solver, comm).attach()
    replica.broadcast_parameters()
    stamps = []
    solver.add_hook("after_update", lambda s, **_: stamps.append(time.perf_counter()))
    try:
        glog.info(f"Starting Optimization on {comm.size} devices ({comm.name})", "caffe.cpp:239")
        t0 = time.perf_counter()
        solver.solve()
        glog.info(f"Optimization Done in {hms(time.perf_counter() - t0)}", "caffe.cpp:250")
        _log_performance(solver, comm, stamps, config)
        replica.sync_statistics()  # Solve's closing display forward updated them once more, locally
        if not replica.check_identical():
            raise CaffeliteError("data-parallel replicas ended with different weights")
        glog.info(f"All {comm.size} replicas hold identical weights", "parallel.cpp:260")
    finally:
        handler.restore()
        replica.detach()
    return solver


def _log_performance(solver, comm, stamps, config):
    """NVCaffe's closing lines: per device ``iters/s * batch = img/s`` (first 2 iterations excluded)."""
    batch = _train_batch(solver.net)
    secs = stamps[-1] - stamps[1] if len(stamps) > 2 else 0.0
    iters = max(len(stamps) - 2, 0)
    rate = iters / secs if secs > 0 else 0.0
    local = np.zeros(3 * comm.size, dtype=np.float64)
    local[3 * comm.rank:3 * comm.rank + 3] = (rate, batch, secs)
    buf = comm.host_or_device_array(local)
    comm.allreduce_sum([buf])
    table = backend.to_numpy(buf).reshape(comm.size, 3)
    if not comm.is_root:
        return
    total = 0.0
    devices = config["devices"]
    for r, (rate_r, batch_r, secs_r) in enumerate(table):
        root = "Root " if r == 0 else ""
        total += rate_r * batch_r
        glog.info(f"{root}Solver performance on device {devices[r] if r < len(devices) else r}: "
                  f"{glog.fmt(rate_r)} * {int(batch_r)} = {glog.fmt(rate_r * batch_r)} img/sec "
                  f"({iters} itr in {glog.fmt(secs_r)} sec)", "parallel.cpp:246")
    glog.info(f"Overall multi-GPU performance: {glog.fmt(total)} img/sec", "parallel.cpp:250")


def _train_batch(net):
    if not hasattr(net, "top_vecs"):  # a stand-in net object
        return 0
    for i, layer in enumerate(net.layers):
        tops = net.top_vecs(i)
        if hasattr(layer, "batch_size") and tops:
            return int(tops[0].shape[0])
    return 0


def main(argv=None) -> int:
    """Entry point of a replica process; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config = json.loads(argv[0])
    rank = int(argv[argv.index("--rank") + 1]) if "--rank" in argv else None
    comm = None
    try:
        comm = make_communicator(config, rank)
        glog.setup_logging(level=logging.INFO if comm.is_root else logging.ERROR)
        run_replica(config, comm)
        comm.barrier()
        return 0
    except CaffeliteError as e:
        who = f"rank {comm.rank}" if comm is not None else "replica"
        print(f"caffelite train ({who}): error: {e}", file=sys.stderr)
        _abort(comm, 2)
        return 2
    except BaseException:
        _abort(comm, 1, reraise=True)
        raise
    finally:
        if comm is not None:
            comm.close()


def _abort(comm, code, reraise=False):
    # a replica that fails leaves the others waiting in a collective: MPI's Abort ends the whole job
    # (the NCCL launcher stops the remaining processes itself when one exits non-zero)
    if comm is not None and comm.size > 1 and hasattr(comm, "abort"):
        if reraise:
            import traceback
            traceback.print_exc()
        comm.abort(code)


if __name__ == "__main__":
    sys.exit(main())
