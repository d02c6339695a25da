"""Benchmark a model, as ``caffe time``: ``caffelite time --model M [--iterations N] [--phase TRAIN]``.

One forward and backward to warm up (``Initial loss``), then N timed forward-backward passes with each
layer timed through the net's hooks; prints Caffe's per-layer averages and totals in its format.
"""

from __future__ import annotations

import time

from .. import log as glog
from ..errors import CaffeliteError
from .train import parse_gpus, select_device


def add_arguments(p):
    p.add_argument("--model", default="", help="the net definition prototxt")
    p.add_argument("--weights", default="", help="optional weights (caffemodel)")
    p.add_argument("--iterations", type=int, default=50, help="number of timed iterations (default 50)")
    p.add_argument("--phase", default="TRAIN", type=str.upper, choices=("TRAIN", "TEST"),
                   help="net phase (default TRAIN)")
    p.add_argument("--gpu", default="", help="GPU id to use; CPU when empty")
    p.add_argument("--level", type=int, default=0, help="the NetState level")
    p.add_argument("--stage", default="", help="NetState stages, comma-separated")


def _sync():
    from .. import backend
    if backend.mode() == backend.GPU:  # pragma: no cover - GPU only
        backend.current_xp().cuda.Device().synchronize()


def benchmark(net, iterations):
    """Time ``iterations`` forward-backward passes per layer; returns (fwd ms per layer, bwd ms per layer)."""
    n = len(net.layers)
    fwd, bwd = [0.0] * n, [0.0] * n
    t = {}

    def start(_net, i, *_):
        _sync()
        t[i] = time.perf_counter()

    def stop_fwd(_net, i, *_):
        _sync()
        fwd[i] += time.perf_counter() - t[i]

    def stop_bwd(_net, i, *_):
        _sync()
        bwd[i] += time.perf_counter() - t[i]

    glog.info("Performing Forward", "caffe.cpp:351")
    net.forward()
    glog.info(f"Initial loss: {glog.fmt(getattr(net, 'loss', 0.0) or 0.0)}", "caffe.cpp:356")
    glog.info("Performing Backward", "caffe.cpp:357")
    net.backward()
    hooks = [("before_forward", start), ("after_forward", stop_fwd), ("before_backward", start),
             ("after_backward", stop_bwd)]
    for ev, fn in hooks:
        net.add_hook(ev, fn)
    try:
        glog.info("*** Benchmark begins ***", "caffe.cpp:365")
        glog.info(f"Testing for {iterations} iterations.", "caffe.cpp:366")
        total0 = time.perf_counter()
        fsum = bsum = 0.0
        for j in range(iterations):
            it0 = time.perf_counter()
            f0 = time.perf_counter()
            net.forward()
            _sync()
            fsum += time.perf_counter() - f0
            b0 = time.perf_counter()
            net.backward()
            _sync()
            bsum += time.perf_counter() - b0
            glog.info(f"Iteration: {j + 1} forward-backward time: {glog.fmt((time.perf_counter() - it0) * 1e3)} ms.",
                      "caffe.cpp:394")
        total = time.perf_counter() - total0
    finally:
        for ev, fn in hooks:
            net.remove_hook(ev, fn)
    glog.info("Average time per layer: ", "caffe.cpp:397")
    fwd_ms = [f * 1e3 / iterations for f in fwd]
    bwd_ms = [b * 1e3 / iterations for b in bwd]
    for layer, f, b in zip(net.layers, fwd_ms, bwd_ms, strict=True):
        glog.info(f"{layer.name:>10}\tforward: {glog.fmt(f)} ms.", "caffe.cpp:400")
        glog.info(f"{layer.name:>10}\tbackward: {glog.fmt(b)} ms.", "caffe.cpp:403")
    glog.info(f"Average Forward pass: {glog.fmt(fsum * 1e3 / iterations)} ms.", "caffe.cpp:408")
    glog.info(f"Average Backward pass: {glog.fmt(bsum * 1e3 / iterations)} ms.", "caffe.cpp:410")
    glog.info(f"Average Forward-Backward: {glog.fmt(total * 1e3 / iterations)} ms.", "caffe.cpp:412")
    glog.info(f"Total Time: {glog.fmt(total * 1e3)} ms.", "caffe.cpp:414")
    glog.info("*** Benchmark ends ***", "caffe.cpp:415")
    return fwd_ms, bwd_ms


def run(args) -> int:
    from ..net import Net

    if not args.model:
        raise CaffeliteError("Need a model definition to time.")
    if args.iterations <= 0:
        raise CaffeliteError("--iterations must be positive")
    select_device(parse_gpus(args.gpu), command="time")
    phase = 0 if args.phase == "TRAIN" else 1
    stages = [s for s in args.stage.split(",") if s]
    net = Net(args.model, phase, level=args.level, stages=stages)
    if args.weights:
        net.copy_from(args.weights)
    benchmark(net, args.iterations)
    return 0
