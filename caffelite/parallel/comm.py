"""Collective communication between the replicas of a data-parallel run.

A :class:`Communicator` knows its ``rank`` and ``size`` and offers the four collectives the trainer needs:
``allreduce_sum`` and ``allreduce_mean`` (gradients, test scores), ``broadcast`` (parameters at start,
sparsity masks, quantization ranges, the signal action) and ``barrier``. Arrays are reduced in place.

Backends, all existing libraries (no hand-made protocol):

* :class:`LocalCommunicator` — one process, every collective is the identity (the single-device path).
* :class:`MPICommunicator` — CPU replicas through mpi4py (``pip install caffelite[mpi]`` brings mpi4py and
  an MPICH runtime); used to test the data-parallel code on machines without GPUs.
* :class:`caffelite.parallel.nccl.NcclCommunicator` — GPU replicas through NCCL (CuPy's bindings).

Gradients are combined as caffe-jacinto/NVCaffe do: summed over the replicas, then divided by their number
(docs/jacinto-spec.md §c.3, §c.2 "multi-GPU allreduce → ÷ n_gpu").
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import DeviceError

__all__ = ["Communicator", "LocalCommunicator", "MPICommunicator", "flatten", "unflatten"]


def flatten(arrays, xp=None):
    """One contiguous 1-D copy of ``arrays`` (all of one dtype), so a collective is one message, not many."""
    xp = xp or backend.get_array_module(*arrays)
    if not arrays:
        return xp.zeros(0, dtype=np.float32)
    return xp.concatenate([xp.ravel(a) for a in arrays])


def unflatten(flat, arrays):
    """Copy the pieces of ``flat`` back into ``arrays`` (the inverse of :func:`flatten`), in place."""
    offset = 0
    for a in arrays:
        n = a.size
        a[...] = flat[offset:offset + n].reshape(a.shape)
        offset += n


class Communicator:
    """The collectives of one replica. Subclasses implement ``_allreduce_flat`` and ``_broadcast_flat``."""

    rank = 0
    size = 1
    name = "base"

    @property
    def is_root(self) -> bool:
        """True on rank 0, the replica that logs, snapshots and decides (masks, ranges, signals)."""
        return self.rank == 0

    # -- what backends implement ----------------------------------------------------------------------
    def _allreduce_flat(self, flat):
        """Sum the 1-D contiguous array ``flat`` over all replicas, in place."""
        raise NotImplementedError

    def _broadcast_flat(self, flat, root):
        """Overwrite the 1-D contiguous array ``flat`` with rank ``root``'s, in place."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait until every replica gets here."""

    def close(self) -> None:
        """Release the backend's resources."""

    # -- the collectives ------------------------------------------------------------------------------
    def _grouped(self, arrays, op):
        """Apply ``op`` to one flat buffer per dtype; arrays already contiguous 1-D are used directly."""
        arrays = [a for a in arrays if a is not None and a.size]
        by_dtype = {}
        for a in arrays:
            by_dtype.setdefault(np.dtype(a.dtype), []).append(a)
        for group in by_dtype.values():
            if len(group) == 1 and group[0].ndim == 1 and group[0].flags.c_contiguous:
                op(group[0])
                continue
            flat = flatten(group)
            op(flat)
            unflatten(flat, group)
        return arrays

    def allreduce_sum(self, arrays):
        """Sum each array of ``arrays`` over the replicas, in place; returns the list."""
        if self.size == 1:
            return list(arrays)
        return self._grouped(list(arrays), self._allreduce_flat)

    def allreduce_mean(self, arrays):
        """Sum over the replicas then divide by their number, in place (NVCaffe's gradient reduction, §c.3)."""
        arrays = list(arrays)
        if self.size == 1:
            return arrays
        self.allreduce_sum(arrays)
        for a in arrays:
            if a is not None and a.size:
                a /= a.dtype.type(self.size)
        return arrays

    def broadcast(self, arrays, root=0):
        """Overwrite every array of ``arrays`` with rank ``root``'s values, in place; returns the list."""
        if self.size == 1:
            return list(arrays)
        return self._grouped(list(arrays), lambda flat: self._broadcast_flat(flat, root))

    def broadcast_scalar(self, value, root=0, dtype=np.float64):
        """Rank ``root``'s ``value`` (a number) on every replica."""
        if self.size == 1:
            return value
        buf = self.host_or_device_array(np.asarray([value], dtype=dtype))
        self.broadcast([buf], root)
        return backend.to_numpy(buf)[0].item()

    def host_or_device_array(self, host):
        """``host`` as an array this backend can communicate (host memory here; device memory for NCCL)."""
        return np.ascontiguousarray(host)

    def __repr__(self):
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"


class LocalCommunicator(Communicator):
    """A single replica: every collective leaves the arrays as they are."""

    name = "local"

    def _allreduce_flat(self, flat):
        return flat

    def _broadcast_flat(self, flat, root):
        return flat


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise DeviceError("CPU data parallel needs mpi4py and an MPI runtime "
                          f"(pip install 'caffelite[mpi]'): {e}") from None
    return MPI


class MPICommunicator(Communicator):
    """CPU replicas over MPI (mpi4py): the processes come from ``mpiexec -n N`` (see :func:`launch`)."""

    name = "mpi"

    def __init__(self, comm=None):
        MPI = _import_mpi()
        self._MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def _host(self, flat):
        if not isinstance(flat, np.ndarray):
            raise DeviceError("the MPI communicator reduces host (NumPy) arrays only; use NCCL on GPUs")
        return flat

    def _allreduce_flat(self, flat):
        self.comm.Allreduce(self._MPI.IN_PLACE, self._host(flat), op=self._MPI.SUM)
        return flat

    def _broadcast_flat(self, flat, root):
        self.comm.Bcast(self._host(flat), root=root)
        return flat

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        """End every rank of the job (a failed replica would otherwise leave the others waiting)."""
        self.comm.Abort(int(code))
