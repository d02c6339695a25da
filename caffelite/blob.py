"""Blob: Caffe's N-d array pair (data and diff)."""

from __future__ import annotations

import math
import os

import numpy as np

from . import backend

#: the most bytes one blob array may take; None: the memory available when it is allocated
#: (``$CAFFELITE_MAX_BLOB_BYTES`` overrides that default). A prototxt whose shapes multiply to more is
#: refused with a NetError naming the layer, instead of NumPy's bare MemoryError or a swapping machine.
MAX_BYTES = None
ENV_MAX_BYTES = "CAFFELITE_MAX_BLOB_BYTES"
_CHECK_ABOVE = 1 << 24  # smaller blobs skip the check (finding the available memory reads /proc)


class BlobSizeError(ValueError):
    """A blob shape whose array would not fit the memory limit (:data:`MAX_BYTES`)."""


def _available_bytes():
    """Memory available to a new allocation now: MemAvailable on Linux, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # pragma: no cover - not a POSIX system
        return None


def byte_limit():
    """(limit in bytes or None, where it comes from) for one blob array."""
    if MAX_BYTES is not None:
        return int(MAX_BYTES), "caffelite.blob.MAX_BYTES"
    env = os.environ.get(ENV_MAX_BYTES)
    if env:
        try:
            return int(float(env)), f"${ENV_MAX_BYTES}"
        except ValueError:
            raise BlobSizeError(f"${ENV_MAX_BYTES} must be a number of bytes, not {env!r}") from None
    return _available_bytes(), f"the memory available (set ${ENV_MAX_BYTES} to change the limit)"


def _gib(n):
    return f"{n / (1 << 30):.3g} GiB"


def check_size(shape, dtype) -> None:
    """Raise :class:`BlobSizeError` when an array of ``shape`` and ``dtype`` exceeds :func:`byte_limit`."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no int64 overflow on absurd shapes
    if nbytes <= _CHECK_ABOVE and MAX_BYTES is None and not os.environ.get(ENV_MAX_BYTES):
        return
    limit, source = byte_limit()
    if limit is not None and nbytes > limit:
        raise BlobSizeError(f"blob shape {tuple(shape)} needs {nbytes} bytes ({_gib(nbytes)}), more than the "
                            f"{limit} bytes ({_gib(limit)}) of {source}")


class Blob:
    """A named pair of arrays, ``data`` and ``diff``, of one shape, dtype and array module.

    In-place layers share a Blob object; split layers share ``data`` via :meth:`share_data`.
    """

    __slots__ = ("_data", "_diff", "_shape", "dtype", "xp")

    def __init__(self, shape=(), dtype=np.float32, xp=None):
        self.xp = xp or backend.current_xp()
        self.dtype = np.dtype(dtype)
        self._shape = None
        self._data = None
        self._diff = None
        self.reshape(shape)

    # -- shape -------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self._shape

    @property
    def count(self) -> int:
        return int(np.prod(self._shape, dtype=np.int64)) if self._shape else 1

    @property
    def num_axes(self) -> int:
        return len(self._shape)

    def _legacy(self, index) -> int:
        # Caffe's LegacyShape: the 4-D view of a blob of at most 4 axes, missing axes are 1
        if len(self._shape) > 4:
            raise ValueError(f"num/channels/height/width need a blob of at most 4 axes, shape is {self._shape}")
        return self._shape[index] if index < len(self._shape) else 1

    # pycaffe's legacy accessors, so scripts written for caffe keep working
    num = property(lambda self: self._legacy(0), doc="Axis 0 (pycaffe's ``num``).")
    channels = property(lambda self: self._legacy(1), doc="Axis 1 (pycaffe's ``channels``).")
    height = property(lambda self: self._legacy(2), doc="Axis 2 (pycaffe's ``height``).")
    width = property(lambda self: self._legacy(3), doc="Axis 3 (pycaffe's ``width``).")

    def reshape(self, *shape) -> None:
        """Change the shape; arrays are reallocated (zeros) only when the shape changes."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"blob shape {shape} has a negative dimension")
        if shape == self._shape:
            return
        check_size(shape, self.dtype)
        self._shape = shape
        self._data = self.xp.zeros(shape, dtype=self.dtype)
        self._diff = None  # allocated on first use: inference never needs diffs

    def reshape_like(self, other: Blob) -> None:
        self.reshape(other.shape)

    # -- arrays ------------------------------------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        value = self.xp.asarray(value, dtype=self.dtype)
        if value.shape != self._shape:
            if value.size == self.count:
                value = value.reshape(self._shape)
            else:
                raise ValueError(f"cannot assign an array of shape {value.shape} to a blob of shape {self._shape}")
        self._data[...] = value

    @property
    def diff(self):
        if self._diff is None or self._diff.shape != self._shape:
            self._diff = self.xp.zeros(self._shape, dtype=self.dtype)
        return self._diff

    @diff.setter
    def diff(self, value):
        d = self.diff
        d[...] = self.xp.asarray(value, dtype=self.dtype).reshape(self._shape)

    def set_data_array(self, arr) -> None:
        """Replace the data array object itself (no copy). ``arr`` must have this blob's shape."""
        self._shape = tuple(arr.shape)
        self._data = arr

    def set_diff_array(self, arr) -> None:
        """Replace the diff array object itself (no copy)."""
        self._diff = arr

    def share_data(self, other: Blob) -> None:
        """Make this blob's data the very array of ``other`` (Caffe's ShareData)."""
        self._shape = other.shape
        self._data = other._data

    def share_diff(self, other: Blob) -> None:
        """Make this blob's diff the very array of ``other`` (Caffe's ShareDiff)."""
        self._diff = other.diff

    def __repr__(self) -> str:
        return f"Blob(shape={self._shape}, dtype={self.dtype.name})"
