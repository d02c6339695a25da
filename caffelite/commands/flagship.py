"""Run TI's sparse, quantized segmentation flow end to end (docs/jacinto-spec.md §g), on Cityscapes or synthetic data.

``caffelite flagship --quick --out runs/flagship`` is the README's main job: a small synthetic Cityscapes-like
set on the CPU, all five stages with scaled-down iterations, overlays and the results table.
``caffelite flagship --dataset-root /data/cityscapes --gpus 0,1,2 --weights imagenet.caffemodel`` is the seed's
full run.
"""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("--out", default="runs/flagship", help="output folder (data, stages, overlays, results)")
    p.add_argument("--dataset-root", help="Cityscapes root with leftImg8bit/ and gtFine/ (default: synthetic)")
    p.add_argument("--quick", action="store_true", help="small synthetic run for a laptop CPU (~15 min)")
    p.add_argument("--gpus", help="GPU ids, e.g. 0 or 0,1,2 (default: CPU)")
    p.add_argument("--batch-size", type=int, help="train batch size (seed: 16)")
    p.add_argument("--test-batch-size", type=int, help="test batch size (seed: 4)")
    p.add_argument("--crop", type=int, help="train/test crop size (seed: 640)")
    p.add_argument("--iters", help="iterations per training stage, INITIAL,L1REG,SPARSE (seed: 120000,60000,60000)")
    p.add_argument("--weights", help="pretrained weights for the initial stage (seed: ImageNet jacintonet11v2)")
    p.add_argument("--deploy-size", help="deploy input WxH (seed: 1024x512)")
    p.add_argument("--resize", help="resize records in the LMDBs to WxH (default: none)")
    p.add_argument("--synthetic-train", type=int, help="synthetic train images")
    p.add_argument("--synthetic-val", type=int, help="synthetic val images")
    p.add_argument("--synthetic-size", help="synthetic image size WxH")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic data")


def run(args) -> int:
    from ..pipeline.segmentation import config_from_args, run_pipeline

    cfg = config_from_args(args)
    run_pipeline(cfg)
    return 0
