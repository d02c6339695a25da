"""Paired image/label LMDBs for segmentation (docs/jacinto-spec.md §g.2), and a pair validator.

* :func:`create_segmentation_lmdbs`: read both lists, check they pair up, shuffle both with one legacy
  ``np.random.seed(1)`` permutation (jacinto's ``np.random.shuffle`` on equal-length lists), write raw
  uint8 Datums (images BGR 3×H×W, labels 1×H×W, no label field) under keys ``%010d``.
* :func:`validate_segmentation_lmdbs`: same record count, same H×W per pair, 3-channel images, 1-channel
  labels (optionally label values < num_classes or 255).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..data import DatasetError
from ..data.datum import array_to_datum, datum_to_array
from ..data.imageops import resize_lanczos_pil, resize_nearest_pil
from ..data.lmdb_io import LMDBReader, LMDBWriter
from ..data.reader import load_image, read_image_list

__all__ = ["create_segmentation_lmdbs", "validate_segmentation_lmdbs", "pair_key"]

_SUFFIXES = ("_leftImg8bit", "_gtFine_labelIds", "_labelIds", "_label", "_image")


def pair_key(path: str) -> str:
    """The frame name shared by an image and its label file (Cityscapes suffixes removed)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    for s in _SUFFIXES:
        if stem.endswith(s):
            return stem[: -len(s)]
    return stem


def _bounded_map(ex, fn, items, window):
    """``ex.map`` in order with at most ``window`` results in flight (full-size records are ~8 MB each)."""
    import collections

    pending = collections.deque()
    for x in items:
        pending.append(ex.submit(fn, x))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _read_list(path: str) -> list[str]:
    return [p for p, _ in read_image_list(path, with_labels=False)]


def _load_pair_lists(image_list: str, label_list: str):
    imgs, labs = _read_list(image_list), _read_list(label_list)
    if len(imgs) != len(labs):
        raise DatasetError(f"{image_list} has {len(imgs)} lines but {label_list} has {len(labs)}")
    for n, (a, b) in enumerate(zip(imgs, labs, strict=True), 1):
        if pair_key(a) != pair_key(b):
            raise DatasetError(f"{label_list}:{n}: label {b} does not match image {a} (line {n} of {image_list})")
    return imgs, labs


def _image_record(path: str, size):
    a = load_image(path, is_color=True)
    if size:
        a = resize_lanczos_pil(a, size[1], size[0])
    return array_to_datum(a).SerializeToString(), a.shape


def _label_record(path: str, size, num_classes):
    from PIL import Image

    if not os.path.isfile(path):
        raise DatasetError(f"{path}: label file does not exist")
    with Image.open(path) as im:
        a = np.asarray(im)
    if a.ndim == 3:
        a = a[..., 0]
    a = np.ascontiguousarray(a, dtype=np.uint8)
    if num_classes:
        bad = (a >= num_classes) & (a != 255)
        if bad.any():
            raise DatasetError(f"{path}: label id {int(a[bad][0])} is outside 0..{num_classes - 1} and not 255")
    if size:
        a = resize_nearest_pil(a, size[1], size[0])
    return array_to_datum(a[None]).SerializeToString(), (1,) + a.shape


def create_segmentation_lmdbs(image_list, label_list, image_lmdb, label_lmdb, seed=1, shuffle=True,
                              size=None, num_classes=None, workers=None, progress=False) -> int:
    """Write paired image and label LMDBs from two list files; returns the number of records.

    ``size`` = (W, H) resizes images (Lanczos) and labels (nearest); None keeps the original size.
    """
    imgs, labs = _load_pair_lists(image_list, label_list)
    order = np.arange(len(imgs))
    if shuffle:
        order = np.random.RandomState(seed).permutation(len(imgs))  # = np.random.seed(s); shuffle(list)
    nw = workers or min(8, os.cpu_count() or 2)
    with LMDBWriter(image_lmdb) as wi, LMDBWriter(label_lmdb) as wl, ThreadPoolExecutor(nw) as ex:
        it = _bounded_map(ex, lambda src: (_image_record(imgs[src], size), _label_record(labs[src], size, num_classes)),
                          order, 2 * nw)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=len(order), desc=os.path.basename(str(image_lmdb)))
        for n, (src, ((ibuf, ishape), (lbuf, lshape))) in enumerate(zip(order, it, strict=True)):
            if ishape[1:] != lshape[1:]:
                raise DatasetError(f"{labs[src]}: label is {lshape[1]}x{lshape[2]} but image {imgs[src]} is "
                                   f"{ishape[1]}x{ishape[2]}")
            key = f"{n:010d}"
            wi.put(key, ibuf)
            wl.put(key, lbuf)
    return len(order)


def validate_segmentation_lmdbs(image_lmdb, label_lmdb, num_classes=None) -> dict:
    """Check image/label pairing and shapes; returns a summary, raises DatasetError naming the record."""
    # the first reader is closed even when opening the second one fails
    with LMDBReader(image_lmdb) as ri, LMDBReader(label_lmdb) as rl:
        if len(ri) != len(rl):
            raise DatasetError(f"{image_lmdb} has {len(ri)} records but {label_lmdb} has {len(rl)}")
        shapes = set()
        hist = np.zeros(256, dtype=np.int64)
        for i in range(len(ri)):
            if ri.keys[i] != rl.keys[i]:
                raise DatasetError(f"{label_lmdb}: key {rl.keys[i].decode()} pairs with image key "
                                   f"{ri.keys[i].decode()} in {image_lmdb}")
            a = datum_to_array(ri.datum(i), source=image_lmdb)
            b = datum_to_array(rl.datum(i), source=label_lmdb)
            key = ri.keys[i].decode()
            if a.shape[0] != 3:
                raise DatasetError(f"{image_lmdb}: record {key} has {a.shape[0]} channels, expected 3")
            if b.shape[0] != 1:
                raise DatasetError(f"{label_lmdb}: record {key} has {b.shape[0]} channels, expected 1")
            if a.shape[1:] != b.shape[1:]:
                raise DatasetError(f"{label_lmdb}: record {key} is {b.shape[1]}x{b.shape[2]} but the image "
                                   f"record in {image_lmdb} is {a.shape[1]}x{a.shape[2]}")
            shapes.add(a.shape)
            hist += np.bincount(b.ravel(), minlength=256)
        if num_classes:
            bad = np.flatnonzero(hist[num_classes:255])
            if bad.size:
                raise DatasetError(f"{label_lmdb}: label id {int(bad[0]) + num_classes} is outside "
                                   f"0..{num_classes - 1} and not 255")
        return {"records": len(ri), "shapes": sorted(shapes),
                "label_counts": {int(k): int(hist[k]) for k in np.flatnonzero(hist)}}
