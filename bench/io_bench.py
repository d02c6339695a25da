"""Benchmark caffemodel load/save on a generated ~250 MB AlexNet-shaped model.

Prints, for the jacinto (raw_data) and BVLC (packed data) encodings: load seconds (every blob decoded to
float32 arrays) through the streaming ``load_weights`` and through the protobuf-message route
``read_weights`` + ``blob_to_array``, ``write_weights`` seconds, and peak extra memory over the file size. Each
measurement runs in a fresh subprocess so the peak (VmHWM - VmRSS before) is its own.
Goal (issue 2): load <= 1.5 s, peak extra memory <= 1.5x the file.

Usage: python bench/io_bench.py [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ALEXNET = [  # (layer, type, weight shape, bias size)
    ("conv1", "Convolution", (96, 3, 11, 11), 96), ("conv2", "Convolution", (256, 48, 5, 5), 256),
    ("conv3", "Convolution", (384, 256, 3, 3), 384), ("conv4", "Convolution", (384, 192, 3, 3), 384),
    ("conv5", "Convolution", (256, 192, 3, 3), 256), ("fc6", "InnerProduct", (4096, 9216), 4096),
    ("fc7", "InnerProduct", (4096, 4096), 4096), ("fc8", "InnerProduct", (1000, 4096), 1000),
]


def _mem(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def make_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {name: [rng.standard_normal(shape, dtype=np.float32) * 0.01, np.zeros(nb, np.float32)]
            for name, _, shape, nb in ALEXNET}


def make_net(arrays, form):
    from caffelite import io
    from caffelite.proto import caffe_pb2

    net = caffe_pb2.NetParameter(name="alexnet_bench")
    for name, typ, _, _ in ALEXNET:
        l = net.layer.add(name=name, type=typ)
        for a in arrays[name]:
            l.blobs.add().CopyFrom(io.array_to_blob(a, form))
    return net


def child(op, path, form):
    from caffelite import io

    base = _mem("VmRSS")
    t = time.perf_counter()
    if op == "load":  # the protobuf message route: read_weights + blob_to_array of every blob
        net = io.read_weights(path)
        arrays = [io.blob_to_array(b) for l in net.layer for b in l.blobs]
        del net
        assert sum(a.size for a in arrays) > 6e7
    elif op == "lean":  # the streaming route a Net uses: load_weights (payloads readinto arrays)
        net, _, arrays = io.load_weights(path)
        assert sum(a.size for v in arrays.values() for a in v) > 6e7
    else:
        arrays = make_arrays()
        net = make_net(arrays, form)
        base = _mem("VmRSS")
        t = time.perf_counter()
        io.write_weights(net, path, form=form)
    dt = time.perf_counter() - t
    peak = _mem("VmHWM") - base
    print(f"{dt:.3f} {peak}")


def measure(op, path, form):
    out = subprocess.run([sys.executable, __file__, "--child", op, path, form], check=True, capture_output=True,
                         text=True).stdout.split()
    return float(out[0]), int(out[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to write the generated models (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(*a.child)
        return 0
    d = a.dir or tempfile.mkdtemp(prefix="caffelite-iobench-")
    print(f"caffelite io_bench: AlexNet-shaped caffemodel, {os.cpu_count()} cores")
    for form in ("jacinto", "bvlc"):
        path = os.path.join(d, f"alexnet_{form}.caffemodel")
        save_s, save_peak = measure("save", path, form)
        size = os.path.getsize(path)
        load_s, load_peak = measure("load", path, form)
        lean_s, lean_peak = measure("lean", path, form)
        print(f"{form:8s} file {size / 1e6:.1f} MB | load_weights {lean_s:.3f} s, peak {lean_peak / size:.2f}x"
              f" | read_weights+blob_to_array {load_s:.3f} s, peak {load_peak / size:.2f}x"
              f" | write_weights {save_s:.3f} s, peak {save_peak / size:.2f}x")
        if not a.keep:
            os.unlink(path)
    if not a.keep and a.dir is None:
        os.rmdir(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
