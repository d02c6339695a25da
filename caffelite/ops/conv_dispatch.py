"""The one place a Convolution layer's forward picks its engine (:mod:`caffelite.ops.engine`).

Order: the engine the layer's plan names, when it can take the call now (a registered engine such as int8, or
the sparse kernel with the layer's packed weights), then the dense float path (:mod:`caffelite.ops.conv`:
compiled direct kernel, BLAS for 1x1, the NumPy reference otherwise). ``layer.engine_used`` records what ran.

A layer with ``exact_sums`` set (by a hook that simulates fixed-point arithmetic and needs the convolution sums
the integers would give) runs :func:`caffelite.ops.conv.conv_forward_exact` instead of the float kernels:
the float32 kernels sum in different orders, so each would round some sums differently.
Used by ``ConvolutionLayer.forward`` / ``forward_fused`` (the latter from :mod:`caffelite.fusion`).
"""

from __future__ import annotations

from . import conv as K
from . import engine, sparse_conv


def _sparse_pack(layer, w):
    """The layer's packed weights, repacked when its weight array was replaced; None when it runs dense."""
    pk = getattr(layer, "sparse_pack", None)
    if pk is None or engine.suspended(layer):
        return None
    if not pk.matches(w):
        pk = layer.sparse_pack = sparse_conv.pack_layer(layer)
    return pk


def conv_forward(layer, x, w, b, out, scale=None, shift=None, relu_slope=None, fused=False) -> bool:
    """Forward of Convolution ``layer`` into ``out``. With ``fused`` the epilogue (``* scale + shift``, ReLU
    with ``relu_slope``) is applied too, and False is returned, nothing computed, when no kernel can apply it;
    otherwise always True."""
    plan = getattr(layer, "engine_plan", "dense")
    exact = getattr(layer, "exact_sums", False)
    if plan not in ("dense", "sparse") and not engine.suspended(layer):
        run = engine.runner(plan)
        if run is not None and run(layer, x, w, b, out, scale, shift, relu_slope):
            layer.engine_used = plan
            return True
    elif plan == "sparse" and not exact:
        pk = _sparse_pack(layer, w)
        if pk is not None and sparse_conv.usable(x, out):
            sparse_conv.conv_forward(x, pk, b, layer.geom, out, scale, shift, relu_slope)
            layer.engine_used = "sparse"
            return True
    if exact:
        if fused:
            return False
        K.conv_forward_exact(x, w, b, layer.geom, layer.group, out)
    elif fused:
        if not K.conv_forward_epilogue(x, w, b, layer.geom, layer.group, out, scale, shift, relu_slope):
            return False
    else:
        K.conv_forward(x, w, b, layer.geom, layer.group, out)
    layer.engine_used = "dense"
    return True
