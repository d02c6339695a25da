"""Reduction (SUM/ASUM/SUMSQ/MEAN over the trailing axes) and ArgMax (top-k indices and/or values)."""

from __future__ import annotations

import numpy as np

from .. import backend
from ..layer import Layer, register
from ..ops import argmax as A
from ..proto import caffe_pb2
from .common import canonical_axis

_R = caffe_pb2.ReductionParameter
SUM, ASUM, SUMSQ, MEAN = _R.SUM, _R.ASUM, _R.SUMSQ, _R.MEAN


@register("Reduction")
class ReductionLayer(Layer):
    """Reduce every axis from ``axis`` to the end: top shape is ``bottom.shape[:axis]``, times ``coeff``."""

    param_fields = {"reduction_param": ("operation", "axis", "coeff")}

    exact_num_bottom = 1
    exact_num_top = 1
    allows_in_place = False

    def setup(self, bottom, top):
        p = self.param.reduction_param
        self.op = p.operation
        if self.op not in (SUM, ASUM, SUMSQ, MEAN):
            raise self.unsupported("reduction_param.operation", self.op)
        self.coeff = float(p.coeff)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.axis = canonical_axis(self, int(self.param.reduction_param.axis), len(shape))
        self.num = int(np.prod(shape[:self.axis], dtype=np.int64))
        self.dim = int(np.prod(shape[self.axis:], dtype=np.int64))
        top[0].reshape(shape[:self.axis])
        # MEAN is SUM with the coefficient divided by the reduced size (Caffe does the same)
        self._c = self.coeff / self.dim if (self.op == MEAN and self.dim) else self.coeff

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        xp = backend.get_array_module(x)
        if self.op == ASUM:
            r = xp.abs(x).sum(axis=1)
        elif self.op == SUMSQ:
            r = (x * x).sum(axis=1)
        else:
            r = x.sum(axis=1)
        top[0].data[...] = (r * x.dtype.type(self._c)).reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.num, 1) * top[0].diff.dtype.type(self._c)
        x = bottom[0].data.reshape(self.num, self.dim)
        xp = backend.get_array_module(x)
        if self.op == ASUM:
            g = xp.sign(x) * dy
        elif self.op == SUMSQ:
            g = 2 * x * dy
        else:
            g = xp.broadcast_to(dy, x.shape)
        bottom[0].diff[...] = g.reshape(bottom[0].shape)


