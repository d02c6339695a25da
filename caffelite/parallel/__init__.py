"""Data-parallel training: one process per device, gradients all-reduced, the root logs and snapshots.

caffe-jacinto's multi-GPU training (docs/jacinto-spec.md §c.3) in caffelite's shape:

* :func:`launch` starts the replicas (NCCL through CuPy on GPUs; MPI through mpi4py on CPUs, which is how
  the data-parallel code is tested without a GPU) — this is what ``caffelite train --gpu 0,1`` calls;
* :class:`Communicator` is the collective interface (:class:`LocalCommunicator`, :class:`MPICommunicator`,
  :class:`~caffelite.parallel.nccl.NcclCommunicator`);
* :class:`DataParallel` attaches one replica to a Solver through its hooks; :func:`current` gives it to
  other hooks, which share decisions with ``current().broadcast_state(name, arrays)``;
* :func:`batch_per_device` / :func:`divide_batch_sizes` / :func:`shard_data_layers` split the batch and the
  data between replicas.
"""

from __future__ import annotations

from .comm import Communicator, LocalCommunicator, MPICommunicator
from .launch import find_mpiexec, launch
from .replica import DataParallel, current
from .shard import InterleavedCursor, batch_per_device, divide_batch_sizes, shard_data_layers

__all__ = ["launch", "find_mpiexec", "Communicator", "LocalCommunicator", "MPICommunicator", "DataParallel",
           "current", "broadcast_state", "batch_per_device", "divide_batch_sizes", "shard_data_layers",
           "InterleavedCursor"]


def broadcast_state(name, arrays):
    """Share ``arrays`` from the root in a data-parallel run (in place); a no-op on a single device.

    For hooks that decide something from local data (sparsity masks, quantization ranges) and must decide
    it once for all replicas."""
    replica = current()
    if replica is None:
        return list(arrays)
    return replica.broadcast_state(name, arrays)
