"""Coordinate maps between the tops of a :class:`~caffelite.net_spec.NetSpec` net, and :func:`crop`, which
adds the Crop layer aligning one top with another (pycaffe's ``caffe.coord_map``, used by FCN nets).

A map is ``(axis, a, b)``: along the spatial axes after ``axis``, a coordinate ``x`` of one blob corresponds
to ``a * x + b`` in the other (``a`` and ``b`` are arrays, one value per spatial axis, or scalars).
Convolution and pooling map bottom to top as ``x / stride + (pad - (k - 1) / 2) / stride`` (``k`` the dilated
kernel extent), deconvolution as ``stride * x + (k - 1) / 2 - pad``, Crop as ``x - offset``; element-wise
layers keep coordinates.
"""

from __future__ import annotations

import numpy as np

from .net_spec import layers as L

__all__ = ["coord_map", "coord_map_from_to", "crop", "crop_params", "conv_params", "compose", "inverse",
           "AxisMismatchException", "UndefinedMapException", "PASS_THROUGH_LAYERS"]

#: layers whose top coordinates are their bottom's
PASS_THROUGH_LAYERS = ("AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold",
                       "Clip", "Swish")


class AxisMismatchException(Exception):
    """Two maps disagree on the axis after which coordinates are spatial."""


class UndefinedMapException(Exception):
    """A layer on the path has no coordinate map (InnerProduct, Reshape...), or the tops share no ancestor."""


def conv_params(fn):
    """(axis, stride, dilated kernel extent, pad) of a Convolution/Pooling/Deconvolution/Im2col Function."""
    params = fn.params.get("convolution_param", fn.params)
    if fn.type_name == "Pooling":
        params = fn.params.get("pooling_param", fn.params)
    axis = params.get("axis", 1)
    ks = np.array(params["kernel_size"], ndmin=1) if "kernel_size" in params else \
        np.array([params["kernel_h"], params["kernel_w"]])
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    if "stride_h" in params:
        stride = np.array([params["stride_h"], params["stride_w"]])
    else:
        stride = np.array(params.get("stride", 1), ndmin=1)
    if "pad_h" in params:
        pad = np.array([params["pad_h"], params["pad_w"]])
    else:
        pad = np.array(params.get("pad", 0), ndmin=1)
    return axis, stride, (ks - 1) * dilation + 1, pad


def crop_params(fn):
    """(axis, offset) of a Crop Function (Caffe's defaults: axis 2, offset 0)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The bottom-to-top map ``(axis, a, b)`` of one layer (a Function)."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset
    raise UndefinedMapException(f"no coordinate map for a {fn.type_name} layer")


def compose(base_map, next_map):
    """The map of applying ``base_map`` and then ``next_map``."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"coordinate axes differ: {ax1} and {ax2}")
    return ax, a1 * a2, a2 * b1 + b2


def inverse(coord_map_):
    """The inverse map: ``x = (y - b) / a``."""
    ax, a, b = coord_map_
    return ax, 1 / a, -b / a


def _chain(top):
    """``top`` and the tops above it through first bottoms, each with the map from it to ``top``; the walk
    stops below a layer that has no coordinate map."""
    out = [(top, (None, 1, 0))]
    cur, acc = top, (None, 1, 0)
    while cur.fn.inputs:
        try:
            acc = compose(coord_map(cur.fn), acc)
        except UndefinedMapException:
            break
        cur = cur.fn.inputs[0]
        out.append((cur, acc))
    return out


def coord_map_from_to(top_from, top_to):
    """The map ``(axis, a, b)`` taking coordinates of ``top_from`` to those of ``top_to``, through their
    nearest common ancestor (following each layer's first bottom)."""
    to_maps = {}
    for t, m in _chain(top_to):
        to_maps.setdefault(id(t), m)
    for t, m_from in _chain(top_from):
        if id(t) in to_maps:
            # ancestor -> from is m_from, ancestor -> to is to_maps[...]: from -> to goes back, then forward
            return compose(inverse(m_from), to_maps[id(t)])
    raise UndefinedMapException("the two tops share no ancestor reachable through coordinate-mapping layers")


def crop(top_from, top_to):
    """A Crop layer (a Top) cropping ``top_from`` to the extent of ``top_to``, with the axis and offsets the
    coordinate map between them requires."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (a == 1).all():
        raise ValueError(f"crop: scale mismatch between the tops (a = {a}); they must have the same resolution")
    if not (b <= 0).all():
        raise ValueError(f"crop: cannot crop a negative offset (b = {b}): top_from is smaller than top_to")
    if not (np.round(b) == b).all():
        raise ValueError(f"crop: the offset is not an integer (b = {b})")
    offset = [int(v) for v in (-np.round(b)).astype(int).ravel()]
    axis = 1 if ax is None else ax  # only element-wise layers between them: crop the spatial axes
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=offset))
