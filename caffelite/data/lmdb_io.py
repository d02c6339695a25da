"""LMDB databases of Datum records: reading in key order (as Caffe's cursor) and writing.

Readers open read-only without the lock file (``lock=False``): Caffe's fixtures ship without ``lock.mdb``
and a training run never writes its data. Each thread gets its own read transaction, so background
workers can fetch records concurrently.
"""

from __future__ import annotations

import os
import threading

from ..errors import FileFormatError
from .datum import parse_datum

__all__ = ["LMDBReader", "LMDBWriter", "is_lmdb"]


# python-lmdb refuses to open one environment twice in a process, yet a train and a test net (or two
# solvers) may read the same database: share one read-only environment per path, reference-counted.
# An entry is keyed by path and remembers the data file's identity, so a database rewritten at the same
# path (deleted and created again) gets a fresh environment instead of a stale map.
_ENVS: dict[str, list] = {}
_ENVS_LOCK = threading.Lock()
# Entries dropped by a reader's finalizer. A finalizer may run inside a section that holds _ENVS_LOCK (the
# garbage collector can fire on any allocation there, e.g. inside lmdb.open), so it must not take the lock:
# it queues the entry, and the next open or release under the lock settles it (list.append is atomic).
_PENDING: list = []


def _file_id(path: str):
    st = os.stat(os.path.join(path, "data.mdb"))
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _open_shared(path: str) -> list:
    import lmdb

    key = os.path.realpath(path)
    fid = _file_id(path)
    with _ENVS_LOCK:
        _drain_pending()
        entry = _ENVS.get(key)
        if entry is None or entry[2] != fid:
            try:
                env = lmdb.open(path, readonly=True, lock=False, readahead=False, max_readers=256, subdir=True)
            except lmdb.Error as e:
                raise FileFormatError(path, f"cannot open LMDB ({e})") from None
            entry = _ENVS[key] = [env, 0, fid, key]
        entry[1] += 1
        return entry


def _release_locked(entry: list) -> None:
    entry[1] -= 1
    if entry[1] <= 0:
        if _ENVS.get(entry[3]) is entry:
            del _ENVS[entry[3]]
        entry[0].close()


def _drain_pending() -> None:
    while _PENDING:
        _release_locked(_PENDING.pop())


def _release_shared(entry: list) -> None:
    with _ENVS_LOCK:
        _drain_pending()
        _release_locked(entry)


def is_lmdb(path) -> bool:
    """True if ``path`` is an LMDB environment directory (has ``data.mdb``)."""
    return os.path.isfile(os.path.join(str(path), "data.mdb"))


class LMDBReader:
    """Random and sequential access to an LMDB's records in key order.

    ``keys`` is the sorted key list (LMDB's order, which is Caffe's cursor order).
    """

    def __init__(self, path):
        self.path = str(path)
        if not os.path.isdir(self.path):
            raise FileFormatError(self.path, "LMDB directory does not exist")
        if not is_lmdb(self.path):
            raise FileFormatError(self.path, "not an LMDB (no data.mdb); only the LMDB backend is supported")
        self._entry = None
        self._entry = _open_shared(self.path)
        self.env = self._entry[0]
        with self.env.begin(buffers=False) as txn:
            self.keys = list(txn.cursor().iternext(keys=True, values=False))
        if not self.keys:
            self.close()
            raise FileFormatError(self.path, "LMDB has no records")
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.keys)

    def _txn(self):
        txn = getattr(self._local, "txn", None)
        if txn is None:
            txn = self._local.txn = self.env.begin(buffers=False)
        return txn

    def get(self, index: int) -> bytes:
        """Serialized record number ``index`` (0-based, key order)."""
        return self._txn().get(self.keys[index])

    def get_view(self, index: int):
        """Record ``index`` as a zero-copy buffer into the map, valid while this thread's reader is open."""
        txn = getattr(self._local, "vtxn", None)
        if txn is None:
            txn = self._local.vtxn = self.env.begin(buffers=True)
        return txn.get(self.keys[index])

    def datum(self, index: int):
        """Record ``index`` parsed as a Datum."""
        return parse_datum(self.get(index), f"{self.path} (key {self.keys[index].decode(errors='replace')})")

    def items(self):
        """Iterate ``(key, value_bytes)`` in key order."""
        with self.env.begin(buffers=False) as txn:
            yield from txn.cursor().iternext(keys=True, values=True)

    def close(self) -> None:
        """Release this reader (the shared environment closes with its last reader)."""
        if self._entry is not None:
            self._local = threading.local()
            _release_shared(self._entry)
            self._entry = None

    def __del__(self):
        # never take the lock here (see _PENDING): queue the release
        entry, self._entry = getattr(self, "_entry", None), None
        if entry is not None:
            _PENDING.append(entry)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LMDBWriter:
    """Write ``key → bytes`` records into a new LMDB, committing every ``commit_every`` puts.

    ``map_size`` is an upper bound on the file size (LMDB reserves address space only, 1 TiB like jacinto's 1e12).
    """

    def __init__(self, path, map_size=1 << 40, commit_every=1000):
        import lmdb

        self.path = str(path)
        os.makedirs(self.path, exist_ok=True)
        self.env = lmdb.open(self.path, map_size=map_size, subdir=True, meminit=False, map_async=True)
        self.commit_every = commit_every
        self._txn = self.env.begin(write=True)
        self._pending = 0
        self.count = 0

    def put(self, key, value: bytes) -> None:
        import lmdb

        if isinstance(key, str):
            key = key.encode()
        try:
            self._txn.put(key, value)
        except lmdb.MapFullError:
            self._txn.abort()
            raise FileFormatError(self.path, "LMDB map is full; increase map_size") from None
        self._pending += 1
        self.count += 1
        if self._pending >= self.commit_every:
            self._txn.commit()
            self._txn = self.env.begin(write=True)
            self._pending = 0

    def close(self) -> None:
        if self._txn is not None:
            self._txn.commit()
            self._txn = None
        self.env.sync()
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None and self._txn is not None:
            self._txn.abort()
            self._txn = None
        self.close()
