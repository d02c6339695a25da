"""Accuracy: the fraction of (non-ignored) predictions whose true class is within the top k scores."""

from __future__ import annotations

from ..backend import get_array_module
from ..layer import Layer, register
from .softmax import canonical_axis, split_axis


@register("Accuracy")
class AccuracyLayer(Layer):
    """Caffe's Accuracy, with ``top_k``, ``axis`` and ``ignore_label``.

    A prediction is correct when fewer than ``top_k`` *other* classes score ``>=`` the true class, so ties
    count against the label (BVLC CPU and caffe-jacinto GPU behaviour, fixtures ``accuracy_ties``;
    docs/jacinto-spec.md §f). The optional second top holds the per-class accuracy (0 for a class with no sample).
    Caffe implements no backward, so no bottom may be forced to back-propagate.
    """

    param_fields = {"accuracy_param": ("top_k", "axis", "ignore_label")}

    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2
    allows_in_place = False

    def allow_force_backward(self, bottom_index):
        # Caffe's Accuracy has no backward (forcing it would abort there); labels never get a gradient.
        return False

    def setup(self, bottom, top):
        ap = self.param.accuracy_param
        self.top_k = int(ap.top_k)
        self.ignore = ap.ignore_label if ap.HasField("ignore_label") else None

    def reshape(self, bottom, top):
        x = bottom[0]
        self.axis = canonical_axis(self, self.param.accuracy_param.axis, x.num_axes)
        self.outer, self.channels, self.inner = split_axis(x.shape, self.axis)
        if self.top_k > self.channels:
            raise self.error("top_k must be less than or equal to the number of classes.")
        if bottom[1].count != self.outer * self.inner:
            raise self.error(
                "Number of labels must match number of predictions; e.g., if label axis == 1 and prediction "
                f"shape is (N, C, H, W), label count (number of labels) must be N*H*W (got {bottom[1].count} "
                f"labels for predictions {x.shape})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.channels,))

    def forward(self, bottom, top):
        xp = get_array_module(bottom[0].data)
        x = bottom[0].data.reshape(self.outer, self.channels, self.inner)
        lbl = bottom[1].data.reshape(self.outer, self.inner).astype(xp.int64)
        valid = xp.ones(lbl.shape, dtype=bool) if self.ignore is None else lbl != self.ignore
        if bool((valid & ((lbl < 0) | (lbl >= self.channels))).any()):
            raise self.error(f"label values must lie in [0, {self.channels}) (or equal ignore_label)")
        idx = xp.where(valid, lbl, 0)
        true_score = xp.take_along_axis(x, idx[:, None, :], axis=1)
        # the true class counts itself among the classes scoring >= it
        n_better = (x >= true_score).sum(axis=1)
        correct = valid & (n_better <= self.top_k)
        count = int(valid.sum())
        top[0].data[...] = correct.sum() / count if count else 0.0
        if len(top) > 1:
            flat_idx = idx.reshape(-1)
            seen = xp.bincount(flat_idx, weights=valid.reshape(-1).astype(xp.float64), minlength=self.channels)
            per = xp.bincount(flat_idx, weights=correct.reshape(-1).astype(xp.float64), minlength=self.channels)
            top[1].data[...] = xp.where(seen > 0, per / xp.maximum(seen, 1), 0)
