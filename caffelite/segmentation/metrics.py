"""Segmentation metrics: confusion matrix, pixel accuracy, per-class and mean IoU (docs/jacinto-spec.md §g.4).

The confusion matrix has shape ``(K, K + 1)``: rows are ground-truth classes (pixels labelled ``ignore``,
255, are left out), columns are predictions clipped to ``[0, K]``, so a prediction of id ≥ K lands in the
extra column. Two conventions are computed from it:

* **jacinto** (``infer_segmentation.py compute_accuracy``): only the K×K block counts. Pixels predicted as
  id ≥ K are dropped from accuracy and IoU. ``IoU_c = TP / (pop + det - TP)`` (0 when the union is 0) and
  the mean is over classes whose population is > 0.
* **nanmean** (the usual one): a pixel predicted as id ≥ K is an error of its true class; classes whose
  union is 0 get IoU NaN and the mean is ``nanmean``.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..errors import CaffeliteError

__all__ = ["confusion_matrix", "jacinto_scores", "nanmean_scores", "ConfusionAccumulator", "LabelError"]


class LabelError(CaffeliteError, ValueError):
    """A label map holds an id that is neither a class nor the ignore label."""


def confusion_matrix(gt, pred, num_classes: int, ignore_label: int = 255, source=None):
    """``(K, K+1)`` int64 pixel counts for one label map ``gt`` and prediction ``pred`` (same shape)."""
    xp = backend.get_array_module(gt, pred)
    gt = xp.asarray(gt).astype(xp.int64).ravel()
    pred = xp.asarray(pred).astype(xp.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"label has {gt.size} pixels but the prediction has {pred.size}")
    k = int(num_classes)
    keep = gt != ignore_label
    gt, pred = gt[keep], pred[keep]
    if gt.size and (int(gt.min()) < 0 or int(gt.max()) >= k):
        bad = int(gt.max()) if int(gt.max()) >= k else int(gt.min())
        where = f"{source}: " if source else ""
        raise LabelError(f"{where}label id {bad} is outside 0..{k - 1} and not the ignore label {ignore_label}")
    pred = xp.clip(pred, 0, k)
    counts = xp.bincount(gt * (k + 1) + pred, minlength=k * (k + 1))
    return counts.reshape(k, k + 1)


def jacinto_scores(cm) -> dict:
    """Pixel accuracy, per-class IoU and mean IoU in caffe-jacinto's convention (only the K×K block)."""
    m = np.asarray(backend.to_numpy(cm), dtype=np.float64)
    k = m.shape[0]
    block = m[:, :k]
    tp = np.diag(block)
    population = block.sum(axis=1)
    detected = block.sum(axis=0)
    union = population + detected - tp
    iou = np.divide(tp, union, out=np.zeros(k), where=union > 0)
    total = population.sum()
    present = population > 0
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "iou": iou,
        "mean_iou": float(iou[present].sum() / present.sum()) if present.any() else 0.0,
    }


def nanmean_scores(cm) -> dict:
    """Pixel accuracy, per-class IoU (NaN for empty classes) and their nanmean, counting id ≥ K as errors."""
    m = np.asarray(backend.to_numpy(cm), dtype=np.float64)
    k = m.shape[0]
    tp = np.diag(m[:, :k])
    population = m.sum(axis=1)
    detected = m[:, :k].sum(axis=0)
    union = population + detected - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    total = population.sum()
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "iou": iou,
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
    }


class ConfusionAccumulator:
    """Accumulate a confusion matrix over many images; :meth:`scores` gives both conventions."""

    def __init__(self, num_classes: int, ignore_label: int = 255):
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def update(self, gt, pred, source=None) -> None:
        cm = confusion_matrix(gt, pred, self.num_classes, self.ignore_label, source)
        self.matrix += np.asarray(backend.to_numpy(cm), dtype=np.int64)

    def scores(self) -> dict:
        return {"jacinto": jacinto_scores(self.matrix), "nanmean": nanmean_scores(self.matrix)}
