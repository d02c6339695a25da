"""The flagship flow: Cityscapes (or a synthetic look-alike) → lists → LMDBs → five stages → overlays → table.

Python 3 counterpart of caffe-jacinto-models' ``train_cityscapes_segmentation.sh`` (docs/jacinto-spec.md §g): every
stage is run with ``caffelite train`` / ``caffelite test`` (its log in ``<stage>/run.log.txt``), evaluated with
the deploy net (pixel accuracy and mean IoU in jacinto's convention, §g.4), and summarised in the seed's
table, followed by the final model's forward time per engine (float dense / sparse, int8, sparse + int8).
Each stage is resumable: a finished stage is skipped, an interrupted one resumes from its last snapshot.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import CaffeliteError
from ..io.files import atomic_write
from .stages import STAGES, TRAIN_STAGES, StageConfig, write_stage

PREFIX = "cityscapes5_jsegnet21v2"
#: the quantized stage's calibrated ranges (a ``save_ranges`` file of its deploy net), in its stage folder
RANGES_FILE = "quant_ranges.json"
#: forwards per engine for the speed table (after one warm-up each; the median is reported)
SPEED_RUNS = 5


@dataclass
class RunConfig:
    """Options of a whole run (defaults = the seed's full Cityscapes schedule)."""

    out: str
    dataset_root: str | None = None  # None: generate a synthetic Cityscapes-like set
    synthetic_train: int = 200
    synthetic_val: int = 40
    synthetic_size: tuple = (2048, 1024)  # W, H
    resize: tuple | None = None  # (W, H) resize of records in the LMDBs (None: full resolution)
    weights: str | None = None  # pretrained (ImageNet jacintonet11v2); None: train from scratch
    stage: StageConfig | None = None
    eval_images: int | None = None
    overlays: int = 4
    seed: int = 1
    extra_train_args: list = field(default_factory=list)


class StageError(CaffeliteError, RuntimeError):
    """A flagship stage's ``caffelite`` command failed, or training left no final snapshot: ``stage``, ``command``
    (the arguments after ``caffelite``), ``returncode``, ``log_path`` (None where moot), its last output ``tail``."""

    def __init__(self, stage, message, command=None, returncode=None, log_path=None, tail=""):
        where = f"stage '{stage}': " if stage else ""
        super().__init__(where + message + (f"\n{tail}" if tail else ""))
        self.stage, self.command, self.returncode, self.log_path, self.tail = stage, command, returncode, log_path, tail


def _caffelite(args, log_path=None, cwd=None, echo=None, stage=None):
    """Run ``caffelite ARGS`` in a subprocess (tee its output to ``log_path``); raise :class:`StageError` naming
    ``stage``, the command and its exit status when it fails."""
    args = [str(a) for a in args]
    cmd = [sys.executable, "-m", "caffelite", *args]
    last = []
    with open(log_path, "a") if log_path else contextlib.nullcontext() as out, \
            subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            for line in proc.stdout:
                if out:
                    out.write(line)
                    out.flush()
                last = (last + [line.rstrip()])[-20:]
                if echo and echo(line):
                    print("    " + line.rstrip(), flush=True)
        except Exception:
            # e.g. the log's disk is full: stop the child rather than wait for a whole stage (Ctrl-C is not
            # caught here: the child gets the same SIGINT and handles it itself)
            proc.kill()
            raise
    rc = proc.returncode  # leaving the Popen block closed its stdout and waited for it
    if rc != 0:
        log = f" (log: {log_path})" if log_path else ""
        raise StageError(stage, f"`caffelite {' '.join(args)}` failed with exit status {rc}{log}", command=args,
                         returncode=rc, log_path=log_path, tail="\n".join(last))


def _echo_train(line: str) -> bool:
    pat = r"Iteration \d+ \(|Test net output|Total Sparsity|Optimization Done|Snapshotting to binary"
    return bool(re.search(pat, line))


def latest_snapshot(stage_dir: str, ext: str):
    """(iteration, path) of the newest ``<prefix>_iter_N.<ext>`` in ``stage_dir``, or (0, None); a solverstate
    counts only when complete (its caffemodel and sidecar are there: :func:`caffelite.solvers.snapshot.is_complete`).
    """
    from ..solvers.snapshot import is_complete

    best = (0, None)
    for p in glob.glob(os.path.join(stage_dir, f"{PREFIX}_iter_*.{ext}")):
        m = re.search(r"_iter_(\d+)\." + re.escape(ext) + "$", p)
        if ext == "solverstate" and not is_complete(p):
            continue
        if m and int(m.group(1)) > best[0]:
            best = (int(m.group(1)), p)
    return best


def zero_weight_fraction(weights_path: str, deploy_path: str, version: str = "0.17") -> float:
    """Fraction of exactly-zero weights over the Convolution layers jacinto prunes (§a.3 eligibility).

    That is the population the sparsity target applies to; the 1x1, depthwise and tiny convolutions that
    jacinto never thresholds are left out.
    """
    from .. import io as cio
    from ..jacinto.sparsity_stats import kernel_hw
    from ..jacinto.threshold import is_eligible

    net = cio.read_net(deploy_path)
    conv = {lay.name: lay for lay in net.layer if lay.type == "Convolution"}
    zeros = total = 0
    for lay in cio.read_weights(weights_path).layer:
        if lay.name in conv and len(lay.blobs):
            w = cio.blob_to_array(lay.blobs[0])
            cp = conv[lay.name].convolution_param
            g = int(cp.group)
            no, ni = int(w.shape[0]), int(w.shape[1]) * g if w.ndim > 1 else int(w.size)
            kh, kw = kernel_hw(cp)
            if not is_eligible(ni, no, g, kh, kw, version):
                continue
            zeros += int(np.count_nonzero(w == 0))
            total += w.size
    return zeros / max(total, 1)


# --------------------------------------------------------------------------------------------------------
# presets and configuration

#: the README's quick run: small synthetic set, small crops, scaled-down stages (CPU, ~12 min on 2 cores).
#: Trained from scratch, so the initial stage warms up (NVCaffe rampup, §c.1): without it a minority class's
#: ctx_final channel can die behind its ReLU in the first iterations. A 300-iteration L1 stage cannot make the
#: weights as peaked as the seed's 60k iterations do, so the sparse stage lifts jacinto's per-channel threshold
#: cap (sparsity_threshold_maxratio 0.2 -> 0.5, §a.3) to reach the 80% target in a short schedule.
QUICK = dict(synthetic_train=160, synthetic_val=24, synthetic_size=(256, 128), batch_size=8, test_batch_size=8,
             crop=128, deploy_wh=(256, 128), iters=(1500, 300, 1200), base_lr=0.05, display=50,
             snapshot=250, test_interval=100000, rampup=(100, 0.001),
             sparsity=dict(start_iter=20, start_factor=0.5, step_iter=10, step_factor=0.02, display=100,
                           maxratio=0.5))
#: the seed's full run (docs/jacinto-spec.md §g.5)
FULL = dict(synthetic_train=2975, synthetic_val=500, synthetic_size=(2048, 1024), batch_size=16,
            test_batch_size=4, crop=640, deploy_wh=(1024, 512), iters=(120000, 60000, 60000), base_lr=1e-2,
            display=100, snapshot=10000, test_interval=2000, rampup=(0, 0.0),
            sparsity=dict(start_iter=1000, start_factor=0.6, step_iter=1000, step_factor=0.01, display=1000,
                          maxratio=None))


def _wh(text):
    from ..segmentation.sizes import parse_size

    return parse_size(text)


def config_from_args(args) -> RunConfig:
    """A RunConfig from ``caffelite flagship`` options (preset: --quick or the seed's full run)."""
    pre = dict(QUICK if args.quick else FULL)
    deploy_wh = _wh(args.deploy_size) if args.deploy_size else pre["deploy_wh"]
    iters = pre["iters"]
    if args.iters:
        iters = tuple(int(v) for v in args.iters.split(","))
        if len(iters) != 3:
            raise CaffeliteError("--iters takes three numbers: INITIAL,L1REG,SPARSE")
    sp = pre["sparsity"]
    stage = StageConfig(
        train_image_lmdb="", train_label_lmdb="", val_image_lmdb="", val_label_lmdb="", num_val_images=0,
        batch_size=args.batch_size or pre["batch_size"], test_batch_size=args.test_batch_size or pre["test_batch_size"],
        crop=args.crop or pre["crop"], deploy_hw=(deploy_wh[1], deploy_wh[0]), base_lr=pre["base_lr"],
        iters={"initial": iters[0], "l1reg": iters[1], "sparse": iters[2]}, display=pre["display"],
        snapshot=pre["snapshot"], test_interval=pre["test_interval"], sparsity_start_iter=sp["start_iter"],
        sparsity_start_factor=sp["start_factor"], sparsity_step_iter=sp["step_iter"],
        sparsity_step_factor=sp["step_factor"], display_sparsity=sp["display"], gpus=args.gpus,
        rampup_interval=pre["rampup"][0], rampup_lr=pre["rampup"][1],
        sparsity_threshold_maxratio=sp["maxratio"])
    return RunConfig(
        out=args.out, dataset_root=args.dataset_root,
        synthetic_train=args.synthetic_train or pre["synthetic_train"],
        synthetic_val=args.synthetic_val or pre["synthetic_val"],
        synthetic_size=_wh(args.synthetic_size) if args.synthetic_size else pre["synthetic_size"],
        resize=_wh(args.resize) if args.resize else None, weights=args.weights, stage=stage, seed=args.seed)


# --------------------------------------------------------------------------------------------------------
# steps


def prepare_data(cfg: RunConfig) -> dict:
    """Dataset (synthetic when no root) → lists → image/label LMDBs; returns the paths. Idempotent."""
    from ..segmentation.cityscapes import create_lists
    from ..segmentation.lmdbs import create_segmentation_lmdbs

    data = os.path.join(cfg.out, "data")
    os.makedirs(data, exist_ok=True)
    root = cfg.dataset_root
    if root is None:
        root = os.path.join(data, "cityscapes")
        if not os.path.exists(os.path.join(root, ".complete")):
            from ..segmentation.synthetic import generate_dataset

            print(f"[data] synthetic Cityscapes: {cfg.synthetic_train} train + {cfg.synthetic_val} val images, "
                  f"{cfg.synthetic_size[0]}x{cfg.synthetic_size[1]} -> {root}", flush=True)
            generate_dataset(root, cfg.synthetic_train, cfg.synthetic_val, cfg.synthetic_size, seed=cfg.seed)
            atomic_write(os.path.join(root, ".complete"), b"")
    lists = os.path.join(data, "lists")
    if not os.path.exists(os.path.join(lists, ".complete")):
        print(f"[data] lists and 5-class labels -> {lists}", flush=True)
        create_lists(root, lists)
        atomic_write(os.path.join(lists, ".complete"), b"")
    paths = {}
    for split in ("train", "val"):
        il, ll = (os.path.join(lists, f"{split}-{k}-list.txt") for k in ("image", "label"))
        ilmdb, llmdb = (os.path.join(data, f"{split}-{k}-lmdb") for k in ("image", "label"))
        paths[split] = dict(image_list=il, label_list=ll, image_lmdb=ilmdb, label_lmdb=llmdb)
        marker = os.path.join(data, f".{split}-lmdb-complete")
        if not os.path.exists(marker):
            print(f"[data] {split} LMDBs -> {ilmdb}, {llmdb}", flush=True)
            for p in (ilmdb, llmdb):
                if os.path.exists(p):
                    import shutil
                    shutil.rmtree(p)
            n = create_segmentation_lmdbs(il, ll, ilmdb, llmdb, seed=1, shuffle=True, size=cfg.resize, num_classes=5)
            atomic_write(marker, str(n))
        with open(marker) as f:
            paths[split]["count"] = int(f.read())
    return paths


def _train_stage(stage, stage_dir, init_weights, cfg: RunConfig):
    """Train ``stage`` to its max_iter (resuming from its newest snapshot); return the final caffemodel."""
    final_iter = cfg.stage.iters[stage]
    it, state = latest_snapshot(stage_dir, "solverstate")
    if it < final_iter:
        args = ["train", "--solver", "solver.prototxt"]
        if state:
            print(f"[{stage}] resuming from {os.path.basename(state)}", flush=True)
            args += ["--snapshot", os.path.basename(state)]
        elif init_weights:
            args += ["--weights", os.path.abspath(init_weights)]
        if cfg.stage.gpus:
            args += ["--gpu", cfg.stage.gpus]
        _caffelite(args + cfg.extra_train_args, os.path.join(stage_dir, "run.log.txt"), stage_dir, _echo_train,
                   stage=stage)
    else:
        print(f"[{stage}] already trained ({final_iter} iterations)", flush=True)
    it, weights = latest_snapshot(stage_dir, "caffemodel")
    if it != final_iter:
        raise StageError(stage, f"training ended without {PREFIX}_iter_{final_iter}.caffemodel in {stage_dir}",
                         log_path=os.path.join(stage_dir, "run.log.txt"))
    return weights


def _test_stage(stage, stage_dir, weights, cfg: RunConfig):
    iters = cfg.stage.test_iter
    args = ["test", "--model", "test.prototxt", "--weights", os.path.abspath(weights), "--iterations", iters]
    if stage == "test":
        args += ["--display_sparsity"]
    if cfg.stage.gpus:
        args += ["--gpu", cfg.stage.gpus.split(",")[0]]
    log = os.path.join(stage_dir, "run.log.txt")
    if os.path.exists(log):
        os.remove(log)
    _caffelite(args, log, stage_dir, lambda line: "] Loss:" in line or "accuracy" in line and "] " in line[-60:],
               stage=stage)


def evaluate_stage(stage_dir, weights, paths, cfg: RunConfig, overlays_dir=None) -> dict:
    """Pixel accuracy / mean IoU of the stage's deploy net on the val list (§g.4), plus zero-weight fraction."""
    from .. import jacinto
    from ..segmentation.infer import Segmenter, evaluate_lists, run_inference

    deploy = os.path.join(stage_dir, "deploy.prototxt")
    seg = Segmenter(deploy, weights)
    hooks = jacinto.attach_from_proto(seg.net)  # installs quantization when deploy says `quantize: true`
    acc = evaluate_lists(seg, paths["val"]["image_list"], paths["val"]["label_list"], num_classes=5,
                         num_images=cfg.eval_images or 0, progress=False)
    scores = acc.scores()["jacinto"]
    if hooks.quantization:  # the ranges calibrated on the val images, for the int8 engine (speed table)
        hooks.quantization[0].save_ranges(os.path.join(stage_dir, RANGES_FILE))
    if overlays_dir and cfg.overlays:
        with open(paths["val"]["image_list"]) as f:
            imgs = [ln.strip() for ln in f if ln.strip()][: cfg.overlays]
        run_inference(seg, imgs, overlays_dir, blend=True, progress=False)
    if seg.net.net_param.quantize:  # the final sparse + quantized model, for ONNX runtimes (needs the onnx extra)
        from ..export import write_deploy_onnx
        # deploy.onnx: the int8 QDQ pattern that int8 runtimes fuse; deploy_exact.onnx: the simulation bit for bit
        # in ONNX Runtime (float64 quantizers and convolution sums)
        for name, form in (("deploy.onnx", "runtime"), ("deploy_exact.onnx", "exact")):
            print(f"[{os.path.basename(stage_dir)}] " + write_deploy_onnx(
                seg.net, os.path.join(stage_dir, name), deploy, weights, qdq_form=form)[1], flush=True)
    return dict(pixel_accuracy=float(scores["pixel_accuracy"]), mean_iou=float(scores["mean_iou"]),
                iou=[float(v) for v in scores["iou"]], zero_weights=zero_weight_fraction(weights, deploy))


def calibrate_ranges(deploy, weights, image_list, label_list, path, num_images=0) -> str:
    """Write the ranges a quantized stage calibrates, as :func:`evaluate_stage` does (the ``deploy`` net's
    simulation over the val images; the running ranges it ends with) to ``path`` (for a run folder written before
    the stage saved them, or a copy elsewhere). Returns ``path``."""
    from .. import jacinto
    from ..segmentation.infer import Segmenter, evaluate_lists

    seg = Segmenter(deploy, weights)
    hooks = jacinto.attach_from_proto(seg.net)
    if not hooks.quantization:
        raise RuntimeError(f"{deploy} does not quantize (no 'quantize: true')")
    evaluate_lists(seg, image_list, label_list, num_classes=5, num_images=num_images, progress=False)
    hooks.quantization[0].save_ranges(path)
    return path


def speed_step(stage_dir, weights, paths, cfg: RunConfig) -> dict:
    """Forward time of the final model at the deploy size on each engine (medians of ``SPEED_RUNS`` forwards,
    interleaved): ``{"shape": [N, C, H, W], "seconds": {engine: s}}``."""
    from ..jacinto.int8_speed import engine_times

    ranges = os.path.join(stage_dir, RANGES_FILE)
    if not os.path.exists(ranges):
        calibrate_ranges(os.path.join(stage_dir, "deploy.prototxt"), weights, paths["val"]["image_list"],
                         paths["val"]["label_list"], ranges, cfg.eval_images or 0)
    times, shape = engine_times(os.path.join(stage_dir, "deploy.prototxt"), weights, ranges, runs=SPEED_RUNS)
    return {"shape": list(shape), "seconds": times}


ROWS = (("initial", "Initial L2 regularized training"), ("l1reg", "L1 regularized fine tuning"),
        ("sparse", "Sparse fine tuning"), ("test_quantize", "Sparse + quantized (8-bit) inference"))


def format_table(results: dict) -> str:
    """The seed's results table (Markdown), with the overall impact of sparsity + quantization."""
    lines = ["| Configuration | Pixel Accuracy | Mean IOU | zero weights |", "|---|---|---|---|"]
    for key, label in ROWS:
        r = results.get(key)
        if r:
            lines.append(f"| {label} | {100 * r['pixel_accuracy']:.2f}% | {100 * r['mean_iou']:.2f}% | "
                         f"{100 * r['zero_weights']:.1f}% |")
    if "initial" in results and "test_quantize" in results:
        a, b = results["initial"], results["test_quantize"]
        dacc = 100 * (b["pixel_accuracy"] - a["pixel_accuracy"])
        dmiou = 100 * (b["mean_iou"] - a["mean_iou"])
        lines.append(f"| Overall impact of sparse + quantization | {dacc:+.2f} | {dmiou:+.2f} | "
                     f"{100 * b['zero_weights']:.1f}% |")
    return "\n".join(lines)


def run_pipeline(cfg: RunConfig) -> dict:
    """Run every step (skipping finished ones); print and write ``results.md`` / ``results.json``."""
    t0 = time.time()
    os.makedirs(cfg.out, exist_ok=True)
    paths = prepare_data(cfg)
    st = cfg.stage
    st.train_image_lmdb = os.path.abspath(paths["train"]["image_lmdb"])
    st.train_label_lmdb = os.path.abspath(paths["train"]["label_lmdb"])
    st.val_image_lmdb = os.path.abspath(paths["val"]["image_lmdb"])
    st.val_label_lmdb = os.path.abspath(paths["val"]["label_lmdb"])
    st.num_val_images = paths["val"]["count"]
    results_path = os.path.join(cfg.out, "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    weights = cfg.weights
    for stage in STAGES:
        sdir = os.path.join(cfg.out, "stages", stage)
        write_stage(stage, sdir, st)
        t = time.time()
        print(f"[{stage}] {sdir}", flush=True)
        if stage in TRAIN_STAGES:
            weights = _train_stage(stage, sdir, weights, cfg)
        elif stage not in results:
            _test_stage(stage, sdir, weights, cfg)
        if stage not in results:
            over = os.path.join(cfg.out, "overlays", stage) if stage in ("initial", "test_quantize") else None
            results[stage] = evaluate_stage(sdir, weights, paths, cfg, over)
            results[stage]["seconds"] = round(time.time() - t, 1)
            results.pop("speed", None)  # timed on the previous final model
            atomic_write(results_path, json.dumps(results, indent=1))
        r = results[stage]
        print(f"[{stage}] pixel accuracy {100 * r['pixel_accuracy']:.2f}%, mean IoU {100 * r['mean_iou']:.2f}%, "
              f"zero weights {100 * r['zero_weights']:.1f}% ({r['seconds']} s)", flush=True)
    if "speed" not in results:
        t = time.time()
        print("[speed] forward time per engine at the deploy size", flush=True)
        results["speed"] = speed_step(os.path.join(cfg.out, "stages", "test_quantize"), weights, paths, cfg)
        results["speed"]["seconds_taken"] = round(time.time() - t, 1)
        atomic_write(results_path, json.dumps(results, indent=1))
    from ..jacinto.int8_speed import speed_table
    table = format_table(results) + "\n\n" + speed_table(results["speed"]["seconds"], results["speed"]["shape"])
    atomic_write(os.path.join(cfg.out, "results.md"), table + "\n")
    print("\n" + table)
    print(f"\nDone in {time.time() - t0:.0f} s. Results: {cfg.out}/results.md, overlays: {cfg.out}/overlays/")
    return results
