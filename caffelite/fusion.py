"""Inference fusion: a Convolution followed by in-place BatchNorm / Scale / ReLU layers, computed in one pass.

In a TEST-phase net, ``conv -> BatchNorm (global statistics) -> [Scale] -> ReLU``, all in place on the
convolution's top, leaves in that blob ``relu(bn(conv(x)))``. The compiled convolution kernel can apply the
per-channel affine of the normalisation and the ReLU while it stores each output tile
(:func:`caffelite.ops.native.conv_forward`'s epilogue), which saves three passes over the activation per chain
(jsegnet21v2's deploy forward at 1x3x512x1024 on the 2-core CPU: 72 ms fused, 80 ms layer by layer, medians of
9 interleaved runs).

The values are those of the separate layers up to float rounding (the affine is applied with a fused
multiply-add, and a BatchNorm followed by a Scale is folded into one affine).

When it applies, all of:
- the net is in the TEST phase and no per-layer forward hook is registered (debug_info, jacinto quantization
  and any user hook watch each layer's own output, so they switch fusion off);
- the chain members run in the same ``forward`` call (a ``start``/``end`` inside a chain runs the layers
  one by one);
- the convolution can run on the compiled kernel now (float32 NumPy; see ``ConvolutionLayer.forward_fused``)
  and each normalisation layer reports an inference affine now (``inference_affine()``: global statistics).
A ``backward`` after a fused forward first re-runs the fused chains layer by layer, so every layer has the
state its backward reads. ``Net.fusion = False`` turns fusion off for a net.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ops import native

#: layer types that may follow the convolution in place; a ReLU ends the chain
_AFFINE_TYPES = ("BatchNorm", "Scale")


@dataclass
class Chain:
    """A fusable run: the convolution's layer index and its in-place followers (affines, then an optional ReLU)."""

    conv: int
    affines: list = field(default_factory=list)
    relu: int | None = None

    @property
    def last(self) -> int:
        return self.relu if self.relu is not None else (self.affines[-1] if self.affines else self.conv)


def plan(net) -> dict:
    """The chains of ``net`` keyed by convolution layer index (only chains with at least one follower)."""
    chains = {}
    layers = net.layers
    tops = [net.top_ids(k) for k in range(len(layers))]
    bottoms = [net.bottom_ids(k) for k in range(len(layers))]
    i = 0
    while i < len(layers):
        if layers[i].type != "Convolution" or len(tops[i]) != 1 or len(bottoms[i]) != 1:
            i += 1
            continue
        blob = tops[i][0]
        ch = Chain(i)
        j = i + 1
        while j < len(layers) and bottoms[j] == [blob] and tops[j] == [blob]:
            t = layers[j].type
            if t in _AFFINE_TYPES and ch.relu is None and hasattr(layers[j], "inference_affine"):
                ch.affines.append(j)
            elif t == "ReLU" and ch.relu is None:
                ch.relu = j
            else:
                break
            j += 1
        if ch.last != i and not any(net.loss_tops(k) for k in range(i, ch.last + 1)):
            chains[i] = ch
        i = ch.last + 1
    return chains


def _affine(net, ch: Chain):
    """The combined per-channel (scale, shift) of the chain's normalisation layers, or None when one of them
    is not in an inference state now (e.g. BatchNorm using batch statistics)."""
    scale = shift = None
    for j in ch.affines:
        ab = net.layers[j].inference_affine(net.bottom_vecs(j))
        if ab is None:
            return None
        a, b = (np.asarray(v, dtype=np.float64).reshape(-1) for v in ab)
        if scale is None:
            scale, shift = a, b
        else:
            scale, shift = scale * a, shift * a + b
    if scale is None:
        return None, None
    return scale.astype(np.float32), shift.astype(np.float32)


def run(net, ch: Chain) -> bool:
    """Run the whole chain as one convolution forward; False (nothing done) when it cannot be fused now."""
    conv = net.layers[ch.conv]
    bottom, top = net.bottom_vecs(ch.conv), net.top_vecs(ch.conv)
    if not native.usable(bottom[0].data, top[0].data, conv.blobs[0].data):
        return False  # only the compiled kernel folds the followers in (CuPy and float64 run layer by layer)
    ab = _affine(net, ch)
    if ab is None:
        return False
    slope = None
    if ch.relu is not None:
        slope = float(net.layers[ch.relu].param.relu_param.negative_slope)
    conv.reshape(bottom, top)
    if not conv.forward_fused(bottom, top, ab[0], ab[1], slope):
        return False
    for j in ch.affines + ([ch.relu] if ch.relu is not None else []):
        net.layers[j].reshape(net.bottom_vecs(j), net.top_vecs(j))  # keep Caffe's reshape-before-forward
    return True
