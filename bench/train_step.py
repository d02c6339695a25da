"""Benchmark: one jsegnet21v2 training iteration on the CPU (forward + backward + SGD update).

    python bench/train_step.py [--batch 2] [--crop 640] [--runs 5] [--peer torch] [--profile]

Builds tests/data/reference/cityscapes5_jsegnet21v2/initial/train.prototxt with its ImageLabelData layer
replaced by an Input layer (data N x 3 x crop x crop, label N x 1 x crop x crop; labels 0..4 and some 255
"ignore" pixels), and the solver of that stage (SGD, momentum 0.9, weight decay 1e-4; lr scaled down so the
timed iterations stay finite). Each run is one ``solver.step(1)`` (clear diffs, forward, backward, update);
prints the median time (also per image) and the peak memory growth, and with ``--peer torch`` the same graph
in PyTorch (2 threads, best of NCHW and channels_last, torch.optim.SGD), interleaved run by run, and the
caffelite/peer ratios. ``--profile`` adds a per-layer forward/backward table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __name__ == "__main__" and "--threads" in sys.argv:  # must be set before NumPy loads OpenBLAS
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import numpy as np  # noqa: E402
from google.protobuf import text_format  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _netbench as nb  # noqa: E402
from deploy_forward import realistic_weights  # noqa: E402


def train_net_param(batch, crop):
    """The stage's train net with Input layers instead of the data layer (no LMDB needed)."""
    from caffelite import io
    from caffelite.proto import caffe_pb2
    param = io.read_net(os.path.join(nb.REF, "initial", "train.prototxt")) if hasattr(io, "read_net") else \
        text_format.Parse(open(os.path.join(nb.REF, "initial", "train.prototxt")).read(), caffe_pb2.NetParameter())
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    inp = out.layer.add(name="data", type="Input")
    inp.top.extend(["data", "label"])
    inp.input_param.shape.add().dim.extend([batch, 3, crop, crop])
    inp.input_param.shape.add().dim.extend([batch, 1, crop, crop])
    for lp in param.layer:
        if lp.type in ("ImageLabelData", "Data", "ImageData"):
            continue
        out.layer.add().CopyFrom(lp)
    return out


def build(batch, crop, seed=33):
    import caffelite
    from caffelite.net import Net
    from caffelite.proto import caffe_pb2
    from caffelite.solvers import get_solver
    caffelite.set_mode_cpu()
    caffelite.set_random_seed(seed)
    net = Net(train_net_param(batch, crop), caffelite.TRAIN)
    rs = np.random.default_rng(seed)
    realistic_weights(net, rs)
    net.blobs["data"].data[...] = rs.uniform(0, 255, net.blobs["data"].shape).astype(np.float32)
    label = rs.integers(0, 5, net.blobs["label"].shape).astype(np.float32)
    label[..., :8, :] = 255  # some ignored pixels, as in Cityscapes
    net.blobs["label"].data[...] = label
    sp = text_format.Parse(open(os.path.join(nb.REF, "initial", "solver.prototxt")).read(),
                           caffe_pb2.SolverParameter())
    for f in ("train_net", "test_net", "snapshot_prefix"):
        sp.ClearField(f)
    sp.ClearField("test_iter")
    sp.test_interval = 0
    sp.display = 0
    sp.snapshot = 0
    sp.snapshot_after_train = False
    sp.base_lr = 1e-6  # the step is timed, not the learning: keep the weights finite over many steps
    solver = get_solver(sp, net=net, test_nets=[])
    return net, solver


def step_once(solver):
    t0 = time.perf_counter()
    solver.step(1)
    return time.perf_counter() - t0


def profile(net, runs):
    fw, bw = {}, {}
    for _ in range(runs):
        items = list(zip(net._layer_names, net.layers, net._bottom_vecs, net._top_vecs, strict=True))
        for name, layer, b, t in items:
            t0 = time.perf_counter()
            layer.reshape(b, t)
            layer.forward(b, t)
            fw.setdefault((name, layer.type), []).append(time.perf_counter() - t0)
            for j, w in net._loss_tops[net._layer_names.index(name)]:
                t[j].diff[...] = w
        for i in range(len(items) - 1, -1, -1):
            name, layer, b, t = items[i]
            if not net._layer_need_backward[i]:
                continue
            t0 = time.perf_counter()
            layer.backward(t, net._bottom_need_backward[i], b)
            bw.setdefault((name, layer.type), []).append(time.perf_counter() - t0)
    rows = [(float(np.median(fw[k])), float(np.median(bw.get(k, [0.0]))), k) for k in fw]
    by_type = {}
    for f, b, (_n, t) in rows:
        a = by_type.setdefault(t, [0.0, 0.0])
        a[0] += f
        a[1] += b
    print(f"per-layer (median of {runs}): forward sum {sum(r[0] for r in rows) * 1e3:.0f} ms, "
          f"backward sum {sum(r[1] for r in rows) * 1e3:.0f} ms")
    print("  by type (fwd/bwd ms): " + ", ".join(f"{t} {v[0] * 1e3:.0f}/{v[1] * 1e3:.0f}" for t, v in
                                                  sorted(by_type.items(), key=lambda kv: -sum(kv[1]))))
    for f, b, (n, t) in sorted(rows, key=lambda r: -(r[0] + r[1]))[:20]:
        print(f"  {f * 1e3:7.1f} / {b * 1e3:7.1f} ms  {n} ({t})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=640)
    ap.add_argument("--runs", type=int, default=5)
    nb.add_common_args(ap)
    a = ap.parse_args(argv)
    base = nb.rss_mb()
    net, solver = build(a.batch, a.crop)
    step_once(solver)  # warm-up: allocates diffs, history and workspaces
    title = f"jsegnet21v2 training step (forward+backward+SGD), batch {a.batch}x3x{a.crop}x{a.crop}, CPU"
    summary = nb.run_and_report(a, net, "train", lambda: step_once(solver), base, title)
    med = summary["caffelite_median_s"]
    print(f"  caffelite per image: {med / a.batch:.3f} s; loss after the runs = {float(net.loss):.4f}")
    summary["caffelite_per_image_s"] = med / a.batch
    if a.profile:
        profile(net, 2)
    nb.write_json(a.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
