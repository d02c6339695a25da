"""The hot ops of the compute-heavy layers (convolution, BatchNorm, ReLU, pooling): each chooses its body in one
place — a compiled CPU kernel (float32 NumPy, when built and :func:`native.enabled <.native.enabled>`), a named
CuPy kernel (:mod:`caffelite.kernels`, on CuPy arrays), or its plain ``xp`` reference body (cache-blocked CPU
variants are functions of their own, tested against that reference). Layers call these ops only.

Every function takes arrays of one module (NumPy or CuPy) and works on that module: the module is taken
from the inputs with :func:`caffelite.backend.get_array_module`. No per-element Python loops: the only
Python loops run over kernel offsets (at most kh*kw iterations of whole-array operations).

- :mod:`.im2col`: 2-D convolution geometry, padding, im2col via a strided view, col2im via kernel-offset
  slice-adds, and a shared scratch workspace.
- :mod:`.conv`: grouped convolution forward/backward as batched GEMMs (no im2col for 1x1); the reference path.
- :mod:`.depthwise`: one-channel-per-group (de)convolution as shifted slices (jsegnet's bilinear upsampling).
- :mod:`.native`: the optional compiled direct-convolution kernels (``caffelite/_native``), which
  :mod:`.conv` hands float32 NumPy work to when they are built; also the inference epilogue used by
  :mod:`caffelite.fusion`.
- :mod:`.pool`: MAX/AVE pooling forward/backward with Caffe's window and divisor rules.
- :mod:`.native_glue`: the compiled kernels :mod:`.depthwise` (deconvolution), :mod:`.pool` (MAX forward
  without argmax) and :mod:`.argmax` (ArgMax top-1 along an axis) hand float32 NumPy work to, bitwise the same.
- :mod:`.batch_norm`: BatchNorm's batch statistics, normalisation and gradients; :mod:`.relu`: ReLU;
  :mod:`.native_bn`: the compiled kernels both hand float32 NumPy work to.
- :mod:`.engine`: which engine (dense, sparse, int8, auto) runs each convolution of a net;
  :mod:`.conv_dispatch`: the one place a Convolution's forward follows that choice;
  :mod:`.sparse_conv`: packed nonzero weights and the compiled sparse kernel.
"""

from .im2col import ConvGeometry, col2im, im2col, workspace  # noqa: F401
