"""Measurement: the int8 engine against the float simulation on a flagship run's final model and val images.

    python bench/int8_agreement.py RUN_DIR [--images N] [--layers 10] [--json OUT]

RUN_DIR is a ``caffelite flagship`` output folder. Both engines run ``stages/test_quantize/deploy.prototxt``
with the sparse stage's final caffemodel and the same frozen ranges: the ones the quantized stage calibrated
(``stages/test_quantize/quant_ranges.json``; for a run written before that file existed they are recomputed
the same way, into a temporary folder; RUN_DIR is only read). Each net first runs one forward of zeros (jacinto
quantizes the weights at the end of forward ``quantization_start``; with frozen ranges the input is
irrelevant), then every val image of the list:

- ArgMax agreement over all pixels at the net's output size;
- pixel accuracy and mean IoU in jacinto's convention (caffelite.segmentation.metrics) of each engine at the label size;
- per layer, teacher-forced (each integer step reads the simulation's integers of its inputs): how many output
  elements differ from the simulation's integers (a third net);
- free-running (the engine's own integers): the fraction of each blob's elements that differ, in net order,
  which shows where the flips cascade;
- what exact sums change: the simulation sums its quantized convolutions exactly (``exact_sums``, the default);
  the same simulation with float32 sums (the compiled kernels' order, as jacinto's float32 sums in cuDNN's
  order) is compared with it and with the int8 engine.

Goals: agreement >= 99.9 %, mean IoU within 0.05 points. Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import tempfile

import numpy as np

GOAL_AGREEMENT = 0.999
GOAL_MIOU_POINTS = 0.05


def run_files(run_dir):
    """(deploy prototxt, final sparse caffemodel, val image list, val label list, ranges file or None)."""
    stage = os.path.join(run_dir, "stages", "test_quantize")
    deploy = os.path.join(stage, "deploy.prototxt")
    models = glob.glob(os.path.join(run_dir, "stages", "sparse", "*_iter_*.caffemodel"))
    if not os.path.exists(deploy) or not models:
        raise SystemExit(f"{run_dir}: not a finished flagship run (need stages/test_quantize/deploy.prototxt and "
                         "stages/sparse/*_iter_N.caffemodel)")
    weights = max(models, key=lambda p: int(re.search(r"_iter_(\d+)\.caffemodel$", p).group(1)))
    lists = os.path.join(run_dir, "data", "lists")
    ranges = os.path.join(stage, "quant_ranges.json")
    return (deploy, weights, os.path.join(lists, "val-image-list.txt"), os.path.join(lists, "val-label-list.txt"),
            ranges if os.path.exists(ranges) else None)


class _EngineNet:
    """What :class:`~caffelite.segmentation.infer.Segmenter` calls (``forward(**inputs)``), run by the int8 engine."""

    def __init__(self, engine):
        self.engine = engine

    def forward(self, **inputs):
        return self.engine.forward(**inputs)


def _quantized(deploy, weights, ranges, engine, exact_sums=True):
    """A Segmenter of the deploy net with the loaded ranges, after one forward of zeros; run by the int8 engine
    when ``engine`` (then also returns the engine); ``exact_sums`` False: the simulation's convolutions sum in
    float32."""
    from caffelite import jacinto
    from caffelite.segmentation.infer import Segmenter
    from caffelite.jacinto.int8_engine import Int8Net

    seg = Segmenter(deploy, weights)
    hook = jacinto.attach_quantization(seg.net)
    hook.exact_sums = exact_sums
    hook.load_ranges(ranges)
    zeros = {seg.input: np.zeros(seg.shape, np.float32)}
    if not engine:
        seg.net.forward(**zeros)  # forward quantization_start: the weights are quantized at its end
        return seg, None
    eng = Int8Net(seg.net, hook)
    eng.forward(**zeros)
    seg.net = _EngineNet(eng)
    return seg, eng


def measure(deploy, weights, image_list, label_list, ranges, num_images=0, num_classes=5):
    """The figures described in the module docstring, as a dict. Three nets, each one forward per image (so
    their parameters follow the same per-forward sequence): the simulation, the free-running engine and the
    teacher-forced engine."""
    from caffelite.segmentation.infer import _read_label, load_image
    from caffelite.segmentation.lmdbs import _load_pair_lists
    from caffelite.segmentation.metrics import ConfusionAccumulator
    from caffelite.data.imageops import resize_lanczos_pil
    from caffelite.jacinto.int8_engine import simulation_ints

    sim, _ = _quantized(deploy, weights, ranges, False)
    free_seg, free_eng = _quantized(deploy, weights, ranges, True)
    _, forced_eng = _quantized(deploy, weights, ranges, True)
    f32, _ = _quantized(deploy, weights, ranges, False, exact_sums=False)
    imgs, labs = _load_pair_lists(image_list, label_list)
    if num_images:
        imgs, labs = imgs[:num_images], labs[:num_images]
    acc = {"simulation": ConfusionAccumulator(num_classes), "int8": ConfusionAccumulator(num_classes)}
    same = total = same_f32_sim = same_f32_int8 = 0
    forced = {}  # blob -> [differing, elements]
    free = {}  # blob -> [differing, elements], in net order
    _, c, h, w = sim.shape
    for ip, lp in zip(imgs, labs, strict=True):
        chw = load_image(ip, is_color=c != 1)
        lab = _read_label(lp, label_list)
        acc["simulation"].update(lab, sim.predict(chw, ip), source=lp)
        acc["int8"].update(lab, free_seg.predict(chw, ip), source=lp)
        a = sim.net.blobs[sim.output].data
        b = free_eng.net.blobs[sim.output].data
        same += int(np.count_nonzero(a == b))
        total += a.size
        c_ = f32.net.forward(**{f32.input: free_eng.net.blobs[sim.input].data})[sim.output]
        same_f32_sim += int(np.count_nonzero(c_ == a))
        same_f32_int8 += int(np.count_nonzero(c_ == b))
        sint = simulation_ints(sim.net)
        for blob, s in sint.items():
            mine = free_eng.ints.get(blob)
            if mine is not None and mine.shape == s.shape:
                f = free.setdefault(blob, [0, 0])
                f[0] += int(np.count_nonzero(mine != s))
                f[1] += s.size
        x = np.zeros(sim.shape, np.float32)
        x[0] = chw if chw.shape[1:] == (h, w) else resize_lanczos_pil(chw, h, w)  # what Segmenter.predict feeds
        forced_eng.forward(teacher=sint, **{sim.input: x})
        for blob, (m, size) in forced_eng.mismatch.items():
            f = forced.setdefault(blob, [0, 0])
            f[0] += m
            f[1] += size
    scores = {k: a.scores()["jacinto"] for k, a in acc.items()}
    out = {"images": len(imgs), "pixels": total, "agreement": same / total if total else float("nan"),
           "float32_sums_vs_simulation": same_f32_sim / max(total, 1),
           "float32_sums_vs_int8": same_f32_int8 / max(total, 1)}
    for k, s in scores.items():
        out[k] = {"pixel_accuracy": float(s["pixel_accuracy"]), "mean_iou": float(s["mean_iou"])}
    out["miou_points"] = 100 * (out["int8"]["mean_iou"] - out["simulation"]["mean_iou"])
    out["teacher_forced"] = {b: {"differ": v[0], "elements": v[1]} for b, v in forced.items()}
    out["free_running"] = [{"blob": b, "differ": v[0], "elements": v[1]} for b, v in free.items()]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--images", type=int, default=0, help="first N val images (default: all)")
    ap.add_argument("--layers", type=int, default=10, help="rows of the per-layer tables")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    from caffelite import log
    log.set_log_level("WARNING")  # the nets' set-up lines would bury the figures
    from caffelite.pipeline.segmentation import calibrate_ranges

    deploy, weights, il, ll, ranges = run_files(args.run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if ranges is None:
            print("no quant_ranges.json in the run: calibrating as the quantized stage does", flush=True)
            ranges = calibrate_ranges(deploy, weights, il, ll, os.path.join(tmp, "quant_ranges.json"),
                                      args.images)
        r = measure(deploy, weights, il, ll, ranges, args.images)
    print(f"model {weights}\nranges {ranges if os.path.exists(ranges) else '(recomputed)'}")
    print(f"{r['images']} images, {r['pixels']} output pixels")
    print(f"ArgMax agreement int8 vs simulation: {100 * r['agreement']:.4f} % (goal >= {100 * GOAL_AGREEMENT} %)")
    for k in ("simulation", "int8"):
        print(f"  {k:>10}: pixel accuracy {100 * r[k]['pixel_accuracy']:.4f} %, mean IoU "
              f"{100 * r[k]['mean_iou']:.4f} %")
    print(f"ArgMax agreement of the simulation with float32 conv sums: with the (exact-sum) simulation "
          f"{100 * r['float32_sums_vs_simulation']:.4f} %, with int8 {100 * r['float32_sums_vs_int8']:.4f} %")
    print(f"mean IoU difference: {r['miou_points']:+.4f} points (goal within {GOAL_MIOU_POINTS})")
    tf = sorted(r["teacher_forced"].items(), key=lambda kv: -kv[1]["differ"])
    n_diff = sum(v["differ"] for _, v in tf)
    n_all = sum(v["elements"] for _, v in tf)
    print(f"teacher-forced: {n_diff} of {n_all} integer outputs differ ({n_diff / max(n_all, 1):.2e}); worst layers:")
    for b, v in tf[: args.layers]:
        if v["differ"]:
            print(f"  {b:>28}: {v['differ']:>7} of {v['elements']:>9} ({v['differ'] / v['elements']:.2e})")
    print("free-running (the engine's own integers), fraction differing per blob in net order:")
    for row in r["free_running"]:
        if row["differ"]:
            print(f"  {row['blob']:>28}: {row['differ'] / row['elements']:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    ok = r["agreement"] >= GOAL_AGREEMENT and abs(r["miou_points"]) <= GOAL_MIOU_POINTS
    print("goals met" if ok else "GOAL MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
