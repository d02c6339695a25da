"""Cityscapes lists and the 34-id → 5-class label mapping (caffe-jacinto-models' create_cityscapes_lists.sh,
docs/jacinto-spec.md §g.1).

:func:`create_lists` writes ``<out>/{split}-image-list.txt``, converts every
``gtFine/<split>/<city>/*_gtFine_labelIds.png`` through the 5-class table into
``<out>/{split}-label-folder/`` (8-bit grayscale PNGs, same basenames) and writes
``<out>/{split}-label-list.txt``. Lists are sorted, so line i of both lists is the same frame; every image
must have its label, and a label id outside the table is an error naming the file.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..data import DatasetError
from ..io.files import atomic_write, save_png

__all__ = ["LABEL_MAP_5", "PALETTE_5", "CLASS_NAMES_5", "label_lut", "map_labels", "create_lists",
           "image_label_pairs", "DatasetError"]

IGNORE = 255

#: labelIds → 5 classes (§g.1): 255 ignore, 0 background, 1 road, 2 person/two-wheeler, 3 road sign, 4 vehicle
LABEL_MAP_5 = {
    **{i: IGNORE for i in (0, 2, 3, 255)},
    **{i: 0 for i in (1, 4, 5, 6, 8, 9, 10, *range(11, 19), 21, 22, 23)},
    7: 1,
    **{i: 2 for i in (24, 25, 32, 33)},
    19: 3, 20: 3,
    **{i: 4 for i in (26, 27, 28, 29, 30, 31)},
}

CLASS_NAMES_5 = ("background", "road", "person/two-wheeler", "road sign", "vehicle")

#: the 5-class palette (RGB) of infer_cityscapes_segmentation.sh (§g.3); other ids are black
PALETTE_5 = np.zeros((256, 3), dtype=np.uint8)
PALETTE_5[:5] = [(0, 0, 0), (128, 64, 128), (220, 20, 60), (250, 170, 30), (0, 0, 142)]


def label_lut(mapping=None) -> tuple[np.ndarray, np.ndarray]:
    """A 256-entry uint8 LUT (identity outside the table) and a bool mask of the ids the table knows."""
    mapping = LABEL_MAP_5 if mapping is None else mapping
    lut = np.arange(256, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    for k, v in mapping.items():
        lut[int(k)] = int(v)
        known[int(k)] = True
    return lut, known


def map_labels(arr, mapping=None, source=None, strict=True) -> np.ndarray:
    """Apply the label table to a uint8 label map; with ``strict`` an id outside the table is an error."""
    lut, known = label_lut(mapping)
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 255):
            raise DatasetError(f"{source or '<labels>'}: label values outside 0..255")
        a = a.astype(np.uint8)
    if strict:
        present = np.bincount(a.ravel(), minlength=256) > 0
        bad = np.flatnonzero(present & ~known)
        if bad.size:
            raise DatasetError(f"{source or '<labels>'}: label id {int(bad[0])} is not in the label table "
                               f"(known ids: {sorted(int(i) for i in np.flatnonzero(known))})")
    return lut[a]


def _find_pngs(folder: str) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(folder):
        out.extend(os.path.join(dirpath, f) for f in files if f.endswith(".png"))
    return sorted(out)


def _frame_id(path: str, suffix: str) -> str:
    base = os.path.basename(path)
    return base[: -len(suffix)] if base.endswith(suffix) else os.path.splitext(base)[0]


def image_label_pairs(root: str, split: str) -> list[tuple[str, str]]:
    """Sorted (image, labelIds) path pairs of one split; errors name a missing folder or label file."""
    for sub in ("leftImg8bit", "gtFine"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise DatasetError(f"{os.path.join(root, sub)}: missing; a Cityscapes root needs leftImg8bit/ and gtFine/")
    img_dir = os.path.join(root, "leftImg8bit", split)
    if not os.path.isdir(img_dir):
        raise DatasetError(f"{img_dir}: missing split folder")
    pairs = []
    for img in _find_pngs(img_dir):
        rel = os.path.relpath(os.path.dirname(img), img_dir)
        frame = _frame_id(img, "_leftImg8bit.png")
        lab = os.path.join(root, "gtFine", split, rel, frame + "_gtFine_labelIds.png")
        if not os.path.isfile(lab):
            raise DatasetError(f"{lab}: label file missing for image {img}")
        pairs.append((img, lab))
    if not pairs:
        raise DatasetError(f"{img_dir}: no PNG images found")
    return pairs


def _convert_label(src: str, dst: str, mapping) -> None:
    from PIL import Image

    with Image.open(src) as im:
        a = np.asarray(im)
    if a.ndim == 3:  # a colour-saved label map: ids are in the first channel
        a = a[..., 0]
    save_png(Image.fromarray(map_labels(a, mapping, source=src), "L"), dst)


def create_lists(root: str, out_dir: str, splits=("train", "val"), mapping=None, workers=None,
                 progress=False) -> dict:
    """Write the image/label lists and the converted label folders; returns {split: (image_list, label_list)}."""
    os.makedirs(out_dir, exist_ok=True)
    result = {}
    for split in splits:
        pairs = image_label_pairs(root, split)
        folder = os.path.join(out_dir, f"{split}-label-folder")
        os.makedirs(folder, exist_ok=True)
        dsts = [os.path.join(folder, os.path.basename(lab)) for _, lab in pairs]
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 2)) as ex:
            jobs = ex.map(_convert_label, [lab for _, lab in pairs], dsts, [mapping] * len(pairs))
            if progress:
                from tqdm import tqdm
                jobs = tqdm(jobs, total=len(pairs), desc=f"{split} labels")
            for _ in jobs:
                pass
        img_list = os.path.join(out_dir, f"{split}-image-list.txt")
        lab_list = os.path.join(out_dir, f"{split}-label-list.txt")
        atomic_write(img_list, "".join(os.path.abspath(img) + "\n" for img, _ in pairs))
        atomic_write(lab_list, "".join(os.path.abspath(d) + "\n" for d in dsts))
        result[split] = (img_list, lab_list)
    return result
