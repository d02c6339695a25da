"""PyTorch peer for the caffelite benchmarks (runs in a separate interpreter that has torch; never imported by
caffelite).

Usage: ``python _peer_torch.py SPEC.json`` where SPEC (written by bench/_netbench.py) lists the net's layers
as caffelite built them (type, bottoms, tops, shapes and options), the mode ("forward" or "train") and the
thread count. The same graph is built with torch.nn.functional ops in the default (NCHW) layout and in
channels_last; then the script serves requests on stdin, one per line: a layout name runs one iteration and
answers its time, ``mem`` answers the peak RSS growth, ``quit`` ends.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class Graph:
    """The caffelite layer list as torch functional ops on a dict of named tensors."""

    def __init__(self, torch, spec, channels_last):
        self.torch, self.F = torch, torch.nn.functional
        self.spec = spec
        self.train = spec["mode"] == "train"
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        g = torch.Generator().manual_seed(0)
        self.params = {}
        for L in spec["layers"]:
            ps = []
            for k, shape in enumerate(L.get("param_shapes", [])):
                t = self._init(L["type"], k, shape, g)
                if k == 0 and L.get("zero_fraction"):
                    t = self._prune(t, L["zero_fraction"])
                if len(shape) == 4:
                    t = t.contiguous(memory_format=self.fmt)
                t.requires_grad_(self.train and L.get("lr", [1] * 8)[k] != 0)
                ps.append(t)
            self.params[L["name"]] = ps
        self.learnable = [p for ps in self.params.values() for p in ps if p.requires_grad]

    def _init(self, ltype, k, shape, g):
        """Realistic values (as the caffelite side uses): msra convolutions, bilinear-like deconvolutions,
        identity BatchNorm statistics, the -128 data bias; activations stay in a normal float range (random
        tiny scales would make them denormal and every op slow)."""
        torch = self.torch
        if ltype == "Convolution" and k == 0:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            return torch.randn(*shape, generator=g) * (2.0 / fan_in) ** 0.5
        if ltype == "Deconvolution" and k == 0:
            return torch.full(shape, 0.25)
        if ltype == "BatchNorm":
            return torch.ones(shape) if k in (1, 2, 3) else torch.zeros(shape)
        if ltype == "Bias":
            return torch.full(shape, -128.0)
        return torch.zeros(shape)

    def _prune(self, w, fraction):
        """Zero the ``fraction`` smallest-magnitude weights of each output channel (the caffelite side's
        pruning), so the peer computes with the same share of zeros."""
        flat = w.reshape(w.shape[0], -1).clone()
        k = int(round(fraction * flat.shape[1]))
        if k:
            idx = flat.abs().argsort(dim=1, stable=True)[:, :k]
            flat.scatter_(1, idx, 0.0)
        return flat.reshape(w.shape)

    def inputs(self):
        torch = self.torch
        feed = {}
        for name, shape in self.spec["inputs"].items():
            if name == "label":
                t = torch.randint(0, 5, shape).float()
            else:
                t = torch.rand(*shape) * 255
                t = t.contiguous(memory_format=self.fmt)
            feed[name] = t
        return feed

    def run(self, feed):
        F = self.F
        B = dict(feed)
        loss = None
        for L in self.spec["layers"]:
            t, p = L["type"], self.params[L["name"]]
            bt = [B[b] for b in L["bottoms"]]
            if t in ("Input", "Silence", "Accuracy"):
                continue
            if t == "Split":
                out = [bt[0]] * len(L["tops"])
            elif t == "Convolution":
                out = [F.conv2d(bt[0], p[0], p[1] if len(p) > 1 else None, L["stride"], L["pad"], L["dilation"],
                                L["group"])]
            elif t == "Deconvolution":
                out = [F.conv_transpose2d(bt[0], p[0], p[1] if len(p) > 1 else None, L["stride"], L["pad"], 0,
                                          L["group"], L["dilation"])]
            elif t == "BatchNorm":
                # eval: running statistics; train: batch statistics (the moving averages are updated too)
                out = [F.batch_norm(bt[0], p[0].detach(), p[1].detach(), p[3] if len(p) > 3 else None,
                                    p[4] if len(p) > 4 else None, training=self.train, momentum=0.01,
                                    eps=L["eps"])]
            elif t == "ReLU":
                out = [F.relu(bt[0])]
            elif t == "Bias":
                out = [bt[0] + p[0].view(1, -1, 1, 1)]
            elif t == "Pooling":
                if L["pool"] == "MAX":
                    out = [F.max_pool2d(bt[0], L["kernel"], L["stride"], L["pad"], ceil_mode=L["ceil"])]
                else:
                    out = [F.avg_pool2d(bt[0], L["kernel"], L["stride"], L["pad"], ceil_mode=L["ceil"])]
            elif t == "Eltwise":
                s = bt[0]
                for b in bt[1:]:
                    s = s + b
                out = [s]
            elif t == "ArgMax":
                out = [bt[0].argmax(dim=1, keepdim=True).float()]
            elif t == "SoftmaxWithLoss":
                loss = F.cross_entropy(bt[0], bt[1][:, 0].long(), ignore_index=255)
                out = [loss]
            else:
                raise SystemExit(f"peer: layer type {t} not mapped")
            for name, o in zip(L["tops"], out, strict=True):
                B[name] = o
        return B, loss


def main():
    spec = json.load(open(sys.argv[1]))
    import torch
    torch.set_num_threads(int(spec.get("threads", 2)))
    base = rss_mb()
    graphs = {}
    for cl in (False, True):
        g = Graph(torch, spec, cl)
        feed = g.inputs()
        opt = torch.optim.SGD(g.learnable, lr=1e-6, momentum=0.9, weight_decay=1e-4) if g.train else None
        graphs["channels_last" if cl else "default"] = (g, feed, opt)

    def once(name):
        g, feed, opt = graphs[name]
        t0 = time.perf_counter()
        if g.train:
            opt.zero_grad(set_to_none=False)
            _, loss = g.run(feed)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad():
                g.run(feed)
        return time.perf_counter() - t0

    for name in graphs:  # warm-up
        once(name)
    # serve: one line per request, so the caller can interleave our runs with its own (the machine's speed
    # drifts; alternating run by run is the only fair comparison)
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd == "mem":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
            print(json.dumps({"peak_rss_growth_mb": peak}), flush=True)
            continue
        print(json.dumps({"layout": cmd, "time": once(cmd)}), flush=True)


if __name__ == "__main__":
    main()
