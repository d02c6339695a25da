"""The flagship flow: Cityscapes (or a synthetic look-alike) → lists → LMDBs → five stages → overlays → table.

Python 3 counterpart of caffe-jacinto-models' ``train_cityscapes_segmentation.sh`` (jacinto.md §g): every
stage is run with ``caffelite train`` / ``caffelite test`` (its log in ``<stage>/run.log.txt``), evaluated with
the deploy net (pixel accuracy and mean IoU in jacinto's convention, §g.4), and summarised in the seed's
table. Each stage is resumable: a finished stage is skipped, an interrupted one resumes from its last
snapshot.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .stages import STAGES, TRAIN_STAGES, StageConfig, write_stage

PREFIX = "cityscapes5_jsegnet21v2"


@dataclass
class RunConfig:
    """Options of a whole run (defaults = the seed's full Cityscapes schedule)."""

    out: str
    dataset_root: str | None = None  # None: generate a synthetic Cityscapes-like set
    synthetic_train: int = 200
    synthetic_val: int = 40
    synthetic_size: tuple = (2048, 1024)  # W, H
    resize: tuple | None = None  # (W, H) resize of records in the LMDBs (None: full resolution)
    weights: str | None = None  # pretrained (ImageNet jacintonet11v2); None: train from scratch
    stage: StageConfig | None = None
    eval_images: int | None = None
    overlays: int = 4
    seed: int = 1
    extra_train_args: list = field(default_factory=list)


def _caffelite(args, log_path=None, cwd=None, echo=None):
    """Run ``caffelite ARGS`` in a subprocess (tee its output to ``log_path``); raise on failure."""
    cmd = [sys.executable, "-m", "caffelite", *map(str, args)]
    out = open(log_path, "a") if log_path else None
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        last = []
        for line in proc.stdout:
            if out:
                out.write(line)
                out.flush()
            last = (last + [line.rstrip()])[-20:]
            if echo and echo(line):
                print("    " + line.rstrip(), flush=True)
        rc = proc.wait()
    finally:
        if out:
            out.close()
    if rc != 0:
        tail = "\n".join(last)
        raise RuntimeError(f"`caffelite {' '.join(map(str, args))}` failed (exit {rc}):\n{tail}")


def _echo_train(line: str) -> bool:
    return bool(re.search(r"Iteration \d+ \(|Test net output|Total Sparsity|Optimization Done|Snapshotting to binary", line))


def latest_snapshot(stage_dir: str, ext: str):
    """(iteration, path) of the newest ``<prefix>_iter_N.<ext>`` in ``stage_dir``, or (0, None)."""
    best = (0, None)
    for p in glob.glob(os.path.join(stage_dir, f"{PREFIX}_iter_*.{ext}")):
        m = re.search(r"_iter_(\d+)\." + re.escape(ext) + "$", p)
        if m and int(m.group(1)) > best[0]:
            best = (int(m.group(1)), p)
    return best


def zero_weight_fraction(weights_path: str, deploy_path: str) -> float:
    """Fraction of exactly-zero convolution weights (the sparsity the seed's table reports)."""
    from .. import io as cio

    net = cio.read_net(deploy_path)
    conv = {lay.name for lay in net.layer if lay.type == "Convolution"}
    zeros = total = 0
    for lay in cio.read_weights(weights_path).layer:
        if lay.name in conv and len(lay.blobs):
            w = cio.blob_to_array(lay.blobs[0])
            zeros += int(np.count_nonzero(w == 0))
            total += w.size
    return zeros / max(total, 1)
