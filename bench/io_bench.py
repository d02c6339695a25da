"""Benchmark caffemodel load/save on a generated ~250 MB AlexNet-shaped model.

Prints, for the jacinto (raw_data) and BVLC (packed data) encodings: load seconds (every blob decoded to
float32 arrays) through the streaming ``load_weights`` and through the protobuf-message route
``read_weights`` + ``blob_to_array``, ``write_weights`` seconds (of a message holding the values), and peak
extra memory over the file size. Then the Net level, on an AlexNet deploy net of the same shapes:
``Net(deploy, weights)`` (the net's own params, filled first, are included: at least 1x), ``net.copy_from``
alone (the net already built: what loading the weights costs on top of the net), and ``net.save`` (streamed
from the blobs). Each measurement runs in a fresh subprocess so the peak (VmHWM - VmRSS before, the
high-water mark reset through /proc/self/clear_refs where a net was built first) is its own.
Goal: load <= 1.5 s, peak extra memory <= 1.5x the file.

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


DEPLOY = """name: "alexnet_bench"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
        convolution_param { num_output: 384 pad: 1 kernel_size: 3 } }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
        convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
        convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" inner_product_param { num_output: 4096 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 4096 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 1000 } }
"""


def _reset_peak():
    try:  # Linux >= 4.0: "5" resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


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
    elif op in ("net", "copy", "netsave"):
        import caffelite

        deploy = os.path.join(os.path.dirname(path), "alexnet_deploy.prototxt")
        if op == "net":  # the whole Net(deploy, weights): includes building (and filling) the net itself
            net = caffelite.Net(deploy, path, caffelite.TEST)
        else:
            net = caffelite.Net(deploy, caffelite.TEST)
            if op == "netsave":
                net.copy_from(path)
            _reset_peak()
            base = _mem("VmRSS")
            t = time.perf_counter()
            if op == "copy":
                net.copy_from(path)
            else:
                net.save(path + ".saved", form=form)
        if op != "netsave":
            assert float(abs(net.params["fc8"][0].data).sum()) > 0
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
        with open(os.path.join(d, "alexnet_deploy.prototxt"), "w") as f:
            f.write(DEPLOY)
        net_s, net_peak = measure("net", path, form)
        copy_s, copy_peak = measure("copy", path, form)
        nsave_s, nsave_peak = measure("netsave", path, form)
        saved = os.path.getsize(path + ".saved") / 1e6
        print(f"{'':8s} Net(deploy, weights) {net_s:.3f} s, peak {net_peak / size:.2f}x | net.copy_from "
              f"{copy_s:.3f} s, peak {copy_peak / size:.2f}x | net.save {nsave_s:.3f} s, peak "
              f"{nsave_peak / size:.2f}x ({saved:.1f} MB)")
        if not a.keep:
            for p in (path, path + ".saved", os.path.join(d, "alexnet_deploy.prototxt")):
                os.unlink(p)
    if not a.keep and a.dir is None:
        os.rmdir(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
