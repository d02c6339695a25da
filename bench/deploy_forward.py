"""Benchmark: jsegnet21v2 deploy forward on the CPU.

    python bench/deploy_forward.py [--shape 1,3,512,1024] [--runs 7] [--peer torch] [--profile]
    python bench/deploy_forward.py --prune 0.8 --engine dense,sparse --peers torch,openvino,onnxruntime

Builds tests/data/reference/cityscapes5_jsegnet21v2/test/deploy.prototxt at the given input shape, runs the
forward ``runs`` times (after one warm-up) and prints the median time and the peak memory growth. With
``--peer torch`` the same graph runs in PyTorch (2 threads, best of NCHW and channels_last) in a separate
interpreter (``--peer-python``, $CAFFELITE_PEER_PYTHON or /work/torchvenv), alternating with caffelite in
two rounds so both see the same machine conditions, and the caffelite/peer ratios are printed.
``--profile`` prints the per-layer time table of caffelite.

Sparse/engine comparison: ``--weights W.caffemodel`` runs a real trained model instead of random weights;
``--prune F`` zeroes, per output channel, the fraction F of smallest-magnitude weights of every Convolution
caffe-jacinto's sparsity would prune (docs/jacinto-spec.md §a.3: (ni >= 32 or no >= 32), group < no, kernel > 2x2; on
jsegnet21v2 that is every convolution), i.e. the per-channel pattern the flagship's sparse stage leaves, at an
exact fraction. ``--engine dense,sparse,auto`` times each listed engine (``Net.engine``). ``--peers
torch,openvino,onnxruntime`` runs each peer in its own interpreter (PyTorch fp32 best of NCHW/channels_last,
OpenVINO CPU fp32 with the latency hint, ONNX Runtime CPU fp32; same thread count, same weights including the
zeros), and every engine and peer runs once per round, round after round, so ratios come from one run. The
report gives medians and minima, ratios to each peer, and the packed sparse weights' size against the dense
float weights.
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


def prune_eligible(net, fraction):
    """Zero ``fraction`` of each output channel's weights (smallest magnitudes) in the Convolutions caffe-jacinto's
    sparsity prunes; returns the names of the pruned layers."""
    done = []
    for name, layer in zip(net._layer_names, net.layers, strict=True):
        if layer.type != "Convolution":
            continue
        w = layer.blobs[0].data
        no, ni = w.shape[0], w.shape[1] * layer.group
        if (ni >= 32 or no >= 32) and layer.group < no and w.shape[2] > 2 and w.shape[3] > 2:
            flat = w.reshape(no, -1)
            k = int(round(fraction * flat.shape[1]))
            if k:
                np.put_along_axis(flat, np.argsort(np.abs(flat), axis=1, kind="stable")[:, :k], 0.0, axis=1)
            done.append(name)
    net.repack()
    return done


def packed_ratio(net):
    """(bytes of the packed sparse weights, bytes of those layers' dense float weights, packed layers)."""
    packed = dense = n = 0
    for layer in net.layers:
        pk = getattr(layer, "sparse_pack", None)
        if pk is not None:
            packed += pk.nbytes
            dense += layer.blobs[0].data.nbytes
            n += 1
    return packed, dense, n


def compare(a, net, engines, peers, base_mem):
    """Engines and peers round by round; prints the table and returns the summary."""
    import statistics
    spec = nb.spec_from_net(net, "forward", a.runs, a.threads)
    py = nb.find_peer_python(a.peer_python) if peers else None
    if peers and py is None:
        print("peers: no interpreter with torch found (use --peer-python); caffelite only")
        peers = []
    procs = {}
    try:
        for p in peers:
            procs[p] = nb.Peer(py, spec) if p == "torch" else nb.Peer(py, spec, "_peer_export.py", (p,))
        layouts = {p: (nb.LAYOUTS if p == "torch" else (p,)) for p in procs}
        times = {e: [] for e in engines}
        times.update({f"{p}:{k}": [] for p in procs for k in layouts[p]})
        used = {}
        for e in engines:  # warm-up per engine (packs, workspaces)
            net.engine = e
            net.forward()
        for _ in range(a.runs):
            for e in engines:
                net.engine = e
                time.sleep(nb.GAP_S)
                times[e].append(time_runs(net, 1)[0])
                used[e] = sorted({layer.engine_used for layer in net.layers if getattr(layer, "engine_used", None)})
            for p, proc in procs.items():
                for k in layouts[p]:
                    time.sleep(nb.GAP_S)
                    times[f"{p}:{k}"].append(proc.run(k))
        mems = {p: proc.peak_mem() for p, proc in procs.items()}
        versions = {p: proc.version for p, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.close()
    ours_mem = max(nb.rss_mb(), nb.max_rss_mb()) - base_mem
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {}
    for p in procs:  # a peer's figure: its best layout (by median)
        k = min(layouts[p], key=lambda k: med[f"{p}:{k}"])
        best[p] = (k, med[f"{p}:{k}"])
    from caffelite.ops import native, sparse_conv
    print(f"jsegnet21v2 deploy forward, input {a.shape}, CPU, {a.threads} threads, medians of {a.runs} runs")
    print(f"  {native.info()}; {sparse_conv.info()}")
    for p in procs:
        print(f"  peer {p}: {versions[p]}, peak RSS growth {mems[p]:.0f} MB")
    print(f"  caffelite peak RSS growth {ours_mem:.0f} MB")
    hdr = f"  {'runner':26s} {'median s':>9s} {'min s':>8s}" + "".join(f" {'/' + p:>12s}" for p in best)
    print(hdr)
    rows = [(e, f"caffelite {e} ({'+'.join(used.get(e, []))})") for e in engines]
    rows += [(f"{p}:{k}", f"{p} {k}") for p in procs for k in layouts[p]]
    for key, label in rows:
        ratios = "".join(f" {med[key] / b[1]:11.2f}x" for b in best.values())
        print(f"  {label:26s} {med[key]:9.4f} {min(times[key]):8.4f}{ratios}")
    out = {"medians_s": med, "minima_s": {k: min(v) for k, v in times.items()}, "runs": a.runs,
           "peer_best_layout": {p: b[0] for p, b in best.items()}, "peer_peak_mem_mb": mems,
           "caffelite_peak_mem_mb": ours_mem}
    if "sparse" in engines or "auto" in engines:
        net.engine = "sparse" if "sparse" in engines else "auto"
        pk, dn, n = packed_ratio(net)
        if dn:
            print(f"  packed sparse weights ({net.engine}): {pk / 2**20:.2f} MB for {n} layers whose dense float "
                  f"weights are {dn / 2**20:.2f} MB: {pk / dn:.2f}x")
            out["packed_over_dense_weights"] = pk / dn
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1,3,512,1024")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--weights", default=None, help="a trained caffemodel instead of random weights")
    ap.add_argument("--prune", type=float, default=0.0,
                    help="zero this fraction of each output channel's weights (see above)")
    ap.add_argument("--engine", default="auto", help="comma-separated engines: dense, sparse, int8, auto")
    ap.add_argument("--peers", default=None, help="comma-separated peers: torch, openvino, onnxruntime")
    nb.add_common_args(ap)
    a = ap.parse_args(argv)
    shape = tuple(int(s) for s in a.shape.split(","))
    engines = [e for e in a.engine.split(",") if e]
    peers = [p for p in (a.peers or "").split(",") if p]
    bad = [p for p in peers if p not in ("torch", "openvino", "onnxruntime")]
    if bad:
        ap.error(f"unknown peer {bad[0]} (torch, openvino, onnxruntime)")
    base = nb.rss_mb()
    net = build(shape)
    if a.weights:
        net.copy_from(a.weights)
    if a.prune:
        pruned = prune_eligible(net, a.prune)
        print(f"pruned {len(pruned)} convolutions to {a.prune:.0%} zeros per output channel")
    if a.peers is not None or len(engines) > 1:
        summary = compare(a, net, engines, peers, base)
        if a.profile:
            profile(net, 3)
        nb.write_json(a.json, summary)
        return 0
    net.engine = engines[0]
    net.forward()  # warm-up (allocates the workspaces)
    title = f"jsegnet21v2 deploy forward, input {'x'.join(map(str, shape))}, CPU"
    summary = nb.run_and_report(a, net, "forward", lambda: time_runs(net, 1)[0], base, title)
    if a.profile:
        profile(net, 3)
    nb.write_json(a.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
