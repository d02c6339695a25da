"""Data-pipeline throughput against the training step: does the net ever wait on data?

1. Builds a temporary pair of Cityscapes-sized LMDBs (raw uint8 Datums, 3x1024x2048 BGR images and 1x1024x2048
   labels, as §g.2 writes them) and times caffe-jacinto's ImageLabelData layer the way the seed's train net
   uses it (TRAIN, random 640x640 crop, mirror, same crop/flip for the label): images/s of 640x640 crops,
   synchronously (workers 0) and with background worker threads.
2. Times one jsegnet21v2 training step (forward + backward + SGD) at batch 2x3x640x640 with
   ``bench/train_step.py`` (the stage's train.prototxt with Input layers instead of the data layer) and
   prints the ratio data images/s / train images/s: above 1 the data pipeline outruns the net.
3. Runs the two together (``--overlap N`` steps): the real data layer feeds the real train net, and reports
   how long each step waits for its batch while the prefetch workers share the CPU with the net.

    python bench/data_bench.py [--records 16] [--batches 12] [--batch 8] [--train-runs 3] [--overlap 3]

Run it on a quiet machine (``uptime``): other jobs' load halves both rates on a 2-core box.

Measured on the 2-core dev box, quiet (load 0.2): data 466 images/s synchronous, 714 with 2 worker threads;
the train step 0.86 s for 2 images (2.3 images/s); ratio ~310x; fed by the real layer, the net waited 3 ms
per step (0.3%). At load 2.4: 510 / 630 images/s, step 0.85 s, ratio ~270x. Under heavy load from other
jobs (load 7): data 180-270 images/s, step 9.3 s.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, ".."))
sys.path.insert(0, _HERE)

from caffelite import log  # noqa: E402
from caffelite.blob import Blob  # noqa: E402
from caffelite.data.datum import array_to_datum  # noqa: E402
from caffelite.data.lmdb_io import LMDBWriter  # noqa: E402
from caffelite.layer import TRAIN, create_layer  # noqa: E402
from caffelite.proto import caffe_pb2  # noqa: E402

CROP = 640


def make_lmdbs(folder, n, h=1024, w=2048):
    """``n`` image/label record pairs of ``h x w`` (distinct contents, so no record is a cache hit)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    lab = rng.integers(0, 5, (1, h, w), dtype=np.uint8)
    with LMDBWriter(os.path.join(folder, "img")) as wi, LMDBWriter(os.path.join(folder, "lab")) as wl:
        for i in range(n):
            wi.put(f"{i:010d}", array_to_datum(np.roll(img, i, axis=2)).SerializeToString())
            wl.put(f"{i:010d}", array_to_datum(np.roll(lab, i, axis=1)).SerializeToString())


def make_layer(folder, batch, threads):
    """The seed's ImageLabelData (crop 640, mirror, mean 0); ``threads`` 0 = decode in the calling thread."""
    p = caffe_pb2.LayerParameter(name="data", type="ImageLabelData", top=["data", "label"])
    p.transform_param.crop_size = CROP
    p.transform_param.mirror = True
    p.transform_param.mean_value.append(0)
    q = p.image_label_data_param
    q.image_list_path, q.label_list_path = os.path.join(folder, "img"), os.path.join(folder, "lab")
    q.batch_size, q.backend = batch, 1
    if threads:
        q.threads = threads
    layer = create_layer(p, TRAIN)
    if threads == 0:
        layer._workers = lambda: 0
    top = [Blob(), Blob()]
    layer.setup([], top)
    return layer, top


def data_rate(folder, batch, batches, threads):
    """Images/s of the layer's forward in a tight loop (after one warm-up batch)."""
    layer, top = make_layer(folder, batch, threads)
    try:
        layer.forward([], top)
        t0 = time.perf_counter()
        for _ in range(batches):
            layer.reshape([], top)
            layer.forward([], top)
        return batch * batches / (time.perf_counter() - t0)
    finally:
        layer.close()


def train_rate(batch, runs):
    """(images/s, median step seconds, solver) of the jsegnet21v2 step of bench/train_step.py."""
    from train_step import build, step_once

    net, solver = build(batch, CROP)
    step_once(solver)  # warm-up: diffs, history, workspaces
    med = float(np.median([step_once(solver) for _ in range(runs)]))
    return batch / med, med, net, solver


def overlapped(folder, net, solver, steps, threads):
    """Feed the train net from the data layer for ``steps`` steps: (mean wait for data, mean step) in s."""
    layer, top = make_layer(folder, net.blobs["data"].shape[0], threads)
    waits, computes = [], []
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            layer.reshape([], top)
            layer.forward([], top)
            net.blobs["data"].data[...] = top[0].data
            net.blobs["label"].data[...] = top[1].data
            t1 = time.perf_counter()
            solver.step(1)
            waits.append(t1 - t0)
            computes.append(time.perf_counter() - t1)
    finally:
        layer.close()
    return float(np.mean(waits)), float(np.mean(computes))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=16, help="2048x1024 record pairs in the temporary LMDBs")
    ap.add_argument("--batches", type=int, default=12, help="timed data batches per worker setting")
    ap.add_argument("--batch", type=int, default=8, help="data batch size for the throughput runs")
    ap.add_argument("--threads", default="0,1,2", help="worker-thread settings to time (0 = synchronous)")
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--train-runs", type=int, default=3, help="timed training steps (0: skip the net)")
    ap.add_argument("--overlap", type=int, default=3, help="steps with the data layer feeding the net")
    a = ap.parse_args(argv)
    log.get_logger().setLevel(logging.WARNING)  # no "Restarting data prefetching" lines between the figures
    print(f"cpu cores: {os.cpu_count()}, load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        make_lmdbs(d, a.records)
        print(f"wrote {a.records} image+label records of 2048x1024 in {time.perf_counter() - t:.1f}s")
        rates = {}
        for threads in (int(v) for v in a.threads.split(",")):
            rates[threads] = data_rate(d, a.batch, a.batches, threads)
            kind = "synchronous" if threads == 0 else f"{threads} worker thread(s)"
            print(f"data {kind:>20}: {rates[threads]:8.1f} images/s (640x640 crops + mirror, batch {a.batch})")
        if not a.train_runs:
            return 0
        best = max(rates.values())
        ips, med, net, solver = train_rate(a.train_batch, a.train_runs)
        print(f"train step jsegnet21v2 {a.train_batch}x3x{CROP}x{CROP}: {med:.2f} s median of {a.train_runs} "
              f"-> {ips:.2f} images/s")
        print(f"ratio data_images_per_s / train_images_per_s = {best:.1f} / {ips:.2f} = {best / ips:.0f}x")
        if a.overlap:
            threads = max((k for k in rates if k), key=rates.get, default=2)
            wait, step = overlapped(d, net, solver, a.overlap, threads)
            print(f"together ({threads} worker thread(s)): the net waits {wait * 1000:.0f} ms for each "
                  f"batch of {a.train_batch} vs {step:.2f} s of compute ({100 * wait / (wait + step):.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
