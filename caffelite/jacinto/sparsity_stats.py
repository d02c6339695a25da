"""Which weights count as sparsity and how caffe-jacinto logs it (docs/jacinto-spec.md §a.4), plus conv-layer
geometry (§a.3).

Works on any object with ``net.layers`` (each layer has ``.param``, a LayerParameter, and ``.blobs``).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import log as glog
from . import threshold as th

SOFTMAX_TYPES = ("Softmax", "SoftmaxWithLoss")


def conv_layers(net):
    """``[(index, layer)]`` of every layer whose type string is exactly ``"Convolution"`` with a weight blob."""
    return [(i, ly) for i, ly in enumerate(net.layers) if ly.param.type == "Convolution" and ly.blobs]


def param_key(layer, b=0):
    """jacinto's map key ``<layer>_param_<ParamSpec.name or index>`` (§a.4)."""
    specs = layer.param.param
    name = specs[b].name if b < len(specs) and specs[b].name else str(b)
    return f"{layer.param.name}_param_{name}"


def count_candidates(net):
    """``[(index, layer)]`` whose weights are counted: Convolutions not directly followed by a Softmax (§a.4)."""
    layers = net.layers
    out = []
    for i, ly in conv_layers(net):
        nxt = layers[i + 1].param.type if i + 1 < len(layers) else None
        if nxt not in SOFTMAX_TYPES:
            out.append((i, ly))
    return out


def kernel_hw(cp):
    """Kernel height/width as jacinto reads them: kernel_h/kernel_w if either is set, else kernel_size."""
    if cp.HasField("kernel_h") or cp.HasField("kernel_w"):
        return int(cp.kernel_h), int(cp.kernel_w)
    ks = list(cp.kernel_size)
    if not ks:
        return 0, 0
    return int(ks[0]), int(ks[1] if len(ks) > 1 else ks[0])


def layer_geometry(layer):
    """``(ni, no, group, kh, kw)`` of a Convolution layer's weight blob (§a.3)."""
    cp = layer.param.convolution_param
    g = int(cp.group)
    ni, no = th.conv_geometry(layer.blobs[0].shape, g, None)
    kh, kw = kernel_hw(cp)
    return ni, no, g, kh, kw


def zero_counts(net, masks=None):
    """``{key: (zeros, count)}`` over the counted blobs: exact zeros of the weights, or mask zeros (§a.4).

    ``masks`` (``{layer index: array}``) selects the connectivity variant; a layer without a mask counts 0.
    """
    res = {}
    for i, ly in count_candidates(net):
        w = ly.blobs[0].data
        xp = backend.get_array_module(w)
        if masks is None:
            z = int(xp.count_nonzero(xp.abs(w) <= 0))
        else:
            m = masks.get(i)
            z = 0 if m is None else int(xp.count_nonzero(m == 0))
        res[param_key(ly)] = (z, int(w.size))
    return res


def totals(counts):
    """``(zeros, count, ratio)`` with float32 sums, as jacinto."""
    z = np.float32(sum(np.float32(c[0]) for c in counts.values())) if counts else np.float32(0)
    n = np.float32(sum(np.float32(c[1]) for c in counts.values())) if counts else np.float32(0)
    r = np.float32(z / n) if n else np.float32(0)
    return z, n, r


def sparsity(net, masks=None):
    """Total sparsity ratio (float32) of the counted blobs (weights or, with ``masks``, connectivity)."""
    return totals(zero_counts(net, masks))[2]


def _g3(v):
    return f"{float(v):.3g}"


def format_sparsity(counts, connectivity=False):
    """The log lines of Net::DisplaySparsity / DisplayConnectivitySparsity (verbose), in map (sorted) order."""
    word = "ConnectivitySparsity" if connectivity else "Sparsity"
    lines = [f"Num Params({len(counts)}), {word} (zero_weights/count): "]
    for key in sorted(counts):
        z, n = counts[key]
        lines.append(f"{key}({_g3(np.float32(z) / np.float32(n) if n else 0)}) ")
    z, n, r = totals(counts)
    lines.append(f"Total {word} (zero_weights/count) =  ({glog.fmt(z)}/{glog.fmt(n)}) {_g3(r)}")
    return lines


_SRC = ("net.cpp:2301", "net.cpp:2312", "net.cpp:2316")


def display_sparsity(net, masks=None):
    """Log the per-blob and total sparsity in jacinto's format (``caffe test --display_sparsity`` uses this)."""
    lines = format_sparsity(zero_counts(net, masks), connectivity=masks is not None)
    for j, line in enumerate(lines):
        glog.info(line, _SRC[0] if j == 0 else (_SRC[2] if j == len(lines) - 1 else _SRC[1]))
    return lines
