"""Datasets: Cityscapes lists, image/label LMDBs (+ validation), synthetic Cityscapes, convert_imageset.

Subcommands::

    caffelite data cityscapes-lists --root CITYSCAPES --out data
    caffelite data lmdb --image-list data/train-image-list.txt --label-list data/train-label-list.txt \\
        --image-lmdb data/train-image-lmdb --label-lmdb data/train-label-lmdb [--seed 1] [--resize WxH]
    caffelite data validate --image-lmdb A --label-lmdb B [--num-classes 5]
    caffelite data synthetic-cityscapes --out DIR --train N --val M --size WxH [--seed S]
    caffelite data convert-imageset ROOT/ LIST DB [--encoded] [--resize_height H --resize_width W] [--gray] [--shuffle]
"""

from __future__ import annotations

import sys
import time

from ..segmentation.sizes import parse_size
from ..errors import CaffeliteError


def add_arguments(parser):
    sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sub.required = True

    p = sub.add_parser("cityscapes-lists", help="image/label lists + 5-class label PNGs from a Cityscapes root")
    p.add_argument("--root", required=True, help="Cityscapes root with leftImg8bit/ and gtFine/")
    p.add_argument("--out", default="data", help="output folder (lists and label folders)")
    p.add_argument("--splits", default="train,val", help="comma-separated splits")
    p.set_defaults(_data=_lists)

    p = sub.add_parser("lmdb", help="paired image and label LMDBs from two list files")
    p.add_argument("--image-list", required=True)
    p.add_argument("--label-list", required=True)
    p.add_argument("--image-lmdb", required=True)
    p.add_argument("--label-lmdb", required=True)
    p.add_argument("--seed", type=int, default=1, help="shuffle seed (jacinto: --rand_seed 1)")
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--resize", default="", help="WxH (default: keep the original size)")
    p.add_argument("--num-classes", type=int, default=0, help="check label ids < N or 255")
    p.set_defaults(_data=_lmdb)

    p = sub.add_parser("validate", help="check an image/label LMDB pair")
    p.add_argument("--image-lmdb", required=True)
    p.add_argument("--label-lmdb", required=True)
    p.add_argument("--num-classes", type=int, default=0)
    p.set_defaults(_data=_validate)

    p = sub.add_parser("synthetic-cityscapes", help="generate a Cityscapes-like synthetic dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=40)
    p.add_argument("--val", type=int, default=10)
    p.add_argument("--size", default="512x256", help="WxH")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(_data=_synthetic)

    p = sub.add_parser("convert-imageset", help="BVLC convert_imageset: list of images -> Datum LMDB")
    p.add_argument("root_folder")
    p.add_argument("listfile")
    p.add_argument("db_name")
    p.add_argument("--encoded", action="store_true")
    p.add_argument("--encode_type", default="")
    p.add_argument("--resize_height", type=int, default=0)
    p.add_argument("--resize_width", type=int, default=0)
    p.add_argument("--gray", action="store_true")
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check_size", action="store_true")
    p.add_argument("--backend", default="lmdb", choices=["lmdb"])
    p.set_defaults(_data=_convert)


def _tty():
    return sys.stderr.isatty()


def _lists(a):
    from ..segmentation.cityscapes import create_lists

    res = create_lists(a.root, a.out, [s for s in a.splits.split(",") if s], progress=_tty())
    for split, (il, ll) in res.items():
        with open(il) as f:
            n = sum(1 for _ in f)
        print(f"{split}: {n} images -> {il}, {ll}")
    return 0


def _lmdb(a):
    from ..segmentation.lmdbs import create_segmentation_lmdbs

    t = time.time()
    n = create_segmentation_lmdbs(a.image_list, a.label_list, a.image_lmdb, a.label_lmdb, seed=a.seed,
                                  shuffle=not a.no_shuffle, size=parse_size(a.resize),
                                  num_classes=a.num_classes or None, progress=_tty())
    print(f"wrote {n} records to {a.image_lmdb} and {a.label_lmdb} in {time.time() - t:.1f}s")
    return 0


def _validate(a):
    from ..segmentation.lmdbs import validate_segmentation_lmdbs

    s = validate_segmentation_lmdbs(a.image_lmdb, a.label_lmdb, a.num_classes or None)
    shapes = ", ".join("x".join(str(v) for v in sh) for sh in s["shapes"])
    print(f"OK: {s['records']} pairs, image shapes {shapes}, label counts {s['label_counts']}")
    return 0


def _synthetic(a):
    from ..segmentation.synthetic import generate_dataset

    size = parse_size(a.size)
    if size is None:
        raise CaffeliteError("--size must be WxH")
    t = time.time()
    c = generate_dataset(a.out, a.train, a.val, size, a.seed, progress=_tty())
    print(f"wrote {c['train']} train and {c['val']} val images ({size[0]}x{size[1]}) to {a.out} "
          f"in {time.time() - t:.1f}s")
    return 0


def _convert(a):
    from ..data.lmdb_tools import convert_imageset

    n = convert_imageset(a.root_folder, a.listfile, a.db_name, a.encoded, a.encode_type, a.resize_height,
                         a.resize_width, a.gray, a.shuffle, a.seed, a.check_size)
    print(f"Processed {n} files.")
    return 0


def run(args) -> int:
    return args._data(args)
