"""Record sources and the sequential cursor that data layers read them with.

A *source* maps a record index to ``(C×H×W array, label)``: :class:`LMDBSource` (Datum records, Caffe's
``Data``) and :class:`ListSource` (image files from a list, Caffe's ``ImageData``). A :class:`Cursor`
walks ``0..n-1`` in order, wrapping at the end with Caffe's log line, optionally in a shuffled order that is
reshuffled at each wrap (``ImageData``'s ``shuffle``). Its whole state is a small dict, saved in snapshots.
"""

from __future__ import annotations

import os

import numpy as np

from .. import log
from ..errors import FileFormatError
from .datum import datum_to_array, decode_image, raw_datum_view
from .lmdb_io import LMDBReader

__all__ = ["Cursor", "LMDBSource", "ListSource", "read_image_list", "load_image"]


class Cursor:
    """Sequential position over ``n`` records with wrap-around (and optional per-epoch shuffling)."""

    def __init__(self, n: int, shuffle_rng: np.random.Generator | None = None, start: int = 0):
        self.n = int(n)
        self.rng = shuffle_rng
        self.pos = int(start) % self.n
        self.order = self.rng.permutation(self.n) if self.rng is not None else None

    def take(self, k: int) -> list[int]:
        """The next ``k`` record indices, wrapping (and reshuffling) at the end as Caffe does."""
        out = []
        for _ in range(k):
            out.append(int(self.order[self.pos]) if self.order is not None else self.pos)
            self.pos += 1
            if self.pos >= self.n:
                self.pos = 0
                log.info("Restarting data prefetching from start.", src="data_layer.cpp:104")
                if self.rng is not None:
                    self.order = self.rng.permutation(self.n)
        return out

    def state(self) -> dict:
        st = {"pos": self.pos}
        if self.rng is not None:
            st["order"] = self.order.tolist()
            st["shuffle_rng"] = self.rng.bit_generator.state
        return st

    def set_state(self, st: dict) -> None:
        self.pos = int(st["pos"]) % self.n
        if self.rng is not None and "order" in st:
            self.order = np.asarray(st["order"], dtype=np.int64)
            self.rng.bit_generator.state = st["shuffle_rng"]


class LMDBSource:
    """Datum records of an LMDB, decoded to uint8 (or float) C×H×W arrays."""

    def __init__(self, path, force_color=False, force_gray=False):
        self.reader = LMDBReader(path)
        self.path = self.reader.path
        self.force_color, self.force_gray = force_color, force_gray

    def __len__(self) -> int:
        return len(self.reader)

    def name(self, i: int) -> str:
        return f"{self.path} key {self.reader.keys[i].decode(errors='replace')}"

    def get(self, i: int):
        """``(C×H×W array, label)`` of record ``i``; raw records are views into the map (no copy)."""
        fast = raw_datum_view(self.reader.get_view(i))  # None for encoded/float records
        if fast is not None:
            return fast
        d = self.reader.datum(i)
        return datum_to_array(d, self.force_color, self.force_gray, self.name(i)), int(d.label)


def read_image_list(path, with_labels=True) -> list[tuple[str, int]]:
    """Lines ``<path> <label>`` (Caffe splits at the last space) or plain paths when ``with_labels`` is False."""
    if not os.path.isfile(path):
        raise FileFormatError(path, "list file does not exist")
    out = []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if not with_labels:
                out.append((line, 0))
                continue
            name, sep, lab = line.rpartition(" ")
            if not sep:
                raise FileFormatError(path, "expected '<image path> <label>'", line=ln)
            try:
                out.append((name, int(lab)))
            except ValueError:
                raise FileFormatError(path, f"label {lab!r} is not an integer", line=ln) from None
    if not out:
        raise FileFormatError(path, "list file is empty")
    return out


def load_image(path, is_color=True) -> np.ndarray:
    """An image file as uint8 C×H×W, BGR (3 channels) or gray (1), as OpenCV's imread would give."""
    if not os.path.isfile(path):
        raise FileFormatError(path, "image file does not exist")
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data, force_color=is_color, force_gray=not is_color, source=path)


class ListSource:
    """Image files named in a list file (``ImageData``), optionally resized to ``new_h × new_w``."""

    def __init__(self, list_path, root_folder="", new_h=0, new_w=0, is_color=True):
        self.path = list_path
        self.lines = read_image_list(list_path)
        self.root = root_folder
        self.new_h, self.new_w = int(new_h), int(new_w)
        self.is_color = is_color

    def __len__(self) -> int:
        return len(self.lines)

    def name(self, i: int) -> str:
        return self.root + self.lines[i][0]  # Caffe concatenates root_folder and the listed path

    def get(self, i: int):
        from .imageops import resize_linear

        a = load_image(self.name(i), self.is_color)
        if self.new_h and self.new_w:
            a = resize_linear(a, self.new_h, self.new_w)
        return a, self.lines[i][1]
