"""GPU replicas through NCCL, using CuPy's bindings (``cupy.cuda.nccl``, reached through caffelite.backend).

The launcher creates one NCCL unique id (:func:`new_unique_id`) and hands it to every worker process; each
worker selects its device and joins with :class:`NcclCommunicator` (one process per device, as NVCaffe's
P2PSync runs one solver per GPU). Collectives run in place on the current stream, grouped so a whole list
of parameter diffs is one NCCL launch without copying into a flat buffer.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import DeviceError
from .comm import Communicator

__all__ = ["NcclCommunicator", "new_unique_id", "encode_unique_id", "decode_unique_id"]

_NCCL_TYPES = {
    "float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
    "int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32", "int64": "NCCL_INT64",
}


def _nccl():
    nccl = backend.cupy_submodule("cuda.nccl")
    if not getattr(nccl, "available", True):  # CuPy built without NCCL exposes a stub
        raise DeviceError("multi-GPU training needs NCCL: install CuPy with NCCL support")
    return nccl


def new_unique_id() -> tuple:
    """A fresh NCCL unique id (the rendezvous token every replica must share)."""
    return tuple(_nccl().get_unique_id())


def encode_unique_id(uid) -> str:
    """A command-line-safe string for ``uid`` (a tuple of small ints)."""
    return ",".join(str(int(v)) for v in uid)


def decode_unique_id(text: str) -> tuple:
    """The inverse of :func:`encode_unique_id`."""
    return tuple(int(v) for v in text.split(","))


class NcclCommunicator(Communicator):
    """Rank ``rank`` of ``size`` GPU replicas joined with NCCL ``unique_id``, on CUDA device ``device``."""

    name = "nccl"

    def __init__(self, size, rank, unique_id, device):
        cp = backend.cupy_module()
        self._cp = cp
        self._nccl = _nccl()
        self.size, self.rank, self.device = int(size), int(rank), int(device)
        cp.cuda.Device(self.device).use()
        self.comm = self._nccl.NcclCommunicator(self.size, tuple(unique_id), self.rank)

    def _dtype(self, a):
        name = _NCCL_TYPES.get(np.dtype(a.dtype).name)
        if name is None:
            raise DeviceError(f"NCCL cannot reduce arrays of dtype {a.dtype}")
        return getattr(self._nccl, name)

    def _device_arrays(self, arrays):
        out = [a for a in arrays if a is not None and a.size]
        for a in out:
            if not isinstance(a, self._cp.ndarray) or not a.flags.c_contiguous:
                raise DeviceError("NCCL collectives need contiguous device (CuPy) arrays")
        return out

    def _stream(self):
        return self._cp.cuda.get_current_stream().ptr

    def _grouped(self, arrays, call):
        """Run ``call(a, dtype, stream)`` for every array inside one NCCL group; returns the arrays."""
        arrays = self._device_arrays(list(arrays))
        if self.size == 1 or not arrays:
            return arrays
        stream = self._stream()
        self._nccl.groupStart()
        try:
            for a in arrays:
                call(a, self._dtype(a), stream)
        finally:
            self._nccl.groupEnd()
        return arrays

    def allreduce_sum(self, arrays):
        """Sum every array over the replicas in place, one grouped NCCL call."""
        op = self._nccl.NCCL_SUM
        return self._grouped(arrays, lambda a, dt, stream: self.comm.allReduce(
            a.data.ptr, a.data.ptr, a.size, dt, op, stream))

    def broadcast(self, arrays, root=0):
        """Rank ``root``'s values in every array, in place, one grouped NCCL call."""
        root = int(root)
        return self._grouped(arrays, lambda a, dt, stream: self.comm.bcast(
            a.data.ptr, a.size, dt, root, stream))

    def host_or_device_array(self, host):
        return self._cp.asarray(np.ascontiguousarray(host))

    def barrier(self):
        # NCCL has no barrier: a 1-element all-reduce that everyone waits for is one
        buf = self._cp.zeros(1, dtype=np.float32)
        self.allreduce_sum([buf])
        self._cp.cuda.get_current_stream().synchronize()

    def close(self):
        comm, self.comm = self.comm, None
        if comm is not None:
            comm.destroy()
