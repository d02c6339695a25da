"""Ordered background prefetching: the net never waits on decoding, and the order never depends on timing.

A data layer splits each batch into a cheap *plan* (which records, which random draws) made in the calling
thread, strictly in order, and the expensive *work* (reading, decoding, cropping, converting) run by a pool
of worker threads. Batches come back in plan order. Each plan carries the reader state *after* it, so the
state of the last consumed batch is exact however far the workers ran ahead; that state is what a snapshot
stores, and restoring it discards the queue and plans again from there.

NumPy, LMDB reads and Pillow decoding release the GIL for their heavy loops, so threads scale well here.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor

__all__ = ["Prefetcher", "default_workers"]


def default_workers() -> int:
    """Worker threads used when a layer does not say: up to 4, leaving a core for the net."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class Prefetcher:
    """Keep ``depth`` batches in flight.

    ``plan()`` returns ``(task, state_after)`` and runs in the caller's thread; ``work(task)`` returns the
    batch and runs in a worker (or inline when ``workers == 0``).
    """

    def __init__(self, plan, work, depth=3, workers=None):
        self._plan = plan
        self._work = work
        self.depth = max(1, int(depth))
        self.workers = default_workers() if workers is None else int(workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="caffelite-data") if self.workers else None
        self._queue = collections.deque()

    def _fill(self) -> None:
        if self._pool is None:
            return
        while len(self._queue) < self.depth:
            task, state = self._plan()
            self._queue.append((self._pool.submit(self._work, task), state))

    def next(self):
        """The next batch in order and the reader state after it."""
        if self._pool is None:
            task, state = self._plan()
            return self._work(task), state
        self._fill()
        fut, state = self._queue.popleft()
        result = fut.result()  # re-raises a worker's error here, in order
        self._fill()
        return result, state

    def reset(self) -> None:
        """Drop batches in flight (after which the caller rewinds its planning state)."""
        while self._queue:
            fut, _ = self._queue.popleft()
            if not fut.cancel():
                try:
                    fut.result()
                except Exception:  # a dropped batch's error does not matter any more
                    pass

    def close(self) -> None:
        self.reset()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
        except Exception:
            pass
