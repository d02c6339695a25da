"""Benchmark a model, as ``caffe time``: ``caffelite time --model M [--iterations N] [--phase TRAIN]``.

One forward and backward to warm up (``Initial loss``), then N timed forward-backward passes with each
layer timed through the net's hooks; prints Caffe's per-layer averages and totals in its format.
"""

from __future__ import annotations

import time

from .. import log as glog
from .caffe_flags import add_net_flags, build_net


def add_arguments(p):
    add_net_flags(p, phase="TRAIN", weights_help="optional weights (caffemodel)",
                  iterations_help="number of timed iterations")


def _gpu():
    from .. import backend
    return backend.mode() == backend.GPU


def _sync():
    if _gpu():  # pragma: no cover - GPU only
        from .. import backend
        backend.current_xp().cuda.Device().synchronize()


class _Clock:
    """Caffe's Timer resolution: on the CPU whole microseconds (per-layer and pass times) and whole
    milliseconds (iteration and total times, ``Timer::MilliSeconds``); on a GPU fractional milliseconds."""

    def __init__(self):
        self.exact = _gpu()

    def us(self, seconds):
        return seconds * 1e6 if self.exact else float(int(seconds * 1e6))

    def ms(self, seconds):
        return seconds * 1e3 if self.exact else float(int(seconds * 1e3))


def benchmark(net, iterations):
    """Time ``iterations`` forward-backward passes per layer; returns (fwd ms per layer, bwd ms per layer)."""
    n = len(net.layers)
    clock = _Clock()
    fwd, bwd = [0.0] * n, [0.0] * n  # microseconds
    t = {}

    def start(_net, i, *_):
        _sync()
        t[i] = time.perf_counter()

    def stop_fwd(_net, i, *_):
        _sync()
        fwd[i] += clock.us(time.perf_counter() - t[i])

    def stop_bwd(_net, i, *_):
        _sync()
        bwd[i] += clock.us(time.perf_counter() - t[i])

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
        fsum = bsum = 0.0  # microseconds
        for j in range(iterations):
            it0 = time.perf_counter()
            net.forward()
            _sync()
            f1 = time.perf_counter()
            net.backward()
            _sync()
            b1 = time.perf_counter()
            fsum += clock.us(f1 - it0)
            bsum += clock.us(b1 - f1)
            glog.info(f"Iteration: {j + 1} forward-backward time: {glog.fmt(clock.ms(b1 - it0))} ms.",
                      "caffe.cpp:394")
        total = clock.ms(time.perf_counter() - total0)
    finally:
        for ev, fn in hooks:
            net.remove_hook(ev, fn)
    glog.info("Average time per layer: ", "caffe.cpp:397")
    fwd_ms = [f / 1e3 / iterations for f in fwd]
    bwd_ms = [b / 1e3 / iterations for b in bwd]
    for layer, f, b in zip(net.layers, fwd_ms, bwd_ms, strict=True):
        glog.info(f"{layer.name:>10}\tforward: {glog.fmt(f)} ms.", "caffe.cpp:400")
        glog.info(f"{layer.name:>10}\tbackward: {glog.fmt(b)} ms.", "caffe.cpp:403")
    glog.info(f"Average Forward pass: {glog.fmt(fsum / 1e3 / iterations)} ms.", "caffe.cpp:408")
    glog.info(f"Average Backward pass: {glog.fmt(bsum / 1e3 / iterations)} ms.", "caffe.cpp:410")
    glog.info(f"Average Forward-Backward: {glog.fmt(total / iterations)} ms.", "caffe.cpp:412")
    glog.info(f"Total Time: {glog.fmt(total)} ms.", "caffe.cpp:414")
    glog.info("*** Benchmark ends ***", "caffe.cpp:415")
    return fwd_ms, bwd_ms


def run(args) -> int:
    net, _ = build_net(args, "time", "time")
    benchmark(net, args.iterations)
    return 0
