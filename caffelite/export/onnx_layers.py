"""Caffe layer types -> standard ONNX ops, each with Caffe's exact semantics (see the README's export section).

A converter ``fn(g, layer)`` reads the layer's bottoms through ``g.bottom(j)`` and names its tops with
``g.top(j)`` (:class:`~caffelite.export.onnx_graph.GraphBuilder`); shapes are the built Net's. A layer or option
with no faithful ONNX form raises :class:`~caffelite.export.onnx_graph.ExportError` naming it and why.
"""

from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..proto import caffe_pb2

CONVERTERS = {}

_POOL = caffe_pb2.PoolingParameter
_ELT = caffe_pb2.EltwiseParameter


def converter(*types):
    def deco(fn):
        for t in types:
            CONVERTERS[t] = fn
        return fn
    return deco


def weights(layer, k):
    """Param blob ``k`` of ``layer`` as a float32 host array (exact zeros stay zeros)."""
    return np.asarray(to_numpy(layer.blobs[k].data), np.float32)


def _bshape(ndim, axis, pshape):
    """Shape that broadcasts a parameter covering axes ``axis..axis+len(pshape)`` over an ``ndim``-D blob."""
    return list(pshape) + [1] * (ndim - axis - len(pshape))


# -- convolution -------------------------------------------------------------------------------------------
@converter("Convolution", "Deconvolution")
def conv(g, layer):
    """Conv / ConvTranspose: explicit symmetric pads give Caffe's output size exactly (no output_padding)."""
    gm = layer.geom
    attrs = dict(kernel_shape=[gm.kh, gm.kw], strides=[gm.sh, gm.sw], pads=[gm.ph, gm.pw, gm.ph, gm.pw],
                 dilations=[gm.dh, gm.dw], group=int(layer.group))
    op = "ConvTranspose" if layer.param.type == "Deconvolution" else "Conv"
    if g.hook is not None and hasattr(g.hook, "conv") and g.hook.conv(g, layer):
        return
    has_bias = len(layer.blobs) > 1 or g.layer in g.folded  # a folded BatchNorm brings a shift
    w, b = g.param(layer, 0), (g.param(layer, 1) if has_bias else None)
    for j in range(len(layer.param.bottom)):
        ins = [g.bottom(j), w] + ([b] if b is not None else [])
        g.node(op, ins, [g.top(j)], **attrs)


@converter("InnerProduct")
def inner_product(g, layer):
    """Flatten from ``axis`` -> Gemm (W stored (N, K), or (K, N) with ``transpose``) -> the Caffe top shape."""
    ip = layer.param.inner_product_param
    shape = g.bottom_shape(0)
    axis = int(ip.axis) + (len(shape) if ip.axis < 0 else 0)
    if axis == 0:
        g.check_batch_kept(shape, g.top_shape(0))
    flat = g.node("Flatten", [g.bottom(0)], axis=axis)
    if g.hook is not None and hasattr(g.hook, "inner_product") and g.hook.inner_product(g, layer, flat, axis):
        return
    ins = [flat, g.param(layer, 0)] + ([g.param(layer, 1)] if len(layer.blobs) > 1 else [])
    if axis == 1:
        g.node("Gemm", ins, [g.top(0)], transB=0 if layer.transpose else 1)
    else:
        y = g.node("Gemm", ins, transB=0 if layer.transpose else 1)
        g.reshape(y, g.top_shape(0), g.top(0))


# -- pooling ----------------------------------------------------------------------------------------------
def _caffe_ave_divisor(size, k, s, p, out):
    """Caffe's AVE divisor per output position along one axis: the window clipped to [-p, size + p)."""
    starts = np.arange(out) * s - p
    return np.minimum(starts + k, size + p) - starts


