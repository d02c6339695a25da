"""Benchmark: jsegnet21v2 deploy forward on the CPU (issue 3, "Speed").

    python bench/deploy_forward.py [--shape 1,3,512,1024] [--runs 7] [--peer torch] [--profile]

Builds tests/data/reference/cityscapes5_jsegnet21v2/test/deploy.prototxt at the given input shape, runs the
forward ``runs`` times (after one warm-up) and prints the median time and the peak memory growth. With
``--peer torch`` the same graph runs in PyTorch (2 threads, best of NCHW and channels_last) in a separate
interpreter (``--peer-python``, $CAFFELITE_PEER_PYTHON or /work/torchvenv), alternating with caffelite in
two rounds so both see the same machine conditions, and the caffelite/peer ratios are printed.
``--profile`` prints the per-layer time table of caffelite.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __name__ == "__main__" and "--threads" in sys.argv:  # must be set before NumPy loads OpenBLAS
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _netbench as nb  # noqa: E402


def build(shape):
    import caffelite
    from caffelite.net import Net
    caffelite.set_mode_cpu()
    net = Net(os.path.join(nb.REF, "test", "deploy.prototxt"), caffelite.TEST)
    inp = net.inputs[0]
    net.blobs[inp].reshape(*shape)
    net.reshape()
    rs = np.random.default_rng(0)
    net.blobs[inp].data[...] = rs.uniform(0, 255, shape).astype(np.float32)
    realistic_weights(net, rs)
    return net


def realistic_weights(net, rs):
    """msra convolution weights and identity BatchNorm statistics (mean 0, variance 1, gamma 1, beta 0), so the
    activations stay in a normal float range; bilinear deconvolutions and the data bias keep their fillers."""
    for layer in net.layers:
        if layer.type == "Convolution":
            w = layer.blobs[0]
            w.data[...] = rs.standard_normal(w.shape) * np.sqrt(2.0 / int(np.prod(w.shape[1:])))
        elif layer.type == "BatchNorm":
            for k, b in enumerate(layer.blobs):
                b.data[...] = 1.0 if k in (1, 2, 3) else 0.0


def time_runs(net, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        net.forward()
        times.append(time.perf_counter() - t0)
    return times


def profile(net, runs):
    per = {}
    for _ in range(runs):
        for name, layer, b, t in zip(net._layer_names, net.layers, net._bottom_vecs, net._top_vecs, strict=True):
            t0 = time.perf_counter()
            layer.reshape(b, t)
            layer.forward(b, t)
            per.setdefault((name, layer.type), []).append(time.perf_counter() - t0)
    rows = sorted(((float(np.median(v)), k) for k, v in per.items()), reverse=True)
    total = sum(r[0] for r in rows)
    print(f"per-layer forward (median of {runs}), sum {total * 1e3:.1f} ms")
    by_type = {}
    for v, (_n, t) in rows:
        by_type[t] = by_type.get(t, 0.0) + v
    print("  by type: " + ", ".join(f"{t} {v * 1e3:.1f}" for t, v in sorted(by_type.items(), key=lambda kv: -kv[1])))
    for v, (n, t) in rows[:20]:
        print(f"  {v * 1e3:7.2f} ms  {n} ({t})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1,3,512,1024")
    ap.add_argument("--runs", type=int, default=7)
    nb.add_common_args(ap)
    a = ap.parse_args(argv)
    shape = tuple(int(s) for s in a.shape.split(","))
    base = nb.rss_mb()
    net = build(shape)
    net.forward()  # warm-up (allocates the workspaces)
    title = f"jsegnet21v2 deploy forward, input {'x'.join(map(str, shape))}, CPU"
    summary = nb.run_and_report(a, net, "forward", lambda: time_runs(net, 1)[0], base, title)
    if a.profile:
        profile(net, 3)
    nb.write_json(a.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
