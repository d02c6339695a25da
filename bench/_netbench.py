"""Shared helpers of bench/deploy_forward.py and bench/train_step.py: memory probes, the layer spec handed to
the PyTorch peer (bench/_peer_torch.py, run in an interpreter that has torch: torch is never a caffelite
dependency), and the report.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REF = os.path.join(ROOT, "tests", "data", "reference", "cityscapes5_jsegnet21v2")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def find_peer_python(explicit=None):
    """An interpreter that imports torch: --peer-python, $CAFFELITE_PEER_PYTHON, /work/torchvenv, or this one."""
    cands = [explicit, os.environ.get("CAFFELITE_PEER_PYTHON"), "/work/torchvenv/bin/python", sys.executable,
             shutil.which("python3")]
    for c in cands:
        if c and os.path.exists(c):
            r = subprocess.run([c, "-c", "import torch"], capture_output=True)
            if r.returncode == 0:
                return c
    return None


def _pair(v):
    return [int(v[0]), int(v[1])]


def spec_from_net(net, mode, runs, threads=2):
    """Describe the built caffelite Net layer by layer for the peer (types, blobs, shapes, options)."""
    layers = []
    for name, layer in zip(net._layer_names, net.layers, strict=True):
        L = {"name": name, "type": layer.type, "bottoms": list(net.bottom_names[name]),
             "tops": list(net.top_names[name]), "param_shapes": [list(b.shape) for b in layer.blobs]}
        lp = layer.param
        L["lr"] = [ps.lr_mult if ps.HasField("lr_mult") else 1.0 for ps in lp.param] + [1.0] * 8
        t = layer.type
        if t in ("Convolution", "Deconvolution"):
            g = layer.geom
            L.update(stride=[g.sh, g.sw], pad=[g.ph, g.pw], dilation=[g.dh, g.dw], group=layer.group)
            if t == "Convolution":  # the peers prune theirs to the same share of zeros
                w = layer.blobs[0].data
                L["zero_fraction"] = 1.0 - int((w != 0).sum()) / w.size if w.size else 0.0
        elif t == "Pooling":
            L.update(kernel=_pair(layer.kernel), stride=_pair(layer.stride), pad=_pair(layer.pad),
                     pool="MAX" if lp.pooling_param.pool == 0 else "AVE", ceil=bool(layer.ceil_mode))
        elif t == "BatchNorm":
            L.update(eps=max(float(lp.batch_norm_param.eps), 1e-5))
        layers.append(L)
    inputs = {n: list(net.blobs[n].shape) for n in net.inputs}
    return {"mode": mode, "runs": runs, "warmup": 1, "threads": threads, "layers": layers, "inputs": inputs}


class Peer:
    """A peer as a child process serving one timed iteration per request: the PyTorch peer by default,
    ``script="_peer_export.py", args=("openvino",)`` (or ``"onnxruntime"``) for the converted ones."""

    def __init__(self, python, spec, script="_peer_torch.py", args=()):
        self.spec_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(spec, self.spec_file)
        self.spec_file.close()
        env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
        self.proc = subprocess.Popen([python, os.path.join(HERE, script), self.spec_file.name, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        hello = self._read()
        self.version = hello.get("torch")

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the torch peer exited early (see its stderr above)")
        return json.loads(line)

    def _ask(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self, layout):
        return self._ask(layout)["time"]

    def peak_mem(self):
        return self._ask("mem")["peak_rss_growth_mb"]

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        finally:
            os.unlink(self.spec_file.name)


LAYOUTS = ("default", "channels_last")


#: idle time before each timed run: a run's worker threads (libgomp's, OpenBLAS's) keep spinning for a few ms
#: after it returns, and without a gap they would steal a core from the next run (the other process's)
GAP_S = 0.05


def interleaved(run_ours, peer, runs):
    """Alternate run by run: ours, torch default, torch channels_last (the machine's speed drifts), each after
    an idle gap of :data:`GAP_S`."""
    ours, theirs = [], {k: [] for k in LAYOUTS}
    for _ in range(runs):
        time.sleep(GAP_S)
        ours.append(run_ours())
        if peer is not None:
            for k in LAYOUTS:
                time.sleep(GAP_S)
                theirs[k].append(peer.run(k))
    return ours, (theirs if peer is not None else {})


def report(title, ours, peer_runs, ours_mem, peer_mem):
    """Print medians (and minima: the machine's speed drifts, the minimum is the least disturbed run), the best
    peer layout and the caffelite/peer ratios; return the summary dict."""
    med, low = statistics.median(ours), min(ours)
    out = {"caffelite_median_s": med, "caffelite_min_s": low, "caffelite_runs": len(ours),
           "caffelite_peak_mem_mb": ours_mem}
    print(f"{title}")
    from caffelite.ops import native
    print(f"  {native.info()}")
    print(f"  caffelite           : median {med:.4f} s, min {low:.4f} s over {len(ours)} runs, "
          f"peak memory growth {ours_mem:.0f} MB")
    if peer_runs:
        best_name, best, best_min = None, None, None
        for name, times in peer_runs.items():
            m = statistics.median(times)
            print(f"  torch {name:14s}: median {m:.4f} s, min {min(times):.4f} s over {len(times)} runs")
            if best is None or m < best:
                best_name, best = name, m
            best_min = min(times) if best_min is None else min(best_min, min(times))
        # paired: each of our runs against the peer's runs right after it (same machine conditions)
        paired = statistics.median(o / min(peer_runs[k][r] for k in peer_runs) for r, o in enumerate(ours))
        out.update(peer_median_s=best, peer_min_s=best_min, peer_layout=best_name, peer_peak_mem_mb=peer_mem,
                   time_ratio=med / best, time_ratio_min=low / best_min, time_ratio_paired=paired,
                   mem_ratio=ours_mem / peer_mem if peer_mem else None)
        print(f"  ratio caffelite/torch: time {med / best:.2f}x (medians; torch {best_name}), "
              f"{low / best_min:.2f}x (minima), {paired:.2f}x (median of run-by-run pairs); "
              f"peak memory {ours_mem:.0f}/{peer_mem:.0f} MB = {out['mem_ratio']:.2f}x")
    return out


def add_common_args(ap):
    """The options deploy_forward.py and train_step.py share: the peer, threads, profile and JSON output."""
    ap.add_argument("--peer", choices=["torch"], default=None)
    ap.add_argument("--peer-python", default=None)
    ap.add_argument("--threads", type=int, default=2,
                    help="threads for both sides (OpenBLAS for caffelite, torch.set_num_threads for the peer)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", default=None, help="also write the summary here")


def run_and_report(a, net, mode, run_ours, base_mem, title):
    """Time ``run_ours`` ``a.runs`` times, interleaved with the peer when ``a.peer`` asks for one, and print
    :func:`report`; ``base_mem`` is the RSS before the net was built. Returns the summary dict."""
    peer_py = find_peer_python(a.peer_python) if a.peer else None
    if a.peer and peer_py is None:
        print("peer: no interpreter with torch found (use --peer-python); running caffelite only")
    peer = Peer(peer_py, spec_from_net(net, mode, a.runs, a.threads)) if peer_py else None
    try:
        ours, peer_runs = interleaved(run_ours, peer, a.runs)
        peak = max(rss_mb(), max_rss_mb()) - base_mem
        peer_mem = peer.peak_mem() if peer else 0.0
    finally:
        if peer:
            peer.close()
    return report(title, ours, peer_runs, peak, peer_mem)


def write_json(path, summary):
    """Write ``summary`` to ``path`` (nothing when ``path`` is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=1)
