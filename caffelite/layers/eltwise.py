"""Eltwise, Scale and Bias: element-wise combination of blobs and broadcast multiply/add along axes.

Scale and Bias broadcast a blob of shape ``bottom.shape[axis : axis + n]`` over the outer and inner
dimensions; its values are a learned parameter (one bottom) or the second bottom. Learned parameter
diffs accumulate (``+=``), bottom diffs are assigned, as in Caffe.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..layer import Layer, register
from ..proto import caffe_pb2
from .common import canonical_axis, copy_into, filled_param_blob, param_propagate

SUM, PROD, MAX = caffe_pb2.EltwiseParameter.SUM, caffe_pb2.EltwiseParameter.PROD, caffe_pb2.EltwiseParameter.MAX


# -- Eltwise --------------------------------------------------------------------------------------------
@register("Eltwise")
class EltwiseLayer(Layer):
    """Element-wise SUM (with ``coeff``), PROD (``stable_prod_grad``) or MAX of two or more bottoms."""

    param_fields = {"eltwise_param": ("operation", "coeff", "stable_prod_grad")}

    min_num_bottom = 2
    exact_num_top = 1
    allows_in_place = False

    def setup(self, bottom, top):
        p = self.param.eltwise_param
        self.op = p.operation
        if self.op not in (SUM, PROD, MAX):
            raise self.unsupported("eltwise_param.operation", self.op)
        if len(p.coeff) and self.op != SUM:
            raise self.error("Eltwise layer only takes coefficients for summation.")
        if len(p.coeff) and len(p.coeff) != len(bottom):
            raise self.error("Eltwise Layer takes one coefficient per bottom blob.")
        self.coeffs = [float(c) for c in p.coeff] if len(p.coeff) else [1.0] * len(bottom)
        self.stable_prod_grad = bool(p.stable_prod_grad)

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise self.error(f"bottom[{i}] shape {b.shape} differs from bottom[0] shape {bottom[0].shape}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xs = [b.data for b in bottom]
        xp = backend.get_array_module(*xs)
        t = xs[0].dtype.type
        out = top[0].data
        if self.op == SUM:
            xp.multiply(xs[0], t(self.coeffs[0]), out=out)
            for c, x in zip(self.coeffs[1:], xs[1:], strict=True):
                if c == 1:
                    out += x
                else:
                    out += x * t(c)
        elif self.op == PROD:
            xp.multiply(xs[0], xs[1], out=out)
            for x in xs[2:]:
                out *= x
        else:
            # Caffe: bottom 1 wins a tie against bottom 0; afterwards a later bottom must be strictly larger
            first = xs[0] > xs[1]
            xp.maximum(xs[0], xs[1], out=out)
            idx = xp.where(first, 0, 1).astype(np.int8 if len(xs) < 128 else np.int32)
            for i, x in enumerate(xs[2:], 2):
                better = x > out
                xp.maximum(out, x, out=out)
                idx[better] = i
            self._argmax = idx

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        xp = backend.get_array_module(dy)
        t = dy.dtype.type
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            if self.op == SUM:
                b.diff[...] = dy * t(self.coeffs[i]) if self.coeffs[i] != 1 else dy
            elif self.op == PROD:
                if self.stable_prod_grad:
                    others = [o.data for j, o in enumerate(bottom) if j != i]
                    g = others[0].copy()
                    for o in others[1:]:
                        g *= o
                else:
                    g = top[0].data / b.data
                b.diff[...] = dy * g
            else:
                b.diff[...] = xp.where(self._argmax == i, dy, 0)


# -- Scale / Bias ---------------------------------------------------------------------------------------
def _broadcast_dims(layer, bottom0, operand_shape, axis):
    """(outer, dim, inner) of Caffe's broadcast; checks the operand matches bottom0 at ``axis``."""
    shape = bottom0.shape
    n = len(operand_shape)
    if n == 0:
        axis = 0  # a scalar operand: Caffe uses axis 0 whatever the param says
    if axis + n > len(shape) or tuple(shape[axis:axis + n]) != tuple(operand_shape):
        raise layer.error(f"operand shape {tuple(operand_shape)} does not match bottom shape {shape} "
                          f"starting at axis {axis}")
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    dim = int(np.prod(operand_shape, dtype=np.int64))
    inner = int(np.prod(shape[axis + n:], dtype=np.int64))
    return outer, dim, inner


def _param_shape(layer, bottom0, axis, num_axes):
    """``bottom0.shape[axis : axis + num_axes]`` (num_axes -1: to the end), as Caffe's Scale/Bias setup."""
    shape = bottom0.shape
    if num_axes < -1:
        raise layer.error("num_axes must be non-negative, or -1 to extend to the end of bottom[0]")
    if num_axes == -1:
        return tuple(shape[axis:])
    if axis + num_axes > len(shape):
        raise layer.error(f"axis {axis} + num_axes {num_axes} exceeds the {len(shape)} axes of bottom[0]")
    return tuple(shape[axis:axis + num_axes])


def _operand(layer, bottom):
    """Bias/Scale's second operand: ``bottom[1]`` when given, else the layer's learned blob 0."""
    return bottom[1] if len(bottom) > 1 else layer.blobs[0]


def _operand_backward(layer, bottom, propagate_down, grad):
    """Store the operand's gradient ``grad()`` (computed only when needed): assigned to ``bottom[1].diff``,
    or accumulated into the learned blob 0's diff."""
    if len(bottom) > 1:
        if propagate_down[1]:
            bottom[1].diff[...] = grad().reshape(bottom[1].shape)
    elif param_propagate(layer, 0):
        layer.blobs[0].diff[...] += grad().reshape(layer.blobs[0].shape)