@converter("Pooling")
def pooling(g, layer):
    """MaxPool/AveragePool with explicit end pads that give Caffe's (ceil) output size; global pooling.

    MAX ignores padding in both. AVE: ONNX divides by the full kernel (count_include_pad), Caffe by the window
    clipped to the padded input; where they differ a constant per-position factor restores Caffe's divisor.
    """
    if len(layer.param.top) > 1:
        raise g.error("the MAX pooling mask top (argmax positions) has no ONNX form")
    x = g.bottom(0)
    if layer.global_pooling:
        g.node("GlobalMaxPool" if layer.method == _POOL.MAX else "GlobalAveragePool", [x], [g.top(0)])
        return
    n, c, h, w = g.bottom_shape(0)
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.pad
    oh, ow = layer.out_hw
    # end pads such that floor((H + p + e - k)/s) + 1 == Caffe's size (e >= 0)
    eh = max(0, (oh - 1) * sh + kh - h - ph)
    ew = max(0, (ow - 1) * sw + kw - w - pw)
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, eh, ew])
    if layer.method == _POOL.MAX:
        g.node("MaxPool", [x], [g.top(0)], **attrs)
        return
    dh = _caffe_ave_divisor(h, kh, sh, ph, oh)
    dw = _caffe_ave_divisor(w, kw, sw, pw, ow)
    factor = (kh * kw) / (dh[:, None] * dw[None, :]).astype(np.float64)
    if np.all(factor == 1):
        g.node("AveragePool", [x], [g.top(0)], count_include_pad=1, **attrs)
        return
    y = g.node("AveragePool", [x], count_include_pad=1, **attrs)
    g.node("Mul", [y, g.const(f"{g.layer_name}/divisor_fix", factor.reshape(1, 1, oh, ow))], [g.top(0)])


# -- normalisation ----------------------------------------------------------------------------------------
def bn_affine(layer):
    """(mean, var, eps, gamma, beta) of a BatchNorm layer using its stored statistics (3- or 5-blob)."""
    if not layer.use_global:
        raise ValueError("batch statistics")
    mean, var = (np.asarray(to_numpy(a), np.float32).reshape(-1) for a in layer._running())
    c = mean.size
    gamma = weights(layer, 3).reshape(-1) if layer.scale_bias else np.ones(c, np.float32)
    beta = weights(layer, 4).reshape(-1) if layer.scale_bias else np.zeros(c, np.float32)
    return mean, var, float(layer.eps), gamma, beta


@converter("BatchNorm")
def batch_norm(g, layer):
    """BatchNormalization with the running statistics (BVLC: sums / scale factor; jacinto: mean/var + γ, β)."""
    try:
        mean, var, eps, gamma, beta = bn_affine(layer)
    except ValueError:
        raise g.error("normalises with the batch's statistics (TRAIN phase or use_global_stats: false); "
                      "export a TEST-phase net") from None
    x = g.bottom(0)
    shape = g.bottom_shape(0)
    if len(shape) < 2:
        raise g.error(f"bottom of shape {list(shape)} has no channel axis")
    if g.hook is not None:  # a quantized net: caffelite's own arithmetic order (see below)
        _batch_norm_steps(g, layer, x, shape, mean, var, eps, gamma, beta)
        return
    ins = [x] + [g.const(f"{g.layer_name}/{k}", v) for k, v in
                 (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var))]
    g.node("BatchNormalization", ins, [g.top(0)], epsilon=eps)


def _batch_norm_steps(g, layer, x, shape, mean, var, eps, gamma, beta):
    """``(x - mean) * (gamma / sqrt(var + eps)) + beta`` in float32 as caffelite's BatchNorm computes it.

    In a quantized net a value within a float32 ulp of a rounding boundary lands on either side depending on
    the last bit, and a flip propagates through the later quantized layers; BatchNormalization lets a runtime
    fold the statistics into the convolution with other roundings, these three steps keep caffelite's.
    """
    f32 = np.float32
    inv = f32(1) / np.sqrt(var + f32(eps))
    a = inv * gamma if layer.scale_bias else inv
    bshape = _bshape(len(shape), 1, mean.shape)
    y = g.node("Sub", [x, g.const(f"{g.layer_name}/mean", mean.reshape(bshape))])
    if not layer.scale_bias:
        g.node("Mul", [y, g.const(f"{g.layer_name}/inv_std", a.reshape(bshape))], [g.top(0)])
        return
    y = g.node("Mul", [y, g.const(f"{g.layer_name}/gamma_inv_std", a.reshape(bshape))])
    g.node("Add", [y, g.const(f"{g.layer_name}/beta", beta.reshape(bshape))], [g.top(0)])


@converter("LRN")
def lrn(g, layer):
    """ACROSS_CHANNELS is ONNX LRN exactly; WITHIN_CHANNEL is x * (1 + alpha * avgpool(x²))^-beta."""
    x = g.bottom(0)
    if layer.across:
        g.node("LRN", [x], [g.top(0)], size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)
        return
    p = (layer.size - 1) // 2
    sq = g.node("Mul", [x, x])
    avg = g.node("AveragePool", [sq], kernel_shape=[layer.size] * 2, pads=[p] * 4, count_include_pad=1)
    s = g.node("Add", [g.node("Mul", [avg, g.const("alpha", layer.alpha)]), g.const("one", 1.0)])
    g.node("Mul", [x, g.node("Pow", [s, g.const("neg_beta", -layer.beta)])], [g.top(0)])


