"""The flagship's last table: forward time of one model at its deploy size on each engine (float dense, float
sparse, int8, sparse + int8) and the speed-up over float dense.

:func:`engine_times` builds the float net (``quantize`` off) and the quantized net (``quantize: true`` with the
ranges of a ``--quant-ranges save`` file, frozen) from one deploy prototxt and caffemodel, and times the engines
interleaved, run by run, so all see the same machine conditions. :func:`speed_table` formats the result.
"""

from __future__ import annotations

import time

import numpy as np


def _build(prototxt, weights, shape, quantize):
    from .. import io
    from ..layer import TEST
    from ..net import Net
    p = io.read_net(str(prototxt))
    p.quantize = bool(quantize)
    net = Net(p, TEST)
    net.copy_from(str(weights))
    if shape:
        net.blobs[net.inputs[0]].reshape(*shape)
        net.reshape()
    return net


def engine_times(prototxt, weights, ranges, shape=None, runs=5, seed=0):
    """Median forward seconds per engine: {"float dense", "float sparse", "int8", "sparse + int8"} (the sparse
    ones only where their kernels are built). ``ranges``: a saved ranges file of this net; ``shape``: the input
    shape (default: the prototxt's)."""
    from ..ops import int8 as i8op
    from ..ops import sparse_conv
    from . import attach_quantization
    from .int8_engine import Int8Net
    fnet = _build(prototxt, weights, shape, False)
    shape = tuple(fnet.blobs[fnet.inputs[0]].shape)
    x = np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)
    cases = {}
    fnet.engine = "dense"
    cases["float dense"] = lambda: fnet.forward(**{fnet.inputs[0]: x})
    if sparse_conv.available():
        snet = _build(prototxt, weights, shape, False)
        snet.engine = "sparse"
        cases["float sparse"] = lambda: snet.forward(**{snet.inputs[0]: x})
    qnet = _build(prototxt, weights, shape, True)
    hook = attach_quantization(qnet)
    hook.load_ranges(str(ranges))
    engines = {"int8": Int8Net(qnet, hook, sparse=False)}
    if i8op.available():
        engines["sparse + int8"] = Int8Net(qnet, hook, sparse=True)
    for k, eng in engines.items():
        cases[k] = (lambda e: lambda: e.forward(**{qnet.inputs[0]: x}))(eng)
    for fn in cases.values():
        fn()  # warm-up
    times = {k: [] for k in cases}
    for _ in range(max(1, int(runs))):
        for k, fn in cases.items():
            time.sleep(0.05)  # an idle gap before each timed run, so one engine's tail does not slow the next
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}, shape


def speed_table(times, shape) -> str:
    """Markdown table of :func:`engine_times`' result, with the speed-up over float dense."""
    base = times.get("float dense")
    lines = [f"| engine ({'x'.join(map(str, shape))}) | forward | speed-up vs float dense |", "|---|---|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {v * 1000:.1f} ms | {base / v:.2f}x |" if base else f"| {k} | {v * 1000:.1f} ms | - |")
    return "\n".join(lines)
