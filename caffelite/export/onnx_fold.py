"""``--fold-bn``: BatchNorm (and a following per-channel Scale) folded into the preceding Convolution.

``conv(x)·a + b`` is ``conv'(x)`` with ``W' = W·a`` per output channel and ``bias' = bias·a + b``: the same
function up to float32 rounding of the folded products (the export tests compare within 1e-4 relative).
"""

from __future__ import annotations

import numpy as np

from .onnx_layers import bn_affine, weights


def _scale_affine(layer, channels):
    """(a, b) of a learned single-bottom Scale over the channel axis only, else None."""
    if len(layer.param.bottom) != 1 or layer.axis != 1 or not layer.blobs:
        return None
    a = weights(layer, 0).reshape(-1)
    if a.size != channels or layer.blobs[0].shape != (channels,):
        return None
    b = weights(layer, 1).reshape(-1) if layer.bias_term else np.zeros(channels, np.float32)
    return a, b


def plan(net):
    """``(folded, identities)``: conv index -> (scale, shift) and the indices of the layers folded away."""
    folded, identities = {}, set()
    writer = {}  # blob -> index of the conv whose output it still is (through folded layers)
    for i, layer in enumerate(net.layers):
        t = layer.param.type
        bots, tops = net.bottom_ids(i), net.top_ids(i)
        src = writer.get(bots[0]) if len(bots) == 1 else None
        aff = None
        if src is not None and len(tops) == 1:
            c = net.layers[src].num_output
            if t == "BatchNorm":
                try:
                    mean, var, eps, gamma, beta = bn_affine(layer)
                except ValueError:
                    mean = None
                if mean is not None:
                    a = (gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps))
                    aff = a, beta - mean * a
            elif t == "Scale":
                aff = _scale_affine(layer, c)
        for b in bots:
            writer.pop(b, None)
        if aff is not None:
            s0, h0 = folded.get(src, (np.ones(c), np.zeros(c)))
            a, b = (np.asarray(v, np.float64) for v in aff)
            folded[src] = (s0 * a, h0 * a + b)
            identities.add(i)
            writer[tops[0]] = src
            continue
        if t == "Convolution" and len(tops) == 1:
            writer[tops[0]] = i
    return ({k: (s.astype(np.float32), h.astype(np.float32)) for k, (s, h) in folded.items()}, identities)
