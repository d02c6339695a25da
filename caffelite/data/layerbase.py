"""The common machinery of prefetching data layers: plan/work split, pending batch, reader state.

A subclass implements ``_plan_task()`` (cheap, ordered: which records and which random draws) and
``_work(task)`` (heavy: returns a tuple of arrays, one per top), plus ``_state()``/``_restore(state)`` for
its cursors. The layer draws its randomness from its own generator, seeded once from
:func:`caffelite.backend.rng` (or ``transform_param.random_seed``), so background work never perturbs the
global random stream and a resumed run replays the same crops and mirrors.
"""

from __future__ import annotations

import copy
import threading

import numpy as np

from .. import backend, log
from ..layer import Layer
from .prefetch import Prefetcher

__all__ = ["PrefetchingDataLayer"]


class PrefetchingDataLayer(Layer):
    """Base of Data / ImageData / ImageLabelData: no bottoms, tops filled from a background prefetcher."""

    exact_num_bottom = 0
    #: batches decoded ahead of the net
    prefetch_depth = 3

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    # -- to implement ------------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _plan_task(self):
        raise NotImplementedError

    def _work(self, task):
        raise NotImplementedError

    def _state(self) -> dict:
        raise NotImplementedError

    def _restore(self, state: dict) -> None:
        raise NotImplementedError

    def _workers(self) -> int | None:
        return None

    # -- contract ----------------------------------------------------------------------------------
    def _seed_rng(self, seed=-1) -> None:
        if seed is not None and seed >= 0:
            self.rng = np.random.default_rng(int(seed))
        else:
            self.rng = np.random.default_rng(int(backend.rng().integers(0, 2**63)))

    def buffer(self, shape, dtype=np.float32) -> np.ndarray:
        """A batch array from the free list (recycled after each forward): fresh 40 MB arrays would cost
        ~10k page faults per batch, more than the crop itself."""
        shape = tuple(shape)
        with self._free_lock:
            lst = self._free.get((shape, np.dtype(dtype)))
            if lst:
                return lst.pop()
        return np.empty(shape, dtype)

    def _recycle(self, arrays) -> None:
        with self._free_lock:
            for a in arrays:
                if isinstance(a, np.ndarray) and a.nbytes >= 1 << 16:
                    lst = self._free.setdefault((a.shape, a.dtype), [])
                    if len(lst) < self.prefetch_depth + 2:
                        lst.append(a)

    def setup(self, bottom, top):
        self._free, self._free_lock = {}, threading.Lock()
        self._pending = None
        self._prefetcher = None
        self._open()
        self._consumed = self._full_state()
        self._prefetcher = Prefetcher(self._plan, self._work, self.prefetch_depth, self._workers())
        self._take_pending()
        shape = self._pending[0].shape
        log.info("output data size: " + ",".join(str(s) for s in shape), src="data_layer.cpp:45")
        self.reshape(bottom, top)

    def _full_state(self) -> dict:
        st = self._state()
        st["rng"] = self.rng.bit_generator.state
        return copy.deepcopy(st)

    def _plan(self):
        task = self._plan_task()
        return task, self._full_state()

    def _take_pending(self) -> None:
        if self._pending is None:
            self._pending, self._pending_state = self._prefetcher.next()

    def reshape(self, bottom, top):
        self._take_pending()
        for t, arr in zip(top, self._pending, strict=False):
            t.reshape(arr.shape)

    def forward(self, bottom, top):
        self._take_pending()
        for t, arr in zip(top, self._pending, strict=False):
            t.reshape(arr.shape)
            t.data[...] = t.xp.asarray(arr)
        self._consumed = self._pending_state
        self._recycle(self._pending)
        self._pending = None

    def backward(self, top, propagate_down, bottom):
        """Data layers have no bottoms: nothing to propagate."""

    # -- reader state (saved in snapshots) ---------------------------------------------------------
    def get_reader_state(self) -> dict:
        """The reader position and random state after the last batch the net consumed (picklable)."""
        return copy.deepcopy(self._consumed)

    def set_reader_state(self, state: dict) -> None:
        """Continue from a state returned by :meth:`get_reader_state` (drops batches in flight)."""
        if self._prefetcher is not None:
            self._prefetcher.reset()
        st = copy.deepcopy(state)
        self.rng.bit_generator.state = st.pop("rng")
        self._restore(st)
        self._consumed = copy.deepcopy(state)
        self._pending = None

    def close(self) -> None:
        """Stop the background workers."""
        if self._prefetcher is not None:
            self._prefetcher.close()
