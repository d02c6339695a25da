"""pycaffe's module-level odds and ends: ``Timer``, ``init_log``, ``layer_type_list``, the multi-solver
counters (``solver_count``/``solver_rank``/``set_multiprocess``), ``has_nccl`` and ``NCCL``.
"""

from __future__ import annotations

import time

__all__ = ["Timer", "init_log", "log_info", "layer_type_list", "solver_count", "set_solver_count", "solver_rank",
           "set_solver_rank", "multiprocess", "set_multiprocess", "has_nccl", "NCCL"]

_STATE = {"solver_count": 1, "solver_rank": 0, "multiprocess": False}


class Timer:
    """Wall-clock timer with pycaffe's interface: ``start()``, ``stop()``, ``ms`` (milliseconds)."""

    def __init__(self):
        self._t0 = None
        self._elapsed = 0.0

    def start(self):
        self._t0 = time.perf_counter()

    def stop(self):
        if self._t0 is not None:
            self._elapsed = time.perf_counter() - self._t0
            self._t0 = None

    @property
    def ms(self) -> float:
        """Milliseconds between the last start() and stop() (up to now while running)."""
        if self._t0 is not None:
            return (time.perf_counter() - self._t0) * 1000.0
        return self._elapsed * 1000.0


def init_log(level=0, stderr=True):
    """pycaffe's ``caffe.init_log``: glog-format lines on stderr from glog severity ``level`` up
    (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL). ``stderr=False`` is accepted for compatibility (glog would also
    log to files; caffelite logs to stderr only)."""
    from .log import glog_level, setup_logging

    setup_logging(level=glog_level(level))


def log_info(msg):
    """pycaffe's ``caffe.log``: one INFO line (not exported as ``caffelite.log``, the logging module's name)."""
    from . import log as glog

    glog.info(str(msg), "_caffe.cpp:0")


def layer_type_list():
    """Every layer type caffelite can build (Caffe type strings, sorted), as pycaffe's ``layer_type_list``."""
    from .layer import registered_types

    return registered_types()


def solver_count() -> int:
    return _STATE["solver_count"]


def set_solver_count(n: int) -> None:
    if int(n) < 1:
        raise ValueError(f"solver count must be >= 1, got {n}")
    _STATE["solver_count"] = int(n)


def solver_rank() -> int:
    return _STATE["solver_rank"]


def set_solver_rank(rank: int) -> None:
    if int(rank) < 0:
        raise ValueError(f"solver rank must be >= 0, got {rank}")
    _STATE["solver_rank"] = int(rank)


def multiprocess() -> bool:
    return _STATE["multiprocess"]


def set_multiprocess(flag: bool) -> None:
    _STATE["multiprocess"] = bool(flag)


def has_nccl() -> bool:
    """Whether NCCL is usable: CuPy with its NCCL bindings and at least one GPU."""
    from . import backend

    try:
        if not backend.cupy_available() or backend.device_count() < 1:
            return False
        nccl = backend.cupy_submodule("cuda.nccl")
    except Exception:  # a broken CUDA install is "no NCCL" here, not an error
        return False
    return bool(getattr(nccl, "available", True))


class NCCL:
    """pycaffe's ``caffe.NCCL(solver, uid)``: gradients of this process's solver all-reduced over the
    ``solver_count()`` processes that share ``uid`` (from :meth:`new_uid`), this one being ``solver_rank()``.

    Call :meth:`bcast` once to copy rank 0's weights to all, and ``solver.add_callback(nccl)`` so each
    iteration's gradients are summed (and divided by the count) before the update.
    """

    def __init__(self, solver, uid):
        from .errors import DeviceError

        if not has_nccl():
            raise DeviceError("caffelite.NCCL needs CuPy with NCCL support and a GPU")
        from . import backend
        from .parallel.nccl import NcclCommunicator, decode_unique_id

        if isinstance(uid, bytes):
            uid = uid.decode()
        if isinstance(uid, str):
            uid = decode_unique_id(uid)
        dev = backend.cupy_module().cuda.Device().id
        self.solver = solver
        self.comm = NcclCommunicator(solver_count(), solver_rank(), uid, dev)

    @staticmethod
    def new_uid():
        """A fresh NCCL unique id (bytes, as pycaffe's), to share with every process."""
        from .parallel.nccl import encode_unique_id, new_unique_id

        return encode_unique_id(new_unique_id()).encode()

    def bcast(self):
        """Broadcast rank 0's learnable params to every rank."""
        self.comm.broadcast([p.data for p in self.solver.learnable_params], root=0)

    def on_start(self):
        pass

    def on_gradients_ready(self):
        diffs = [p.diff for p in self.solver.learnable_params]
        self.comm.allreduce_sum(diffs)
        n = solver_count()
        if n > 1:
            for d in diffs:
                d /= n
