"""How a data-parallel run shares the batch and the data between replicas (docs/jacinto-spec.md §c.3, §e.1).

* :func:`batch_per_device` — NVCaffe's rule: the per-net batch is ``ceil_to_multiple(batch, n) / n``
  (16 on 3 GPUs → 6 each, an effective 18, logged as a warning).
* :func:`divide_batch_sizes` — applies it to every reading data layer of a NetParameter before the net is
  built (Data, ImageData, ImageLabelData, and the HDF5/Memory/Window readers when present).
* :func:`shard_data_layers` — each replica reads an interleaved, disjoint subset of the batches: replica
  ``r`` of ``n`` takes batch ``r``, ``r + n``, ``r + 2n``… of the stream one reader would produce with
  batches of the per-device size. One step of ``n`` replicas therefore consumes exactly the records a single
  process with the ``n``-times batch would, which is what makes the 2-process run equal the 1-process run.
"""

from __future__ import annotations

import numpy as np

from .. import log as glog

__all__ = ["batch_per_device", "divide_batch_sizes", "shard_data_layers", "InterleavedCursor"]

#: LayerParameter sub-messages whose ``batch_size`` is a per-net batch that NVCaffe divides among GPUs
BATCH_FIELDS = ("data_param", "image_data_param", "image_label_data_param", "memory_data_param",
                "window_data_param", "hdf5_data_param")


def batch_per_device(batch_size: int, n: int) -> int:
    """``ceil_to_multiple(batch_size, n) / n`` (CJ17 parallel.cpp batch_per_gpu)."""
    batch_size, n = int(batch_size), int(n)
    if n <= 1:
        return batch_size
    return -(-batch_size // n)


def divide_batch_sizes(net_param, n: int, what: str = "net") -> list[tuple[str, int, int]]:
    """Divide every reader's ``batch_size`` in ``net_param`` (in place) for ``n`` devices.

    Returns ``[(layer name, old, new)]``; a warning is logged when the effective batch grows."""
    changed = []
    if n <= 1:
        return changed
    for lp in net_param.layer:
        for field in BATCH_FIELDS:
            if not _has(lp, field):
                continue
            sub = getattr(lp, field)
            if not _has(sub, "batch_size") or not sub.batch_size:
                continue
            old = int(sub.batch_size)
            new = batch_per_device(old, n)
            sub.batch_size = new
            changed.append((lp.name, old, new))
            if new * n != old:
                glog.warning(f"Batch size of {what} layer '{lp.name}' ({old}) is not a multiple of {n} devices: "
                             f"using {new} per device, effective batch {new * n}", "parallel.cpp:102")
    return changed


def _has(msg, field):
    try:
        return msg.HasField(field)
    except ValueError:  # not a field of this message in this schema
        return False


class InterleavedCursor:
    """Wraps a data layer's Cursor so replica ``rank`` of ``size`` gets every ``size``-th batch.

    Each ``take(k)`` skips ``rank * k`` records, takes ``k`` and skips the remaining ``(size - rank - 1) * k``,
    so the wrapped position advances by ``size * k`` on every replica alike: its ``state()`` is the same
    everywhere and a snapshot taken by the root resumes every replica correctly."""

    def __init__(self, inner, rank: int, size: int):
        self.inner, self.rank, self.size = inner, int(rank), int(size)

    def take(self, k: int) -> list[int]:
        """This replica's ``k`` record indices of the next ``size * k``."""
        idx = self.inner.take(self.size * int(k))
        return idx[self.rank * k:(self.rank + 1) * k]

    def state(self) -> dict:
        return self.inner.state()

    def set_state(self, st: dict) -> None:
        self.inner.set_state(st)

    def __getattr__(self, name):
        if name == "inner":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def shard_data_layers(net, rank: int, size: int) -> int:
    """Make every prefetching data layer of ``net`` read this replica's interleaved share; returns how many.

    The layers (caffelite/layers/data.py) plan their batches from ``self.cursor``; the wrapper is installed
    and the prefetcher restarted from the layer's initial state, so no batch planned before is used.
    Replicas other than the root also get their own augmentation random stream (mirror/crop draws)."""
    count = 0
    if size <= 1:
        return count
    for layer in getattr(net, "layers", []) or []:
        cursor = getattr(layer, "cursor", None)
        if cursor is None or not hasattr(cursor, "take") or isinstance(cursor, InterleavedCursor):
            continue
        if not (hasattr(layer, "get_reader_state") and hasattr(layer, "set_reader_state")):
            continue
        state = layer.get_reader_state()
        layer.cursor = InterleavedCursor(cursor, rank, size)
        if rank and "rng" in state:
            # a different but reproducible augmentation stream per replica, derived from the shared one
            g = np.random.default_rng()
            g.bit_generator.state = state["rng"]
            state["rng"] = np.random.default_rng([int(g.integers(2**62)), rank]).bit_generator.state
        layer.set_reader_state(state)
        count += 1
    return count
