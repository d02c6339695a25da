"""Plot training curves from one or more logs: ``caffelite plot LOG... -o curves.png``.

Panels: train loss, learning rate, and one per test output, against iterations; several logs are overlaid
(legend = file name). A ``caffe test`` log adds one panel per output against the batch index. Reads the same
logs as ``parse-log``. Needs matplotlib (``pip install caffelite[plot]``).
"""

from __future__ import annotations

import math
import os

from ..errors import CaffeliteError


def add_arguments(p):
    p.add_argument("logs", nargs="+", help="training logs (BVLC, NVCaffe, caffe-jacinto or caffelite)")
    p.add_argument("-o", "--output", default="curves.png", help="image file to write (default curves.png)")
    p.add_argument("--logy", action="store_true", help="logarithmic loss axis")


def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise CaffeliteError("plot needs matplotlib, which is not installed: pip install 'caffelite[plot]'") \
            from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def panels(parsed):
    """{panel title: [(label, xs, ys)]} for parsed logs ``[(label, train_rows, test_rows[, batch_rows])]``.

    Batch panels (``caffe test`` logs) are titled ``batch <output>``; their x axis is the batch index."""
    out = {"train loss": [], "learning rate": []}
    for label, train, test, *more in parsed:
        for r in (more[0] if more else []):
            for k, v in r.items():
                if k not in ("Batch", "Seconds"):
                    xs, ys = out.setdefault(f"batch {k}", {}).setdefault(label, ([], []))
                    xs.append(r["Batch"])
                    ys.append(v)
        pts = [(r["NumIters"], r.get("smoothed_loss", r.get("loss"))) for r in train]
        pts = [(x, y) for x, y in pts if y is not None and not math.isnan(y)]
        out["train loss"].append((label, [x for x, _ in pts], [y for _, y in pts]))
        lr = [(r["NumIters"], r["LearningRate"]) for r in train if not math.isnan(r.get("LearningRate", math.nan))]
        out["learning rate"].append((label, [x for x, _ in lr], [y for _, y in lr]))
        names = []
        for r in test:
            for k in r:
                if k not in ("NumIters", "Seconds", "LearningRate", "TestNet") and k not in names:
                    names.append(k)
        for name in names:
            nets = sorted({r["TestNet"] for r in test if name in r})
            for n in nets:
                title = f"test {name}" + (f" (#{n})" if len(nets) > 1 else "")
                rows = [r for r in test if r["TestNet"] == n and name in r]
                out.setdefault(title, []).append((label, [r["NumIters"] for r in rows], [r[name] for r in rows]))
    for title, series in out.items():
        if isinstance(series, dict):
            out[title] = [(label, xs, ys) for label, (xs, ys) in series.items()]
    if not any(xs for _, xs, _ in out["train loss"] + out["learning rate"]):
        del out["train loss"], out["learning rate"]  # only `caffe test` logs: no training curves to show
    return out


def run(args) -> int:
    from ..logparse import parse_log_file

    parsed = []
    names = [os.path.basename(p) for p in args.logs]
    for path, name in zip(args.logs, names, strict=True):
        d = parse_log_file(path, everything=True)
        if not (d["train"] or d["test"] or d["batches"]):
            raise CaffeliteError(f"{path}: no training, test or batch lines found (is it a Caffe log?)")
        if names.count(name) > 1:  # e.g. several stages' run.log.txt: label them by their folder
            name = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(path))), name)
        parsed.append((name, d["train"], d["test"], d["batches"]))
    plt = _import_pyplot()
    data = panels(parsed)
    colour = {p[0]: f"C{i % 10}" for i, p in enumerate(parsed)}  # one colour per log everywhere
    n = len(data)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, data.items(), strict=False):
        for label, xs, ys in series:
            if xs:
                ax.plot(xs, ys, label=label, linewidth=1, color=colour[label])
        ax.set_title(title)
        ax.set_xlabel("batch" if title.startswith("batch ") else "iteration")
        if title == "train loss" and args.logy:
            ax.set_yscale("log")
        if len(parsed) > 1:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    from ..io.files import atomic_open

    with atomic_open(args.output) as f:  # format from the name, as savefig(path) picks it
        fig.savefig(f, dpi=100, format=os.path.splitext(args.output)[1][1:].lower() or "png")
    plt.close(fig)
    print(f"wrote {args.output}")
    return 0
