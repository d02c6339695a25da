"""Building LMDBs from image lists: BVLC's convert_imageset.

* :func:`convert_imageset`: ``<path> <label>`` list, keys ``%08d_<path>``, optional ``--encoded`` (original
  file bytes when no resize), ``--resize_height/width`` (OpenCV bilinear), ``--gray``, ``--shuffle``.
"""

from __future__ import annotations

import os

import numpy as np

from . import DatasetError
from .datum import array_to_datum, encode_image
from .lmdb_io import LMDBWriter
from .reader import load_image, read_image_list

__all__ = ["convert_imageset"]


def convert_imageset(root_folder, list_file, out_lmdb, encoded=False, encode_type="", resize_height=0,
                     resize_width=0, gray=False, shuffle=False, seed=0, check_size=False) -> int:
    """BVLC's convert_imageset: Datum records (raw BGR C×H×W or encoded bytes) keyed ``%08d_<path>``."""
    from .imageops import resize_linear

    lines = read_image_list(list_file)
    if shuffle:
        lines = [lines[i] for i in np.random.default_rng(seed).permutation(len(lines))]
    resize = resize_height > 0 and resize_width > 0
    first_shape = None
    with LMDBWriter(out_lmdb) as w:
        for n, (name, label) in enumerate(lines):
            path = root_folder + name  # Caffe concatenates root_folder and the listed name
            ext = (encode_type or os.path.splitext(name)[1][1:]).lower()
            if encoded and not resize and (not encode_type or ext == os.path.splitext(name)[1][1:].lower()):
                if not os.path.isfile(path):
                    raise DatasetError(f"{path}: image file does not exist (listed in {list_file})")
                with open(path, "rb") as f:  # the file's own bytes, as Caffe stores them
                    d = array_to_datum(None, label, encoded_bytes=f.read())
            else:
                a = load_image(path, is_color=not gray)
                if resize:
                    a = resize_linear(a, resize_height, resize_width)
                if check_size:
                    if first_shape is None:
                        first_shape = a.shape
                    elif a.shape != first_shape:
                        raise DatasetError(f"{path}: size {a.shape} differs from the first image's {first_shape}")
                if encoded:
                    fmt = {"jpg": "JPEG", "jpeg": "JPEG"}.get(ext, ext.upper() or "PNG")
                    d = array_to_datum(None, label, encoded_bytes=encode_image(a, fmt))
                else:
                    d = array_to_datum(a, label)
            w.put(f"{n:08d}_{name}", d.SerializeToString())
    return len(lines)