@register("ArgMax")
class ArgMaxLayer(Layer):
    """The ``top_k`` largest entries, as indices (float) and/or values; ties go to the larger index.

    With ``axis``: the top has that axis replaced by top_k and holds indices, or the values only when
    ``out_max_val``. Without: each item is flattened and the top is N x (1 or 2) x top_k (x 1 ...), the
    second channel holding the values. Caffe implements no backward.
    """

    param_fields = {"argmax_param": ("out_max_val", "top_k", "axis")}

    exact_num_bottom = 1
    exact_num_top = 1
    allows_in_place = False

    def setup(self, bottom, top):
        p = self.param.argmax_param
        self.top_k = int(p.top_k)
        self.out_max_val = bool(p.out_max_val)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.error("top k must not be less than 1.")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if self.has_axis:
            self.axis = canonical_axis(self, int(self.param.argmax_param.axis), len(shape))
            dim = shape[self.axis]
            out = list(shape)
            out[self.axis] = self.top_k
        else:
            dim = bottom[0].count // shape[0] if shape and shape[0] else 0
            out = [1] * max(len(shape), 3)
            out[0] = shape[0]
            out[2] = self.top_k
            if self.out_max_val:
                out[1] = 2
        if self.top_k > dim:
            raise self.error("top_k must be less than or equal to the dimension of the axis.")
        top[0].reshape(out)

    def _topk(self, x, axis):
        """(indices, values) of the top_k along ``axis``, largest value first, ties to the larger index."""
        xp = backend.get_array_module(x)
        n = x.shape[axis]
        rev = xp.flip(x, axis=axis)  # in the reversed array the first occurrence is the largest index
        if self.top_k == 1:
            ri = xp.expand_dims(xp.argmax(rev, axis=axis), axis)
        else:
            # stable: equal values keep their (reversed) order; CuPy's sort is always stable
            kw = {"kind": "stable"} if xp is np else {}
            ri = xp.argsort(-rev, axis=axis, **kw)
            ri = xp.take(ri, xp.arange(self.top_k), axis=axis)
        vals = xp.take_along_axis(rev, ri, axis=axis)
        return (n - 1) - ri, vals

    def _top1_running(self, x, axis, dst):
        """Top-1 indices along ``axis`` written into ``dst`` (the top, axis of size 1) by a running compare
        over the axis' slices, or False (``dst`` partly written) when a slice holds a NaN.

        ``v >= best`` hands ties to the later (larger) index, as :meth:`_topk`; the winning index is kept as
        max(index, k * hit) in bytes (k grows with the loop, so a hit always raises it). np.argmax along a
        strided axis is a per-pixel C loop; this is a few vectorized passes per slice, run over blocks of
        positions that stay in cache. ``maximum`` propagates NaN, so a NaN anywhere shows in ``best``: that
        (rare) case is left to :meth:`_topk`, which follows np.argmax's NaN rule.
        """
        xp = backend.get_array_module(x)
        if not dst.flags.c_contiguous:
            return False
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        n, inner = x.shape[axis], int(np.prod(x.shape[axis + 1:], dtype=np.int64))
        x3 = x.reshape(outer, n, inner)
        d2 = dst.reshape(outer, inner)
        # blocks of about 64K positions on the CPU (best, hit and index stay in L2); one block on a GPU
        block = 1 << 16 if xp is np else outer * inner
        ob, ib = (1, block) if inner >= block else (max(1, block // inner), inner)
        size = ob * ib
        best = xp.empty(size, x.dtype)
        hit = xp.empty(size, np.bool_)
        arg = xp.empty(size, np.uint8)
        for o0 in range(0, outer, ob):
            o1 = min(outer, o0 + ob)
            for i0 in range(0, inner, ib):
                i1 = min(inner, i0 + ib)
                shape = (o1 - o0, i1 - i0)
                m = shape[0] * shape[1]
                bb, hh, aa = best[:m].reshape(shape), hit[:m].reshape(shape), arg[:m].reshape(shape)
                h8 = hh.view(np.uint8)
                x0, x1 = x3[o0:o1, 0, i0:i1], x3[o0:o1, 1, i0:i1]
                xp.greater_equal(x1, x0, out=hh)
                xp.maximum(x0, x1, out=bb)
                aa[...] = h8
                for k in range(2, n):
                    v = x3[o0:o1, k, i0:i1]
                    xp.greater_equal(v, bb, out=hh)
                    xp.maximum(bb, v, out=bb)
                    xp.multiply(h8, np.uint8(k), out=h8)
                    xp.maximum(aa, h8, out=aa)
                if bool(xp.isnan(bb.max())):
                    return False
                d2[o0:o1, i0:i1] = aa
        return True

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.has_axis:
            if self.top_k == 1 and not self.out_max_val and A.top1_native(x, self.axis, top[0].data):
                return
            n = x.shape[self.axis]
            inner = int(np.prod(x.shape[self.axis + 1:], dtype=np.int64))
            # the running compare pays off when the slices are long runs; indices are kept in bytes
            if (self.top_k == 1 and not self.out_max_val and 2 <= n <= 256 and inner >= 64
                    and self._top1_running(x, self.axis, top[0].data)):
                return
            idx, vals = self._topk(x, self.axis)
            top[0].data[...] = vals if self.out_max_val else idx.astype(x.dtype)
            return
        idx, vals = self._topk(x.reshape(x.shape[0], -1), 1)
        xp = backend.get_array_module(x)
        if self.out_max_val:
            out = xp.stack([idx.astype(x.dtype), vals], axis=1)
        else:
            out = idx.astype(x.dtype)[:, None, :]
        top[0].data[...] = out.reshape(top[0].shape)

    def allow_force_backward(self, bottom_index):
        # Caffe would abort in Backward (NOT_IMPLEMENTED); force_backward simply skips this layer instead
        return False
