"""Loss layers: SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss.

Every loss top is a scalar (shape ``()``). The Net writes the top's loss weight into ``top[0].diff`` before
backward, so each backward scales its gradient by that value (Caffe's convention). Labels and targets are
float blobs holding integers, as in Caffe; they cannot be back-propagated into (``allow_force_backward``).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..layer import Layer, register
from .softmax import canonical_axis, split_axis

#: Caffe clamps each probability at FLT_MIN before the log, so one pixel's loss is at most -log(FLT_MIN) ≈ 87.34
FLT_MIN = float(np.finfo(np.float32).tiny)

#: bytes of prediction one block of SoftmaxWithLoss's blocked passes covers on the CPU: the block's
#: temporaries stay in a core's L2 cache, so each pass reads and writes the large arrays once
BLOCK_BYTES = 1 << 18


def _blocks(xp, outer, channels, inner, itemsize):
    """``(outer slice, inner slice)`` pairs covering an (outer, C, inner) array, about :data:`BLOCK_BYTES` each
    on the CPU (whole outer rows when one fits, else slices of the inner axis of one outer row); one block on
    a GPU. A block's sums over C are then bitwise the whole array's: NumPy adds the C values of a column in
    order whenever the block is at least 2 wide (one column alone would be summed pairwise), so no inner
    slice is narrower than 2 unless the inner axis is."""
    if xp is not np:
        return [(slice(None), slice(None))]
    per_outer = max(1, channels * inner * itemsize)
    w = max(2, BLOCK_BYTES // max(1, channels * itemsize))
    if per_outer <= BLOCK_BYTES or w >= inner:
        k = max(1, BLOCK_BYTES // per_outer)
        return [(slice(o, min(o + k, outer)), slice(None)) for o in range(0, outer, k)]
    starts = list(range(0, inner, w))
    if inner - starts[-1] < 2:
        starts.pop()  # the previous slice takes the last column
    ends = starts[1:] + [inner]
    return [(slice(o, o + 1), slice(i, j)) for o in range(outer) for i, j in zip(starts, ends, strict=True)]


class LossLayer(Layer):
    """Caffe's ``LossLayer``: two bottoms (prediction, label/target), a scalar loss top, loss weight 1."""

    param_fields = {"loss_param": ()}

    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True
    allows_in_place = False

    def allow_force_backward(self, bottom_index):
        # labels and targets are data, never something to learn (Caffe: bottom_index != 1)
        return bottom_index != 1

    def check_first_dims(self, bottom):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error(f"The data and label should have the same first dimension "
                             f"({bottom[0].shape} vs {bottom[1].shape})")

    def label_error(self, propagate_down):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error("cannot backpropagate to label inputs")

    def read_normalization(self, default):
        """The normalization mode: ``normalization`` if set, else legacy ``normalize`` (VALID/BATCH_SIZE),
        else ``default`` (VALID for SoftmaxWithLoss, BATCH_SIZE for SigmoidCrossEntropyLoss)."""
        lp = self.param.loss_param
        if lp.HasField("normalization"):
            return lp.normalization
        if lp.HasField("normalize"):
            return lp.VALID if lp.normalize else lp.BATCH_SIZE
        return default

    def normalizer(self, outer, inner, valid_count):
        """Caffe's ``get_normalizer``: FULL outer·inner, VALID the non-ignored count, BATCH_SIZE outer, NONE 1;
        never below 1 (a batch of only ignored labels gives loss 0, not NaN)."""
        lp = self.param.loss_param
        mode = self.normalization
        if mode == lp.FULL:
            n = outer * inner
        elif mode == lp.VALID:
            n = valid_count
        elif mode == lp.BATCH_SIZE:
            n = outer
        elif mode == lp.NONE:
            n = 1
        else:  # pragma: no cover - the enum has no other value
            raise self.unsupported("loss_param.normalization", mode)
        return max(1.0, float(n))

    def ignore_label(self):
        lp = self.param.loss_param
        return lp.ignore_label if lp.HasField("ignore_label") else None


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """Multinomial logistic loss of a softmax over ``softmax_param.axis``.

    ``loss = Σ_valid −log(max(p_label, FLT_MIN))·w_label / normalizer`` where pixels whose label equals
    ``loss_param.ignore_label`` are left out of the loss and get no gradient, and ``w`` is caffe-jacinto's
    ``loss_param.label_weights`` (all 1 when absent; it weights the forward loss only, docs/jacinto-spec.md §f).
    An optional second top receives the softmax probabilities.
    """

    param_fields = {"loss_param": ("ignore_label", "normalization", "normalize", "label_weights"),
                    "softmax_param": ("axis", "engine")}

    exact_num_top = None
    min_num_top = 1
    max_num_top = 2

    def setup(self, bottom, top):
        lp = self.param.loss_param
        self.normalization = self.read_normalization(lp.VALID)
        self.ignore = self.ignore_label()
        self.label_weights = np.asarray(list(lp.label_weights), dtype=np.float64)

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        x = bottom[0]
        self.axis = canonical_axis(self, self.param.softmax_param.axis, x.num_axes)
        self.outer, self.channels, self.inner = split_axis(x.shape, self.axis)
        if bottom[1].count != self.outer * self.inner:
            raise self.error(
                "Number of labels must match number of predictions; e.g., if softmax axis == 1 and prediction "
                f"shape is (N, C, H, W), label count (number of labels) must be N*H*W (got {bottom[1].count} "
                f"labels for predictions {x.shape})")
        if self.label_weights.size and self.label_weights.size < self.channels:
            raise self.error(f"loss_param.label_weights has {self.label_weights.size} values for "
                             f"{self.channels} classes")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(x.shape)

    def _labels(self, label_data, xp):
        lbl = label_data.reshape(self.outer, self.inner).astype(xp.int64)  # truncation, like static_cast<int>
        if self.ignore is None:
            valid, idx = xp.ones(lbl.shape, dtype=bool), lbl
        else:
            valid = lbl != self.ignore
            idx = xp.where(valid, lbl, 0)
        # one comparison for both bounds: a negative label is a huge unsigned one
        if bool((idx.view(xp.uint64) >= self.channels).any()):
            raise self.error(f"label values must lie in [0, {self.channels}) (or equal ignore_label)")
        return idx, valid

    def _prob_buffer(self, x, xp):
        """The probabilities' array, kept across iterations (made anew when the shape or dtype changes)."""
        shape = (self.outer, self.channels, self.inner)
        buf = getattr(self, "_probbuf", None)
        if buf is None or buf.shape != shape or buf.dtype != x.dtype or get_array_module(buf) is not xp:
            buf = self._probbuf = xp.empty(shape, x.dtype)
            self._base = (xp.arange(self.outer, dtype=xp.int64)[:, None] * (self.channels * self.inner)
                          + xp.arange(self.inner, dtype=xp.int64)[None, :])
        return buf

    def forward(self, bottom, top):
        xp = get_array_module(bottom[0].data)
        x = bottom[0].data.reshape(self.outer, self.channels, self.inner)
        prob = self.prob = self._prob_buffer(x, xp)
        self._blocks = _blocks(xp, self.outer, self.channels, self.inner, x.dtype.itemsize)
        # the softmax of softmax.softmax (max subtracted, exp, divided by the sum over C: the same float
        # operations), block by block, written straight into the kept probabilities
        for so, si in self._blocks:
            xb, pb = x[so, :, si], prob[so, :, si]
            xp.subtract(xb, xb.max(axis=1, keepdims=True), out=pb)
            xp.exp(pb, out=pb)
            xp.divide(pb, pb.sum(axis=1, keepdims=True), out=pb)
        idx, valid = self._labels(bottom[1].data, xp)
        p = xp.take(prob.reshape(-1), idx * self.inner + self._base)  # each pixel's p_label
        xp.maximum(p, FLT_MIN, out=p)
        xp.log(p, out=p)
        pix = xp.negative(p, out=p)
        if self.label_weights.size:
            pix = pix * xp.asarray(self.label_weights, dtype=pix.dtype)[idx]
        loss = xp.where(valid, pix, 0).sum(dtype=xp.float64)
        count = int(xp.count_nonzero(valid))
        top[0].data[...] = loss / self.normalizer(self.outer, self.inner, count)
        if len(top) > 1:
            top[1].data[...] = prob.reshape(top[1].shape)
        self._valid, self._idx, self._count = valid, idx, count

    def backward(self, top, propagate_down, bottom):
        self.label_error(propagate_down)
        if not propagate_down[0]:
            return
        xp = get_array_module(self.prob)
        scale = float(top[0].diff.reshape(-1)[0]) / self.normalizer(self.outer, self.inner, self._count)
        # dx = (p − onehot(label))·([valid]·scale): the difference in the blob's dtype, times a float64 factor
        # per pixel, rounded once to the diff's dtype; block by block, so the onehot and the difference stay small
        factor = self._valid * scale
        classes = xp.arange(self.channels).reshape(1, self.channels, 1)
        diff = bottom[0].diff
        shape = (self.outer, self.channels, self.inner)
        dx = diff.reshape(shape) if diff.flags.c_contiguous else xp.empty(shape, diff.dtype)
        for so, si in self._blocks:
            onehot = classes == self._idx[so, None, si]
            d = xp.subtract(self.prob[so, :, si], onehot)
            xp.multiply(d, factor[so, None, si], out=dx[so, :, si])
        if not diff.flags.c_contiguous:
            diff[...] = dx.reshape(diff.shape)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross-entropy of ``sigmoid(x)`` against targets in [0, 1], in the overflow-free form
    ``−(x·(t − [x≥0]) − log(1 + exp(x − 2x·[x≥0])))``. Elements whose target equals ``ignore_label`` are
    skipped. Normalised by BATCH_SIZE unless ``normalization``/``normalize`` say otherwise (BVLC's default)."""

    param_fields = {"loss_param": ("ignore_label", "normalization", "normalize")}

    def setup(self, bottom, top):
        self.normalization = self.read_normalization(self.param.loss_param.BATCH_SIZE)
        self.ignore = self.ignore_label()

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        if bottom[0].count != bottom[1].count:
            raise self.error("SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the same count.")
        self.outer = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.inner = bottom[0].count // max(self.outer, 1)
        top[0].reshape(())

    def _valid(self, target, xp):
        if self.ignore is None:
            return None
        return target.astype(xp.int64) != self.ignore

    def forward(self, bottom, top):
        xp = get_array_module(bottom[0].data)
        x, t = bottom[0].data, bottom[1].data
        pos = (x >= 0).astype(x.dtype)
        el = -(x * (t - pos) - xp.log1p(xp.exp(x - 2 * x * pos)))
        valid = self._valid(t, xp)
        if valid is None:
            count = x.size
        else:
            el = xp.where(valid, el, 0)
            count = int(valid.sum())
        self._count = count
        top[0].data[...] = el.sum(dtype=xp.float64) / self.normalizer(self.outer, self.inner, count)

    def backward(self, top, propagate_down, bottom):
        self.label_error(propagate_down)
        if not propagate_down[0]:
            return
        xp = get_array_module(bottom[0].data)
        x, t = bottom[0].data, bottom[1].data
        d = 1 / (1 + xp.exp(-x)) - t
        valid = self._valid(t, xp)
        if valid is not None:
            d = xp.where(valid, d, 0)
        scale = float(top[0].diff.reshape(-1)[0]) / self.normalizer(self.outer, self.inner, self._count)
        bottom[0].diff[...] = d * scale


@register("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """``loss = Σ (a − b)² / (2N)`` with N the first dimension; both inputs may receive a gradient."""

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom, top):
        a, b = bottom
        if a.count != b.count or a.shape[:1] != b.shape[:1]:
            raise self.error(f"Inputs must have the same dimension ({a.shape} vs {b.shape})")
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = get_array_module(bottom[0].data)
        self._d = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        num = bottom[0].shape[0] if bottom[0].num_axes else 1
        top[0].data[...] = xp.sum(self._d * self._d, dtype=xp.float64) / num / 2

    def backward(self, top, propagate_down, bottom):
        num = bottom[0].shape[0] if bottom[0].num_axes else 1
        alpha = float(top[0].diff.reshape(-1)[0]) / num
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                bottom[i].diff[...] = (sign * alpha * self._d).reshape(bottom[i].shape)
