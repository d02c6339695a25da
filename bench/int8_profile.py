"""Per-layer profile of the int8 engine on jsegnet21v2 (the net and weights of bench/int8_forward.py).

    python bench/int8_profile.py [--shape 1,3,512,1024] [--runs 5] [--sparsity 0.8] [--threads 2] [--weight-bits 8]
                                 [--weights W.caffemodel [--ranges quant_ranges.json]] [--compare-glue]
                                 [--compare-kernels]

Runs the engine's steps one by one with a timer around each (the same calls :class:`Int8Net.forward` makes)
and splits every integer convolution into input packing, group sums (weight zero-point correction) and the
kernel (multiply-adds and the requantising epilogue). Prints the median per step and per category.
``--compare-glue``: also profiles, interleaved forward by forward, the engine with the non-convolution steps on
their NumPy path (``Int8Net(compiled=False)``) and prints both (same integers; a check says so).
``--compare-kernels``: also the engine with the dense and with the sparse integer kernel on every layer, and per
convolution the three times side by side (does the automatic choice pick the faster kernel?).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __name__ == "__main__" and "--threads" in sys.argv:  # must be set before NumPy loads OpenBLAS
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]
    os.environ.setdefault("CAFFELITE_NUM_THREADS", sys.argv[sys.argv.index("--threads") + 1])

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from int8_forward import add_net_args, quantized_net, warm_until_chosen  # noqa: E402


#: category -> seconds of the instrumented calls since the last clear (filled by the wrappers of _instrument)
_ACC = {}


def _instrument(acc):
    """Wrap the int8 op's packing and kernel calls so their time lands in ``acc[category]``."""
    from caffelite.ops import int8 as i8op
    lib = i8op._LIB
    names = {id(lib.lib.ci8_group_sums): "gsum", id(lib.lib.ci8_group_sums4): "gsum",
             id(lib.lib.ci8_sparse_fwd): "kernel"}
    for fn in ("ci8_pack16", "ci8_pack8", "ci8_planar_sums"):  # the sparse kernels' planar packing, group sums
        if hasattr(lib.lib, fn):
            names[id(getattr(lib.lib, fn))] = "pack"

    def timed(cat, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[cat] = acc.get(cat, 0.0) + time.perf_counter() - t0
        return wrapper

    i8op.pack_input = timed("pack", i8op.pack_input)
    i8op.pack_input4 = timed("pack", i8op.pack_input4)
    run = lib.run

    def run_wrapper(args, ntasks, isa, fn=None):
        cat = names.get(id(fn), "kernel") if fn is not None else "kernel"
        if fn is lib.lib.ci8_pack or fn is lib.lib.ci8_pack4 or fn is lib.lib.ci8_quantize:
            return run(args, ntasks, isa, fn)
        t0 = time.perf_counter()
        try:
            return run(args, ntasks, isa, fn)
        finally:
            acc[cat] = acc.get(cat, 0.0) + time.perf_counter() - t0
    lib.run = run_wrapper


def profile_forward(eng, x, per):
    """One forward of Int8Net ``eng`` step by step (Int8Net.forward's loop), times into ``per``."""
    net = eng.net
    blob = net.blobs[net.inputs[0]]
    blob.data[...] = x
    eng._begin()
    ints = {}
    for st in eng._steps:
        kind, i, last = st[0], st[1], st[2]
        name = net.layers[i].param.name if last == i else f"{net.layers[i].param.name}..{net.layers[last].param.name}"
        sub = {}
        _ACC.clear()
        t0 = time.perf_counter()
        eng.run_step(st, ints)
        if kind == "conv":
            pc = st[3]
            sub = dict(_ACC)
            kind = "conv-sparse" if pc.sparse else ("conv-u8" if getattr(getattr(pc, "dense", pc), "quads", False)
                                                     else "conv")
        elif kind == "deconv":
            kind = f"deconv-{st[3].mode}" + ("+argmax" if last > i else "")
        elif kind not in ("split", "lut", "pool", "argmax", "eltwise", "bias"):
            kind = f"float:{net.layers[i].type}"
        dt = time.perf_counter() - t0
        rec = per.setdefault(name, {"kind": kind, "total": [], "sub": {}})
        rec["total"].append(dt)
        for k, v in sub.items():
            rec["sub"].setdefault(k, []).append(v)
    eng._end()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_net_args(ap)
    ap.add_argument("--compare-glue", action="store_true")
    ap.add_argument("--compare-kernels", action="store_true")
    a = ap.parse_args(argv)
    from caffelite.jacinto.int8_engine import Int8Net
    qnet, x, hook = quantized_net(a)
    _instrument(_ACC)
    engines = {"compiled": Int8Net(qnet)}
    if a.compare_glue:
        engines["numpy glue"] = Int8Net(qnet, compiled=False)
    if a.compare_kernels:
        engines["dense kernels"] = Int8Net(qnet, sparse=False)
        engines["sparse kernels"] = Int8Net(qnet, sparse=True)
    labels = {}
    state = hook.get_state()
    for name, eng in engines.items():
        for _ in range(2):
            eng.forward(data=x)
        warm_until_chosen(eng, lambda e=eng: e.forward(data=x))  # the dense/sparse choices
        hook.set_state(state)  # the same forward for each engine (some scales alternate between forwards)
        labels[name] = eng.forward(data=x)[qnet.outputs[0]].copy()
    if len(engines) > 1:
        same = all(np.array_equal(v, labels["compiled"]) for v in labels.values())
        print(f"net outputs of the engines identical: {same}")
    whole = {k: [] for k in engines}
    per = {k: {} for k in engines}
    for _ in range(a.runs):
        for name, eng in engines.items():
            time.sleep(0.05)
            t0 = time.perf_counter()
            eng.forward(data=x)
            whole[name].append(time.perf_counter() - t0)
    for _ in range(a.runs):
        for name, eng in engines.items():
            time.sleep(0.05)
            profile_forward(eng, x, per[name])
    for name in engines:
        if len(engines) > 1:
            print(f"\n=== {name} ===")
        report(whole[name], per[name])
    if a.compare_kernels:
        compare_kernels(per)


def compare_kernels(per):
    """Per convolution step: the automatic engine's kind and time beside the dense and sparse engines' times."""
    print(f"\n{'convolution':44s} {'auto picks':12s} {'auto':>7s} {'dense':>7s} {'sparse':>7s}  (ms)")
    worse = 0.0
    for name, rec in per["compiled"].items():
        if not rec["kind"].startswith("conv"):
            continue
        t = {k: float(np.median(per[k][name]["total"])) * 1e3 for k in ("compiled", "dense kernels", "sparse kernels")}
        worse += t["compiled"] - min(t["dense kernels"], t["sparse kernels"])
        print(f"{name[:44]:44s} {rec['kind']:12s} {t['compiled']:7.2f} {t['dense kernels']:7.2f} "
              f"{t['sparse kernels']:7.2f}")
    print(f"auto minus the faster kernel, summed over the convolutions: {worse:+.2f} ms")


def report(whole, per):
    """Print the medians of one engine's profile."""
    print(f"whole forward (Int8Net.forward) median {np.median(whole) * 1e3:.1f} ms; load {os.getloadavg()[0]:.2f}")
    print(f"{'step':44s} {'kind':16s} {'ms':>7s}  split (ms)")
    cats = {}
    rows = sorted(per.items(), key=lambda kv: -np.median(kv[1]["total"]))
    tot = 0.0
    for name, rec in rows:
        t = float(np.median(rec["total"])) * 1e3
        tot += t
        subs = {k: float(np.median(v)) * 1e3 for k, v in rec["sub"].items()}
        rest = t - sum(subs.values())
        for k, v in subs.items():
            cats[k] = cats.get(k, 0.0) + v
        other = "other:" + rec["kind"].split(":")[0] if subs else rec["kind"]
        cats[other] = cats.get(other, 0.0) + rest
        print(f"{name[:44]:44s} {rec['kind'][:16]:16s} {t:7.2f}  " + " ".join(f"{k}={v:.2f}" for k, v in subs.items()))
    print(f"sum of steps {tot:.1f} ms; by category:")
    for k, v in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"  {k:24s} {v:7.2f} ms")


if __name__ == "__main__":
    main()
