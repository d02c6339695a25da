"""Turn a Caffe/NVCaffe/caffe-jacinto/caffelite training log into train and test CSV tables.

``caffelite parse-log LOG [OUTPUT_DIR]`` writes ``<log name>.train`` and ``<log name>.test`` (the names BVLC's
``tools/extra/parse_log.py`` uses) into OUTPUT_DIR (default: the current directory); ``-`` prints both. A
``caffe test`` log (per-batch ``Batch i, name = v`` lines) gives ``<log name>.batches`` instead: one row per
batch, then a row ``Batch = mean`` with the final averages the log reports.
"""

from __future__ import annotations

import os
import sys

from ..errors import CaffeliteError
from ..io.files import atomic_write


def add_arguments(p):
    p.add_argument("logfile_path", help="the training log")
    p.add_argument("output_dir", nargs="?", default=".", help="where to write the .train/.test CSVs ('-': stdout)")
    p.add_argument("--delimiter", default=",", help="column delimiter (default ',')")
    p.add_argument("--verbose", action="store_true", help="print a summary")


def tables(parsed):
    """``[(suffix, rows)]`` to write for a :func:`caffelite.logparse.parse_log_all` result."""
    out = []
    if parsed["train"] or parsed["test"]:
        out += [(".train", parsed["train"]), (".test", parsed["test"])]
    if parsed["batches"]:
        rows = list(parsed["batches"])
        if parsed["final"]:
            rows.append({"Batch": "mean", **parsed["final"]})
        out.append((".batches", rows))
    return out


def run(args) -> int:
    from ..logparse import parse_log_file, to_csv

    parsed = parse_log_file(args.logfile_path, everything=True)
    out = tables(parsed)
    if not out:
        raise CaffeliteError(f"{args.logfile_path}: no training, test or batch lines found (is it a Caffe log?)")
    if args.output_dir == "-":
        for suffix, rows in out:
            sys.stdout.write(f"# {suffix[1:]}\n" + to_csv(rows, args.delimiter))
        return 0
    os.makedirs(args.output_dir, exist_ok=True)
    base = os.path.join(args.output_dir, os.path.basename(args.logfile_path))
    for suffix, rows in out:
        atomic_write(base + suffix, to_csv(rows, args.delimiter))
        if args.verbose:
            print(f"{len(rows)} rows -> {base}{suffix}")
    return 0
