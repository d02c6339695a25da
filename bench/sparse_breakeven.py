"""Benchmark: the zero fraction from which the sparse convolution kernel beats the dense path, per layer.

    python bench/sparse_breakeven.py [--shape 1,3,512,1024] [--runs 5] [--threads 2] [--fractions 0.3,...]
                                     [--only conv1a,...] [--kernel auto|direct|cols]

For every Convolution of jsegnet21v2's deploy net at ``--shape`` (plus a 1x1 and a depthwise 3x3 layer of
typical size, which jsegnet21v2 does not have as convolutions), weights pruned per output channel to each zero
fraction (the smallest magnitudes first, as caffe-jacinto's per-channel thresholding prunes), it times the
forward the dense engine runs (:func:`caffelite.ops.conv.conv_forward`: the compiled direct kernel, BLAS for
1x1, NumPy shifts for depthwise) against the sparse kernel (:func:`caffelite.ops.sparse_conv.conv_forward`),
medians of ``--runs`` interleaved runs, and prints sparse/dense per fraction and the break-even fraction
(linear interpolation between the measured points where the ratio crosses 1).

``--kernel`` times one sparse kernel (direct, or the row-block "cols" kernel) instead of the one
:func:`caffelite.ops.sparse_conv.choose_kernel` picks per layer: how ``COLS_MIN_GROUP_CHANNELS`` was set.

How ``AUTO_MIN_ZERO_FRACTION`` in caffelite/ops/sparse_conv.py was set: the largest break-even of each kind of
layer over the layers, rounded up to the next 0.1 (a margin for machine noise). Measured on the project machine
(2-core AMD EPYC with AVX-512, 2 threads, shared with other work: +-10-30% noise per point; two runs, the
second on conv1a, conv1b, res2a_branch2b, ctx_final and the 1x1 and depthwise layers only):

    kind       break-even zero fraction over the layers                        threshold
    direct     <=0.30 (the res*, out*, ctx_conv* layers), 0.54-0.61 (conv1a,   0.7
               conv1b, ctx_final)
    pointwise  <=0.30 (both runs; 0.46x BLAS at 0.8)                           0.4
    depthwise  <=0.30 (both runs)                                              0.4

At 80% zeros the sparse kernels took 0.30-0.52x the dense direct kernel's time on the layers with 16 or more
output channels per group (row-block kernel), 0.60-0.83x on conv1a (3 input channels, 5x5 stride 2), conv1b and
ctx_final (8 channels per group: direct sparse kernel). One vector load per multiply-add against the dense
kernel's one per eight bounds it at about 0.25x on this CPU (a micro-benchmark of the inner loop from L1 runs
at ~0.75 of the dense kernel's multiply-add rate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if __name__ == "__main__" and "--threads" in sys.argv:  # before NumPy loads OpenBLAS
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = \
        os.environ["CAFFELITE_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def prune_per_channel(w, fraction):
    """Zero the ``fraction`` smallest-magnitude weights of each output channel (in place); returns ``w``."""
    flat = w.reshape(w.shape[0], -1)
    k = int(round(fraction * flat.shape[1]))
    if k > 0:
        order = np.argsort(np.abs(flat), axis=1, kind="stable")[:, :k]
        np.put_along_axis(flat, order, 0.0, axis=1)
    return w


def jseg_layers(shape):
    """(name, input shape, weight shape, group, geometry) of jsegnet21v2's convolutions at ``shape``, plus a
    1x1 and a depthwise layer."""
    import deploy_forward as d

    from caffelite.ops.im2col import ConvGeometry
    net = d.build(shape)
    out = []
    seen = set()
    for i, layer in enumerate(net.layers):
        if layer.type != "Convolution":
            continue
        xs = net._bottom_vecs[i][0].shape
        key = (xs, layer.blobs[0].shape, layer.group, layer.geom)
        if key in seen:
            continue
        seen.add(key)
        out.append((net._layer_names[i], xs, layer.blobs[0].shape, layer.group, layer.geom))
    out.append(("pointwise_64x64", (1, 64, 128, 256), (64, 64, 1, 1), 1, ConvGeometry(1, 1, 1, 1, 0, 0, 1, 1)))
    out.append(("depthwise_64", (1, 64, 128, 256), (64, 1, 3, 3), 64, ConvGeometry(3, 3, 1, 1, 1, 1, 1, 1)))
    return out


def time_layer(xs, ws, group, g, fractions, runs, rng, kernel=None):
    """{fraction: (dense median s, sparse median s)} for one layer shape (``kernel``: the sparse kernel,
    None: the one :func:`caffelite.ops.sparse_conv.choose_kernel` picks)."""
    from caffelite.ops import conv as K
    from caffelite.ops import sparse_conv as S
    x = rng.standard_normal(xs).astype(np.float32)
    w0 = (rng.standard_normal(ws) * np.sqrt(2.0 / np.prod(ws[1:]))).astype(np.float32)
    b = np.zeros(ws[0], np.float32)
    ho, wo = g.out_shape(*xs[2:])
    out = np.empty((xs[0], ws[0], ho, wo), np.float32)
    res = {}
    for f in fractions:
        w = prune_per_channel(w0.copy(), f)
        pk = S.pack_weights(w, group)
        K.conv_forward(x, w, b, g, group, out)
        S.conv_forward(x, pk, b, g, out, kernel=kernel)
        td, ts = [], []
        for _ in range(runs):  # interleaved: both see the same machine conditions
            t0 = time.perf_counter()
            K.conv_forward(x, w, b, g, group, out)
            t1 = time.perf_counter()
            S.conv_forward(x, pk, b, g, out, kernel=kernel)
            t2 = time.perf_counter()
            td.append(t1 - t0)
            ts.append(t2 - t1)
        res[f] = (statistics.median(td), statistics.median(ts))
    return res


def break_even(res):
    """The zero fraction where sparse/dense crosses 1 (interpolated); None if sparse never wins, 0 if always."""
    pts = sorted((f, s / d) for f, (d, s) in res.items())
    if pts[0][1] <= 1:
        return pts[0][0]
    for (f0, r0), (f1, r1) in zip(pts, pts[1:], strict=False):
        if r1 <= 1 < r0:
            return f0 + (r0 - 1) * (f1 - f0) / (r0 - r1)
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1,3,512,1024")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fractions", default="0.3,0.5,0.6,0.7,0.8,0.9,0.95")
    ap.add_argument("--only", default="", help="comma-separated layer names (default: all)")
    ap.add_argument("--kernel", choices=("auto", "direct", "cols"), default="auto",
                    help="sparse kernel: direct, row-block (cols), or the one chosen per layer (auto)")
    a = ap.parse_args(argv)
    from caffelite.ops import native, sparse_conv
    if not sparse_conv.available():
        print(f"sparse kernel not available: {sparse_conv.why_unavailable()}", file=sys.stderr)
        return 2
    print(native.info())
    print(sparse_conv.info())
    shape = tuple(int(s) for s in a.shape.split(","))
    fractions = [float(f) for f in a.fractions.split(",")]
    only = {s for s in a.only.split(",") if s}
    rng = np.random.default_rng(0)
    by_kind = {}
    print(f"{'layer':18s} {'kind':9s} {'dense ms':>9s}  " + "  ".join(f"z={f:<4g}" for f in fractions)
          + "  break-even")
    for name, xs, ws, group, g in jseg_layers(shape):
        if only and name not in only:
            continue
        kind = "depthwise" if ws[1] == 1 and group == ws[0] and group > 1 else \
            "pointwise" if g.is_pointwise else "direct"
        res = time_layer(xs, ws, group, g, fractions, a.runs, rng, None if a.kernel == "auto" else a.kernel)
        be = break_even(res)
        by_kind.setdefault(kind, []).append(be)
        dense_ms = statistics.median(d for d, _ in res.values()) * 1e3
        print(f"{name:18s} {kind:9s} {dense_ms:9.2f}  " + "  ".join(f"{res[f][1] / res[f][0]:6.2f}" for f in fractions)
              + f"  {'never' if be is None else f'{be:.2f}'}", flush=True)
    print("sparse/dense time per zero fraction above; break-even per kind (max over layers):")
    for kind, v in by_kind.items():
        known = [x for x in v if x is not None]
        worst = "never" if len(known) < len(v) else f"{max(known):.2f}"
        print(f"  {kind:9s} {worst}  (auto threshold {sparse_conv.AUTO_MIN_ZERO_FRACTION[kind]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
