"""Turn a Caffe/NVCaffe/caffe-jacinto/caffelite training log into train and test CSV tables.

``caffelite parse-log LOG [OUTPUT_DIR]`` writes ``<log name>.train`` and ``<log name>.test`` (the names BVLC's
``tools/extra/parse_log.py`` uses) into OUTPUT_DIR (default: the current directory); ``-`` prints both.
"""

from __future__ import annotations

import os
import sys

from ..errors import CaffeliteError


def add_arguments(p):
    p.add_argument("logfile_path", help="the training log")
    p.add_argument("output_dir", nargs="?", default=".", help="where to write the .train/.test CSVs ('-': stdout)")
    p.add_argument("--delimiter", default=",", help="column delimiter (default ',')")
    p.add_argument("--verbose", action="store_true", help="print a summary")


def run(args) -> int:
    from ..logparse import parse_log_file, to_csv

    train, test = parse_log_file(args.logfile_path)
    if not train and not test:
        raise CaffeliteError(f"{args.logfile_path}: no training or test lines found (is it a Caffe training log?)")
    if args.output_dir == "-":
        sys.stdout.write("# train\n" + to_csv(train, args.delimiter) + "# test\n" + to_csv(test, args.delimiter))
        return 0
    os.makedirs(args.output_dir, exist_ok=True)
    base = os.path.join(args.output_dir, os.path.basename(args.logfile_path))
    for suffix, rows in ((".train", train), (".test", test)):
        with open(base + suffix, "w") as f:
            f.write(to_csv(rows, args.delimiter))
    if args.verbose:
        print(f"{len(train)} train rows -> {base}.train; {len(test)} test rows -> {base}.test")
    return 0
