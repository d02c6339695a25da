"""ONNX forms of Caffe's remaining element-wise layers and Tile/Reduction, in Caffe's order of operations."""

from __future__ import annotations

import numpy as np

from ..proto import caffe_pb2
from .onnx_layers import converter

_RED = caffe_pb2.ReductionParameter


def _affine(g, x, scale, shift):
    """``x * scale + shift``, skipping the factors Caffe skips (1 and 0)."""
    if scale != 1:
        x = g.node("Mul", [x, g.const("scale", scale)])
    if shift != 0:
        x = g.node("Add", [x, g.const("shift", shift)])
    return x


@converter("Power")
def power(g, layer):
    """``(shift + scale*x)^power``; a constant when power*scale == 0, as in Caffe."""
    x = g.bottom(0)
    if layer.diff_scale == 0:
        c = 1.0 if layer.power == 0 else layer.shift ** layer.power
        g.node("Add", [g.node("Mul", [x, g.const("zero", 0.0)]), g.const("value", c)], [g.top(0)])
        return
    base = _affine(g, x, layer.scale, layer.shift)
    if layer.power == 1:
        g.node("Identity", [base], [g.top(0)])
    elif layer.power == 2:
        g.node("Mul", [base, base], [g.top(0)])
    else:
        g.node("Pow", [base, g.const("power", layer.power)], [g.top(0)])


@converter("Exp")
def exp(g, layer):
    """``base^(shift + scale*x)`` as Caffe computes it: ``exp(x·ln(base)·scale) · base^shift``."""
    y = g.node("Exp", [_affine(g, g.bottom(0), layer.inner_scale, 0)])
    g.node("Identity" if layer.outer_scale == 1 else "Mul",
           [y] + ([] if layer.outer_scale == 1 else [g.const("outer", layer.outer_scale)]), [g.top(0)])


@converter("Log")
def log(g, layer):
    y = g.node("Log", [_affine(g, g.bottom(0), layer.scale, layer.shift)])
    g.node("Identity" if layer.base_scale == 1 else "Mul",
           [y] + ([] if layer.base_scale == 1 else [g.const("base_scale", layer.base_scale)]), [g.top(0)])


@converter("BNLL")
def bnll(g, layer):
    """Caffe's stable form: ``x + log(1 + exp(-x))`` for x > 0, ``log(1 + exp(x))`` otherwise, i.e.
    ``relu(x) + log(1 + exp(-|x|))``."""
    x = g.bottom(0)
    t = g.node("Log", [g.node("Add", [g.const("one", 1.0), g.node("Exp", [g.node("Neg", [g.node("Abs", [x])])])])])
    g.node("Add", [g.node("Relu", [x]), t], [g.top(0)])


@converter("Threshold")
def threshold(g, layer):
    g.node("Cast", [g.node("Greater", [g.bottom(0), g.const("threshold", layer.threshold)])], [g.top(0)], to=1)


@converter("Clip")
def clip(g, layer):
    g.node("Clip", [g.bottom(0), g.const("min", layer.lo), g.const("max", layer.hi)], [g.top(0)])


@converter("Swish")
def swish(g, layer):
    """``x * sigmoid(beta*x)``."""
    x = g.bottom(0)
    g.node("Mul", [x, g.node("Sigmoid", [_affine(g, x, layer.beta, 0)])], [g.top(0)])


@converter("Tile")
def tile(g, layer):
    reps = [1] * len(g.bottom_shape(0))
    reps[layer.axis] = layer.tiles
    if layer.axis == 0:
        g.check_batch_kept(g.bottom_shape(0), g.top_shape(0))
    g.node("Tile", [g.bottom(0), g.const("repeats", reps, np.int64)], [g.top(0)])


@converter("Reduction")
def reduction(g, layer):
    """SUM/ASUM/SUMSQ/MEAN over every axis from ``axis`` on (top shape ``shape[:axis]``), times coeff."""
    g.need_opset(13, "ReduceSum with an axes input")
    shape = g.bottom_shape(0)
    if layer.axis == 0:
        g.check_batch_kept(shape, g.top_shape(0))
    x = g.bottom(0)
    if layer.op == _RED.ASUM:
        x = g.node("Abs", [x])
    elif layer.op == _RED.SUMSQ:
        x = g.node("Mul", [x, x])
    axes = g.const("axes", list(range(layer.axis, len(shape))), np.int64)
    r = g.node("ReduceSum", [x, axes], keepdims=0)
    g.node("Identity" if layer._c == 1 else "Mul", [r] + ([] if layer._c == 1 else [g.const("coeff", layer._c)]),
           [g.top(0)])