def _reduce_to(g, outer, dim, inner):
    """Sum a (outer*dim*inner) array over outer and inner: the operand's gradient, shape (dim,)."""
    return g.reshape(outer, dim, inner).sum(axis=(0, 2))


@register("Bias")
class BiasLayer(Layer):
    """``top = bottom[0] + b``; b is bottom[1] or a learned blob filled by ``bias_param.filler``.

    caffe-jacinto's data/bias (docs/jacinto-spec.md §f) is this layer with a constant filler (e.g. −128) and
    lr_mult 0. The default filler is Caffe's: constant 0.
    """

    param_fields = {"bias_param": ("axis", "num_axes", "filler")}

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.bias_param
        self.axis = canonical_axis(self, int(p.axis), len(bottom[0].shape))
        if len(bottom) == 1:
            shape = _param_shape(self, bottom[0], self.axis, int(p.num_axes))
            self.blobs = [filled_param_blob(shape, p.filler if p.HasField("filler") else None, 0.0, bottom[0])]

    def reshape(self, bottom, top):
        b = _operand(self, bottom)
        self._dims = _broadcast_dims(self, bottom[0], b.shape, self.axis)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        outer, dim, inner = self._dims
        x = bottom[0].data
        xp = backend.get_array_module(x)
        b = _operand(self, bottom).data.astype(x.dtype, copy=False).reshape(1, dim, 1)
        xp.add(x.reshape(outer, dim, inner), b, out=top[0].data.reshape(outer, dim, inner))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = dy
        _operand_backward(self, bottom, propagate_down, lambda: _reduce_to(dy, *self._dims))


@register("Scale")
class ScaleLayer(Layer):
    """``top = bottom[0] * gamma (+ beta)``: gamma is bottom[1] or learned; beta learned when ``bias_term``.

    Blobs in Caffe's order: [gamma, beta] with one bottom, [beta] with two. In place, the input is kept
    in forward because gamma's gradient needs it.
    """

    param_fields = {"scale_param": ("axis", "num_axes", "filler", "bias_term", "bias_filler")}

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.param.scale_param
        self.axis = canonical_axis(self, int(p.axis), len(bottom[0].shape))
        self.blobs = []
        if len(bottom) == 1:
            shape = _param_shape(self, bottom[0], self.axis, int(p.num_axes))
            # Caffe's default scale filler is constant 1.
            self.blobs.append(filled_param_blob(shape, p.filler if p.HasField("filler") else None, 1.0, bottom[0]))
            bias_shape = shape
        else:
            bias_shape = bottom[1].shape  # Caffe's inner Bias takes num_axes = bottom[1].num_axes
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            bias_axis = self.axis if len(bias_shape) else 0
            _broadcast_dims(self, bottom[0], bias_shape, bias_axis)
            self.blobs.append(filled_param_blob(bias_shape, p.bias_filler if p.HasField("bias_filler") else None,
                                                0.0, bottom[0]))
        self._saved_x = None

    def reshape(self, bottom, top):
        self._dims = _broadcast_dims(self, bottom[0], _operand(self, bottom).shape, self.axis)
        if self.bias_term:
            self._bias_dims = _broadcast_dims(self, bottom[0], self.blobs[-1].shape, self.axis)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        outer, dim, inner = self._dims
        x = bottom[0].data
        xp = backend.get_array_module(x)
        # in place, γ's gradient needs the input that the top overwrites: keep a copy, but only when
        # backward will run (a deploy net skips it: a whole-tensor copy per Scale layer)
        keep = top[0] is bottom[0] and self.needs_backward and (len(bottom) > 1 or param_propagate(self, 0))
        self._saved_x = copy_into(self._saved_x, x) if keep else None
        s = _operand(self, bottom).data.astype(x.dtype, copy=False).reshape(1, dim, 1)
        y = top[0].data
        xp.multiply(x.reshape(outer, dim, inner), s, out=y.reshape(outer, dim, inner))
        if self.bias_term:
            bo, bd, bi = self._bias_dims
            y.reshape(bo, bd, bi)[...] += self.blobs[-1].data.astype(x.dtype, copy=False).reshape(1, bd, 1)

    def inference_affine(self, bottom):
        """Per-channel (scale, shift) of this layer on an NCHW bottom when it is one (learned gamma over the
        channel axis, optional beta); None otherwise. Used by inference fusion (:mod:`caffelite.fusion`)."""
        if len(bottom) != 1 or self.axis != 1 or len(bottom[0].shape) < 2:
            return None
        c = bottom[0].shape[1]
        gamma = self.blobs[0].data
        if gamma.size != c or self._dims[1] != c:
            return None
        xp = backend.get_array_module(gamma)
        beta = self.blobs[-1].data if self.bias_term else xp.zeros_like(gamma)
        if beta.size != c:
            return None
        return gamma.reshape(-1), beta.reshape(-1)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        outer, dim, inner = self._dims
        nb = len(self.blobs)
        if self.bias_term and param_propagate(self, nb - 1):
            g = _reduce_to(dy, *self._bias_dims)
            self.blobs[-1].diff[...] += g.reshape(self.blobs[-1].shape)
        x = self._saved_x if self._saved_x is not None else bottom[0].data
        _operand_backward(self, bottom, propagate_down, lambda: _reduce_to(dy * x, outer, dim, inner))
        if propagate_down[0]:
            s = _operand(self, bottom).data.astype(dy.dtype, copy=False).reshape(1, dim, 1)
            bottom[0].diff[...] = (dy.reshape(outer, dim, inner) * s).reshape(dy.shape)
