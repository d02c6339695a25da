"""Fold BatchNorm (and a following Scale) into the preceding Convolution: caffe-jacinto's ``caffe optimize``
(Net::OptimizeNet, docs/jacinto-spec.md §b.8).

For every Convolution at index i whose top is read by a BatchNorm at i+1 (optionally followed by a Scale at
i+2 reading the BatchNorm's top), per output channel o::

    s = 1/sqrt(var[o] + eps);  W[o] *= s*gamma[o];  b[o] = (b[o] - mean[o]) * s * gamma[o] + beta[o]

A missing conv bias becomes a zero bias (``bias_term: true``). Both layouts are read through the built
layers: caffe-jacinto's 5-blob BatchNorm (gamma/beta inside) and BVLC's BatchNorm (statistics times a scale
factor) + Scale. As jacinto, the BatchNorm/Scale then become identities (mean 0, var 1-eps, gamma 1, beta 0);
``remove=True`` drops them instead (the conv writes the last top of the chain), which is exact and faster.
eps is the layer's effective eps (jacinto floors it at 1e-5 in forward; OptimizeNet used the prototxt value,
which differs only for eps < 1e-5 and would make the folded net disagree with the original).
The arithmetic is float64, rounded once to float32.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..io.blobs import array_to_blob, blob_to_array
from ..proto import caffe_pb2


def find_chains(net):
    """``[(conv index, bn index, scale index or None)]`` of the foldable Convolution→BatchNorm[→Scale] chains."""
    layers = net.layers
    bots = [net.bottom_ids(k) for k in range(len(layers))]
    tops = [net.top_ids(k) for k in range(len(layers))]
    out = []
    for i, ly in enumerate(layers[:-1]):
        if ly.param.type != "Convolution" or not tops[i]:
            continue
        j = i + 1
        if layers[j].param.type != "BatchNorm" or not bots[j] or bots[j][0] != tops[i][0]:
            continue
        k = j + 1
        sc = None
        if k < len(layers) and layers[k].param.type == "Scale" and len(bots[k]) == 1 and bots[k][0] == tops[j][0]:
            sp = layers[k].param.scale_param
            if sp.axis == 1 and sp.num_axes == 1:
                sc = k
        out.append((i, j, sc))
    return out


def _np(blob):
    return backend.to_numpy(blob.data).astype(np.float64)


def _bn_stats(bn):
    """(mean, var, eps, gamma, beta) of a built BatchNorm layer, float64 host arrays."""
    mean, var = (backend.to_numpy(a).astype(np.float64) for a in bn._running())
    c = mean.size
    if getattr(bn, "scale_bias", False) and len(bn.blobs) >= 5:
        gamma, beta = _np(bn.blobs[3]).reshape(-1), _np(bn.blobs[4]).reshape(-1)
    else:
        gamma, beta = np.ones(c), np.zeros(c)
    return mean.reshape(-1), var.reshape(-1), float(bn.eps), gamma, beta


def fold_arrays(w, b, mean, var, eps, gamma, beta):
    """The folded conv weights and bias (float32) for output-channel statistics (§b.8)."""
    w = np.asarray(w, np.float64)
    b = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64).reshape(-1)
    f = gamma / np.sqrt(var + eps)
    w2 = w * f.reshape((-1,) + (1,) * (w.ndim - 1))
    b2 = (b - mean) * f + beta
    return w2.astype(np.float32), b2.astype(np.float32)


def _set(lp, arrays, form="jacinto"):
    del lp.blobs[:]
    for a in arrays:
        lp.blobs.add().CopyFrom(array_to_blob(np.asarray(a, np.float32), form))


def fold_batchnorm(net, model_param=None, remove=False):
    """Fold every chain of ``net`` (a built Net with weights).

    Returns ``(model, weights, names)``: the edited prototxt NetParameter (``model_param`` — the net as read,
    without Split layers — or the runtime one), the caffemodel NetParameter (every layer with blobs, as
    ``net.to_proto()``), and the names of the folded convolutions.
    """
    weights = net.to_proto()
    model = caffe_pb2.NetParameter()
    model.CopyFrom(model_param if model_param is not None else weights)
    for lp in model.layer:
        del lp.blobs[:]
    by_name_w = {lp.name: lp for lp in weights.layer}
    by_name_m = {lp.name: lp for lp in model.layer}
    folded, drop = [], set()
    for i, j, k in find_chains(net):
        conv, bn = net.layers[i], net.layers[j]
        mean, var, eps, gamma, beta = _bn_stats(bn)
        if k is not None:
            sb = net.layers[k].blobs
            gamma = gamma * _np(sb[0]).reshape(-1)
            beta = beta * _np(sb[0]).reshape(-1) + (_np(sb[1]).reshape(-1) if len(sb) > 1 else 0.0)
        w = _np(conv.blobs[0])
        b = _np(conv.blobs[1]) if len(conv.blobs) > 1 else None
        w2, b2 = fold_arrays(w, b, mean, var, eps, gamma, beta)
        name = conv.param.name
        _set(by_name_w[name], [w2, b2])
        for p in (by_name_w.get(name), by_name_m.get(name)):
            if p is not None:
                p.convolution_param.bias_term = True
        bn_lp = by_name_w[bn.param.name]
        c = mean.size
        if remove:
            last = net.top_ids(k if k is not None else j)[0]
            for p in (by_name_w.get(name), by_name_m.get(name)):
                if p is not None:
                    p.top[0] = last
            drop.add(bn.param.name)
            if k is not None:
                drop.add(net.layers[k].param.name)
        else:
            _identity_bn(bn, bn_lp, c)
            if k is not None:
                sc_lp = by_name_w[net.layers[k].param.name]
                arrays = [np.ones(c)] + ([np.zeros(c)] if len(net.layers[k].blobs) > 1 else [])
                _set(sc_lp, arrays)
        folded.append(name)
    for msg in (model, weights):
        keep = [lp for lp in msg.layer if lp.name not in drop]
        del msg.layer[:]
        msg.layer.extend(keep)
    return model, weights, folded


def _identity_bn(bn, lp, c):
    """Make a BatchNorm an identity: mean 0, var 1-eps (scale factor 1 for BVLC), gamma 1, beta 0."""
    eps = float(bn.eps)
    arrays = [blob_to_array(bp) for bp in lp.blobs]
    arrays[0] = np.zeros(c)
    arrays[1] = np.full(c, 1.0 - eps)
    arrays[2] = np.ones(arrays[2].shape)
    if len(arrays) >= 5:
        arrays[3] = np.ones(c)
        arrays[4] = np.zeros(c)
    _set(lp, arrays)
