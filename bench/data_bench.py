"""Data-pipeline throughput: images/s of 640×640 random crops (+ mirror) from 2048×1024 image/label records.

Builds a temporary pair of Cityscapes-sized LMDBs (raw uint8 Datums, as §g.2 writes them) and times the
ImageLabelData layer (TRAIN, crop 640, mirror, batch 8) the way a solver uses it: ``forward`` in a loop.
Reports images/s for synchronous decoding (workers 0) and for background workers, and how long the net
waits per batch when it spends ``--step`` seconds computing between batches (the prefetch hides the data;
what is left is the copy of the batch into the top blob).

Measured on the shared 2-core dev box (load ~7 from other jobs, so noisy): 140-290 images/s
synchronous, 190-240 images/s with 1-2 worker threads; with ``--step 0.2`` the net waits ~8-10 ms per
batch of 8 with workers vs ~40 ms synchronous. A jsegnet21v2 training step on 640x640 crops consumes far
fewer images/s than that on a CPU.

    python bench/data_bench.py [--records 24] [--batches 12] [--batch 8] [--step 0.0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from caffelite.blob import Blob  # noqa: E402
from caffelite.data.datum import array_to_datum  # noqa: E402
from caffelite.data.lmdb_io import LMDBWriter  # noqa: E402
from caffelite.layer import TRAIN, create_layer  # noqa: E402
from caffelite.proto import caffe_pb2  # noqa: E402


def make_lmdbs(folder, n, h=1024, w=2048):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    lab = rng.integers(0, 5, (1, h, w), dtype=np.uint8)
    with LMDBWriter(os.path.join(folder, "img")) as wi, LMDBWriter(os.path.join(folder, "lab")) as wl:
        for i in range(n):
            wi.put(f"{i:010d}", array_to_datum(np.roll(img, i, axis=2)).SerializeToString())
            wl.put(f"{i:010d}", array_to_datum(lab).SerializeToString())


def make_layer(folder, batch, threads):
    p = caffe_pb2.LayerParameter(name="data", type="ImageLabelData", top=["data", "label"])
    p.transform_param.crop_size = 640
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


def run(folder, batch, batches, threads, step):
    layer, top = make_layer(folder, batch, threads)
    layer.forward([], top)  # warm up
    waits = []
    t0 = time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        layer.reshape([], top)
        layer.forward([], top)
        waits.append(time.perf_counter() - t)
        if step:
            time.sleep(step)  # the net computing: prefetch workers run meanwhile
    total = time.perf_counter() - t0
    layer.close()
    return batch * batches / total, float(np.mean(waits))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=24)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--step", type=float, default=0.0, help="seconds of simulated compute per batch")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        make_lmdbs(d, a.records)
        print(f"wrote {a.records} image+label records of 2048x1024 in {time.perf_counter() - t:.1f}s")
        print(f"cpu cores: {os.cpu_count()}")
        for threads in (0, 1, 2, 4):
            ips, wait = run(d, a.batch, a.batches, threads, a.step)
            kind = "synchronous" if threads == 0 else f"{threads} worker thread(s)"
            rate = f"{ips:8.1f} images/s (640x640 crops), " if not a.step else ""
            print(f"{kind:>22}: {rate}net waits {wait * 1000:7.1f} ms per batch of {a.batch}")


if __name__ == "__main__":
    main()