# -- element-wise -----------------------------------------------------------------------------------------
def _operand(g, layer, k_param, j_bottom, hint):
    """Learned param ``k_param`` or bottom ``j_bottom``, reshaped to broadcast from the layer's axis."""
    ndim = len(g.bottom_shape(0))
    if len(layer.param.bottom) > 1 and j_bottom is not None:
        pshape = g.bottom_shape(j_bottom)
        return g.node("Reshape", [g.bottom(j_bottom), g.const(f"{g.layer_name}/{hint}_shape",
                                                              _bshape(ndim, layer.axis, pshape), np.int64)])
    w = weights(layer, k_param)
    return g.const(f"{g.layer_name}/{hint}", w.reshape(_bshape(ndim, layer.axis, w.shape)))


def _check_axis0(g, layer):
    if g.dynamic_batch and layer.axis == 0:
        raise g.error("axis 0 (a per-item parameter) cannot have a dynamic batch; drop --dynamic-batch")


@converter("Scale")
def scale(g, layer):
    """Mul (and Add for bias_term) with the parameter broadcast over axes ``axis .. axis+num_axes``."""
    _check_axis0(g, layer)
    two = len(layer.param.bottom) > 1
    gamma = _operand(g, layer, 0, 1, "gamma")
    if not layer.bias_term:
        g.node("Mul", [g.bottom(0), gamma], [g.top(0)])
        return
    y = g.node("Mul", [g.bottom(0), gamma])
    beta = weights(layer, 0 if two else 1)
    ndim = len(g.bottom_shape(0))
    g.node("Add", [y, g.const(f"{g.layer_name}/beta", beta.reshape(_bshape(ndim, layer.axis, beta.shape)))],
           [g.top(0)])


@converter("Bias")
def bias(g, layer):
    _check_axis0(g, layer)
    g.node("Add", [g.bottom(0), _operand(g, layer, 0, 1, "bias")], [g.top(0)])


@converter("Eltwise")
def eltwise(g, layer):
    """SUM (with coefficients: Mul by each, in Caffe's order), PROD (Mul chain), MAX (Max)."""
    xs = [g.bottom(j) for j in range(len(layer.param.bottom))]
    if layer.op == _ELT.MAX:
        g.node("Max", xs, [g.top(0)])
        return
    if layer.op == _ELT.PROD:
        acc = xs[0]
        for k, x in enumerate(xs[1:], 1):
            acc = g.node("Mul", [acc, x], [g.top(0)] if k == len(xs) - 1 else None)
        if len(xs) == 1:
            g.node("Identity", [acc], [g.top(0)])
        return
    terms = [x if c == 1.0 else g.node("Mul", [x, g.const(f"{g.layer_name}/coeff{k}", c)])
             for k, (x, c) in enumerate(zip(xs, layer.coeffs, strict=True))]
    acc = terms[0]
    for k, t in enumerate(terms[1:], 1):  # pairwise left to right, as Caffe accumulates
        acc = g.node("Add", [acc, t], [g.top(0)] if k == len(terms) - 1 else None)
    if len(terms) == 1:
        g.node("Identity", [acc], [g.top(0)])


# -- activations ------------------------------------------------------------------------------------------
@converter("ReLU")
def relu(g, layer):
    if layer.slope == 0:
        g.node("Relu", [g.bottom(0)], [g.top(0)])
    else:
        g.node("LeakyRelu", [g.bottom(0)], [g.top(0)], alpha=layer.slope)


@converter("PReLU")
def prelu(g, layer):
    """PRelu with the slopes broadcast over the channel axis (one slope when channel_shared)."""
    a = weights(layer, 0)
    ndim = len(g.bottom_shape(0))
    slope = a.reshape(1) if layer.channel_shared else a.reshape(_bshape(ndim, 1, a.shape))
    g.node("PRelu", [g.bottom(0), g.const(f"{g.layer_name}/slope", slope)], [g.top(0)])


@converter("Sigmoid", "TanH", "AbsVal")
def simple(g, layer):
    op = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs"}[layer.param.type]
    g.node(op, [g.bottom(0)], [g.top(0)])


