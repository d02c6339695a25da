"""Pixel accuracy, mean IoU (jacinto and nanmean conventions) and per-class IoU over image/label lists.

The running scores are printed about 20 times, then jacinto's ``Final:`` line (§g.4), the nanmean line and a
per-class IoU table; ``--confusion-png`` also draws the confusion matrix (``plot`` extra, matplotlib).

Example: ``caffelite eval --model deploy.prototxt --weights W --images val-image-list.txt
--labels val-label-list.txt --num-classes 5``
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CaffeliteError


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="deploy prototxt")
    parser.add_argument("--weights", default="", help="caffemodel")
    parser.add_argument("--images", required=True, help="image list file")
    parser.add_argument("--labels", required=True, help="label list file (class ids, 255 = ignore)")
    parser.add_argument("--num-classes", type=int, default=5)
    parser.add_argument("--num-images", type=int, default=0, help="evaluate only the first N pairs")
    parser.add_argument("--resize", default="", help="WxH the image is resized to (must equal the net input)")
    parser.add_argument("--confusion-png", default="", help="write the confusion matrix as a PNG (plot extra)")
    parser.add_argument("--class-names", default="", help="comma-separated names for the table")
    parser.add_argument("--gpu", default=None)


def _fmt_iou(iou):
    return "[" + " ".join(f"{v:.6g}" for v in iou) + "]"


def format_report(scores, names) -> str:
    """The jacinto ``Final:`` line, the nanmean line and a per-class IoU table."""
    j, n = scores["jacinto"], scores["nanmean"]
    lines = [f"Final: pixel_accuracy={j['pixel_accuracy']:.6g}, mean_iou={j['mean_iou']:.6g}, iou={_fmt_iou(j['iou'])}",
             f"nanmean: pixel_accuracy={n['pixel_accuracy']:.6g}, mean_iou={n['mean_iou']:.6g}",
             f"{'class':<22} {'IoU (jacinto)':>14} {'IoU (nanmean)':>14}"]
    for k, name in enumerate(names):
        lines.append(f"{name:<22} {j['iou'][k]:>14.4f} {n['iou'][k]:>14.4f}")
    return "\n".join(lines)


def save_confusion_png(matrix, names, path) -> None:
    """Row-normalised confusion matrix (last column: predictions outside the classes) as a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CaffeliteError(f"{path}: writing the confusion-matrix PNG needs the 'plot' extra: "
                             "pip install 'caffelite[plot]'") from None
    m = np.asarray(matrix, np.float64)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * m.shape[1] + 2, 1.2 * m.shape[0] + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(norm):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="white" if v > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(m.shape[1]), list(names) + ["other"], rotation=45, ha="right")
    ax.set_yticks(range(m.shape[0]), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.tight_layout()
    from ..io.files import atomic_open

    with atomic_open(path) as f:
        fig.savefig(f, dpi=100, format=os.path.splitext(path)[1][1:].lower() or "png")
    plt.close(fig)


def run(args) -> int:
    from .. import backend
    from ..segmentation.cityscapes import CLASS_NAMES_5
    from ..segmentation.infer import Segmenter, evaluate_lists
    from ..segmentation.sizes import parse_size

    if args.confusion_png:  # fail before the long run if the extra is missing
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CaffeliteError(f"{args.confusion_png}: writing the confusion-matrix PNG needs the 'plot' "
                                 "extra: pip install 'caffelite[plot]'") from None
    if args.gpu not in (None, "", "-1"):
        backend.set_mode_gpu()
        backend.set_device(int(str(args.gpu).split(",")[0]))
    k = args.num_classes
    if args.class_names:
        names = [s.strip() for s in args.class_names.split(",")]
    elif k == 5:
        names = list(CLASS_NAMES_5)
    else:
        names = [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise CaffeliteError(f"--class-names has {len(names)} names for {k} classes")
    seg = Segmenter(args.model, args.weights or None, resize=parse_size(args.resize))
    from ..segmentation.metrics import jacinto_scores

    total = args.num_images
    if not total:
        with open(args.images) as f:
            total = sum(1 for ln in f if ln.strip())
    every = max(1, total // 20)

    def progress_line(n, acc):  # jacinto prints the running scores about 20 times per run
        if (n + 1) % every == 0 and n + 1 < total:
            j = jacinto_scores(acc.matrix)
            print(f"pixel_accuracy={j['pixel_accuracy']:.6g}, mean_iou={j['mean_iou']:.6g}, iou={_fmt_iou(j['iou'])}",
                  flush=True)

    acc = evaluate_lists(seg, args.images, args.labels, k, args.num_images, callback=progress_line)
    print(format_report(acc.scores(), names))
    if args.confusion_png:
        save_confusion_png(acc.matrix, names, args.confusion_png)
        print(f"confusion matrix written to {args.confusion_png}")
    return 0
