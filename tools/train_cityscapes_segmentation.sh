#!/usr/bin/env bash
# caffe-jacinto-models' train_cityscapes_segmentation.sh, the caffelite way: every stage of TI's sparse,
# quantized jsegnet21v2 segmentation training (initial L2 -> l1reg -> sparse -> test -> test_quantize),
# evaluated and summarised. Python underneath: `caffelite flagship` (caffelite/pipeline/segmentation.py).
#
#   tools/train_cityscapes_segmentation.sh --dataset-root /data/cityscapes --gpus 0,1,2 \
#       --weights imagenet_jacintonet11v2_iter_320000.caffemodel --out training/cityscapes5_jsegnet21v2
#   tools/train_cityscapes_segmentation.sh --quick          # small synthetic run on the CPU
#
# Options: --dataset-root DIR --gpus IDS --batch-size N --test-batch-size N --crop N
#          --iters INITIAL,L1REG,SPARSE --weights FILE --deploy-size WxH --resize WxH --out DIR
# Re-running resumes: finished stages are skipped, an interrupted one continues from its last snapshot.
set -euo pipefail
exec python3 -m caffelite flagship "$@"