@converter("ELU")
def elu(g, layer):
    g.node("Elu", [g.bottom(0)], [g.top(0)], alpha=float(layer.param.elu_param.alpha))


@converter("Dropout", "Split")
def identity(g, layer):
    """TEST-phase Dropout is the identity (Caffe scales at train time); Split copies its bottom to each top."""
    if layer.param.type == "Dropout" and layer.phase != caffe_pb2.TEST:
        raise g.error("a TRAIN-phase Dropout drops random units; export a TEST-phase net")
    for j in range(len(layer.param.top)):
        g.set_current(layer.param.top[j], g.bottom(0))


@converter("Silence", "Input")
def nothing(g, layer):
    """Silence computes nothing; an Input layer's tops are the graph inputs (named by the builder)."""


# -- structure --------------------------------------------------------------------------------------------
@converter("Concat")
def concat(g, layer):
    g.node("Concat", [g.bottom(j) for j in range(len(layer.param.bottom))], [g.top(0)], axis=int(layer.axis))


@converter("Slice")
def slice_(g, layer):
    g.need_opset(13, "Split with a sizes input")
    sizes = [g.top_shape(j)[layer.axis] for j in range(len(layer.param.top))]
    if layer.axis == 0:
        g.check_batch_kept(g.bottom_shape(0), g.top_shape(0))
    split = g.const(f"{g.layer_name}/sizes", sizes, np.int64)
    g.node("Split", [g.bottom(0), split], [g.top(j) for j in range(len(sizes))], axis=int(layer.axis))


@converter("Flatten", "Reshape")
def reshape(g, layer):
    g.check_batch_kept(g.bottom_shape(0), g.top_shape(0))
    g.reshape(g.bottom(0), g.top_shape(0), g.top(0))


@converter("Softmax")
def softmax(g, layer):
    if layer.axis != len(g.bottom_shape(0)) - 1:  # before 13, Softmax flattens the axes from `axis` on
        g.need_opset(13, "Softmax over one axis that is not the last")
    g.node("Softmax", [g.bottom(0)], [g.top(0)], axis=int(layer.axis))


@converter("ArgMax")
def argmax(g, layer):
    """Caffe's top-k with ties to the larger index: TopK on the axis reversed (so the first of equal values is
    the largest index), indices mapped back; values and/or indices as float, in Caffe's top shape."""
    shape = g.bottom_shape(0)
    x = g.bottom(0)
    if layer.has_axis:
        axis = layer.axis
        if axis == 0:
            g.check_batch_kept(shape, g.top_shape(0))
    else:
        x = g.node("Flatten", [x], axis=1)
        axis = 1
    n = shape[axis] if layer.has_axis else int(np.prod(shape[1:]))
    rev = g.node("Slice", [x, g.const("start", [-1], np.int64), g.const("end", [-(2 ** 62)], np.int64),
                           g.const("axes", [axis], np.int64), g.const("steps", [-1], np.int64)])
    vals, ridx = g.node("TopK", [rev, g.const("k", [layer.top_k], np.int64)], [g.fresh("values"), g.fresh("ridx")],
                        axis=axis, largest=1, sorted=1)
    idx = g.node("Sub", [g.const("last", n - 1, np.int64), ridx])
    fidx = g.node("Cast", [idx], to=1)  # FLOAT: Caffe's ArgMax top holds indices as floats
    if layer.has_axis:
        g.node("Identity", [vals if layer.out_max_val else fidx], [g.top(0)])
        return
    g.need_opset(13, "Unsqueeze with an axes input")
    parts = [fidx, vals] if layer.out_max_val else [fidx]
    both = g.node("Concat", [g.node("Unsqueeze", [p, g.const("ax1", [1], np.int64)]) for p in parts], axis=1)
    g.reshape(both, g.top_shape(0), g.top(0))


@converter("Crop")
def crop(g, layer):
    """Slice of bottom 0 to bottom 1's shape from ``axis`` on, at Caffe's offsets (kept in ``layer.region``)."""
    starts, ends, axes = [], [], []
    for a, r in enumerate(layer.region):
        if r.start is not None or r.stop is not None:
            starts.append(r.start or 0)
            ends.append(r.stop)
            axes.append(a)
    if 0 in axes:
        g.check_batch_kept(g.bottom_shape(0), g.top_shape(0))
    ins = [g.bottom(0), g.const("starts", starts, np.int64), g.const("ends", ends, np.int64),
           g.const("axes", axes, np.int64)]
    g.node("Slice", ins, [g.top(0)])
