"""Benchmark: the compiled depthwise-deconvolution / MAX-pooling / ArgMax kernels against their NumPy paths.

    python bench/native_glue_bench.py [--runs 9] [--net WEIGHTS.caffemodel]

Times each op at jsegnet21v2's shapes for a 1x3x512x1024 input (the four bilinear 2x Deconvolutions, pool1-4,
the final ArgMax over 8 classes): the NumPy path (``native.enabled(False)``) and the compiled kernel alternate,
call after call, with a 50 ms pause before each timed call, and the medians and their ratio are printed. The
thread count is ``CAFFELITE_NUM_THREADS`` (default: the usable cores).

``--net W.caffemodel`` also times the whole jsegnet21v2 deploy forward (1x3x512x1024, sparse engine, trained
weights W) with these kernels off and on, alternating forward after forward, and checks that every blob of the
two forwards is bitwise the same.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from caffelite.ops import depthwise as D
from caffelite.ops import native, native_glue
from caffelite.ops import pool as P
from caffelite.ops.argmax import top1_native
from caffelite.ops.im2col import ConvGeometry


def _reference_argmax(x, out):
    """The layer's NumPy route for top-1 along axis 1 (the running compare)."""
    from caffelite.layers.reduction import ArgMaxLayer
    ArgMaxLayer._top1_running(None, x, 1, out)


def cases(rs):
    g = ConvGeometry(4, 4, 2, 2, 1, 1)
    for name, c, h, w in [("out5a_up2", 64, 32, 64), ("final_up2", 8, 64, 128), ("final_up4", 8, 128, 256),
                          ("final_up8", 8, 256, 512)]:
        x = rs.standard_normal((1, c, h, w)).astype(np.float32)
        wk = rs.standard_normal((c, 4, 4)).astype(np.float32)
        out = np.empty((1, c, 2 * h, 2 * w), np.float32)
        yield name, (lambda x=x, wk=wk, out=out, h=h, w=w: D._dw_scatter(x, wk, g, 2 * h, 2 * w, out))
    for name, c, h, w, k in [("pool1", 32, 256, 512, 2), ("pool2", 64, 128, 256, 2), ("pool3", 128, 64, 128, 2),
                             ("pool4", 256, 32, 64, 1)]:
        x = np.maximum(rs.standard_normal((1, c, h, w)), 0).astype(np.float32)  # after a ReLU
        out = np.empty((1, c, h // k, w // k), np.float32)
        yield name, (lambda x=x, out=out, h=h, w=w, k=k: P.max_pool_forward(x, (k, k), (k, k), (0, 0), h // k,
                                                                            w // k, out))
    x = rs.standard_normal((1, 8, 512, 1024)).astype(np.float32)
    out = np.empty((1, 1, 512, 1024), np.float32)
    yield "argMaxOut", (lambda x=x, out=out: top1_native(x, 1, out) or _reference_argmax(x, out))


def timed(fn, enabled: bool) -> float:
    with native.enabled(enabled):
        time.sleep(0.05)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def whole_net(weights: str, runs: int):
    """Deploy forwards with the kernels off (``usable`` patched to False) and on, alternating; blobs compared."""
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from deploy_forward import build

    net = build((1, 3, 512, 1024))
    net.copy_from(weights)
    net.engine = "sparse"
    usable = native_glue.usable

    def forward(on: bool):
        native_glue.usable = usable if on else (lambda *a: False)
        try:
            time.sleep(0.05)
            t0 = time.perf_counter()
            net.forward()
            return time.perf_counter() - t0
        finally:
            native_glue.usable = usable

    blobs = {}
    for on in (False, True):  # warm-up, and the blobs of each
        forward(on)
        blobs[on] = {k: b.data.copy() for k, b in net.blobs.items()}
    same = all(np.array_equal(blobs[False][k].view(np.uint8), blobs[True][k].view(np.uint8)) for k in blobs[False])
    times = {False: [], True: []}
    for _ in range(runs):
        for on in (False, True):
            times[on].append(forward(on))
    off, on = (np.median(times[k]) * 1e3 for k in (False, True))
    print(f"deploy forward (sparse engine): kernels off {off:.1f} ms, on {on:.1f} ms, ratio {on / off:.3f}; "
          f"all {len(blobs[True])} blobs bitwise equal: {same}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9, help="timed calls of each path (default 9)")
    ap.add_argument("--net", metavar="WEIGHTS", help="also time the whole deploy forward with these weights")
    args = ap.parse_args()
    if not native_glue.available():
        raise SystemExit("the compiled kernels are not loaded: " + native_glue.info())
    print(native_glue.info())
    print(f"{'op':<12} {'numpy ms':>9} {'native ms':>9} {'ratio':>6}")
    tot = [0.0, 0.0]
    for name, fn in cases(np.random.default_rng(0)):
        for flag in (False, True):  # warm-up (scratch buffers, pages)
            timed(fn, flag)
        old, new = [], []
        for _ in range(args.runs):
            old.append(timed(fn, False))
            new.append(timed(fn, True))
        mo, mn = np.median(old) * 1e3, np.median(new) * 1e3
        tot[0] += mo
        tot[1] += mn
        print(f"{name:<12} {mo:9.2f} {mn:9.2f} {mn / mo:6.2f}")
    print(f"{'total':<12} {tot[0]:9.2f} {tot[1]:9.2f} {tot[1] / tot[0]:6.2f}")
    if args.net:
        whole_net(args.net, args.runs)


if __name__ == "__main__":
    main()
