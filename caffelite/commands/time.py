"""Benchmark a model, as ``caffe time``: ``caffelite time --model M [--iterations N] [--phase TRAIN]``.

One forward and backward to warm up (``Initial loss``), then N timed forward-backward passes with each
layer timed through the net's hooks; prints Caffe's per-layer averages and totals in its format.
``--engine dense|sparse|int8|auto`` times a TEST net (unless ``--phase`` says otherwise) on that convolution
engine and adds a table of the engine each layer ran (:mod:`caffelite.ops.engine`).
"""

from __future__ import annotations

import time

from .. import log as glog
from ..ops.engine import ENGINES
from .caffe_flags import add_net_flags, add_quant_ranges, apply_quant_ranges, build_net


def add_arguments(p):
    add_net_flags(p, phase="TRAIN", weights_help="optional weights (caffemodel)",
                  iterations_help="number of timed iterations")
    p.set_defaults(phase=None)  # TRAIN, or TEST when --engine is given (see run)
    p.add_argument("--engine", default=None, choices=ENGINES,
                   help="convolution engine (dense, sparse, int8 or auto); implies --phase TEST unless --phase "
                        "is given (a TRAIN net always runs dense); prints the engine each layer ran")
    add_quant_ranges(p)  # a quantized net's ranges (the int8 engine needs them): load FILE, or freeze after calibration


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
    for _, fn in hooks:
        fn.observer = True  # timers only watch: packed-weight engines keep running (caffelite.ops.engine)
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


def engine_table(net):
    """Log, per layer, the engine its last forward ran (convolutions) and the zero fraction of its weights."""
    import numpy as np

    from .. import backend
    glog.info(f"Engine per layer (requested: {net.engine}):", "caffelite")
    state = getattr(net, "net_engine_state", None)
    # the int8 engine's convolutions: the zeros of the integer weights they run (quantizing with jacinto's weight
    # offset leaves none in the float blob)
    int_zeros = state.weight_zeros() if hasattr(state, "weight_zeros") else {}
    for layer in net.layers:
        used = getattr(layer, "engine_used", None)
        if used is None:
            continue
        if layer.name in int_zeros:
            glog.info(f"{layer.name:>10}\tengine: {used} (zero integer weights {int_zeros[layer.name]:.3f})",
                      "caffelite")
            continue
        w = backend.to_numpy(layer.blobs[0].data) if layer.blobs else np.zeros(0)  # int8 names every layer
        zeros = 1.0 - np.count_nonzero(w) / w.size if w.size else 0.0
        glog.info(f"{layer.name:>10}\tengine: {used} (zero weights {zeros:.3f})", "caffelite")


def run(args) -> int:
    if args.phase is None:
        args.phase = "TEST" if args.engine else "TRAIN"
    net, _ = build_net(args, "time", "time")
    if args.quant_ranges is not None:
        from .. import jacinto
        hooks = jacinto.attach_from_proto(net)
        apply_quant_ranges(hooks, args.quant_ranges)
        if args.quant_ranges[0] == "freeze":  # calibration forwards on the float simulation, then ranges fixed
            for h in hooks.quantization:
                while not h.frozen:
                    net.forward()
    if args.engine:
        net.engine = args.engine
    benchmark(net, args.iterations)
    if args.engine:
        engine_table(net)
    return 0
