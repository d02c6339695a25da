"""Named CuPy kernels for the measured GPU hotspots, each with the NumPy body it must agree with.

ARCHITECTURE.md rule 3: layers write one ``xp`` body; a GPU kernel replaces it only where that body is slow
on CuPy (many small launches, scatter-adds, float64 temporaries), and is tested for parity against it
(``tests/test_gpu_parity.py``, ``pytest -m gpu``). Every public function here takes the same arrays as the
generic body and dispatches on the array module: NumPy arrays run the reference (the generic body itself,
or a transcription of the layer's formula), CuPy arrays run the kernel.

Kernels are CUDA source strings compiled lazily — on first use, once per (name, dtype) — through
:func:`kernel`, which reaches CuPy only through :mod:`caffelite.backend`.

=====================  =============================================================  ==================
name                   what                                                           module
=====================  =============================================================  ==================
``im2col``             columns (N, C, kh, kw, Ho, Wo) of a padded/strided/dilated x    :mod:`.im2col`
``col2im``             the adjoint, gathered per pixel (no atomics)                    :mod:`.im2col`
``max_pool_fwd``       MAX pooling with the window-offset argmax (first max wins)      :mod:`.pool`
``max_pool_bwd``       its gradient, gathered per input pixel                          :mod:`.pool`
``bn_stats``           per-channel mean and biased variance, two passes, one block/C   :mod:`.batchnorm`
``softmax_loss_fwd``   per-location −log(max(p_label, FLT_MIN))·w and valid flags      :mod:`.softmax_loss`
``softmax_loss_bwd``   (p − onehot)·valid·scale                                        :mod:`.softmax_loss`
``fixed_point``        jacinto's Trim2FixedPoint, NEAREST, in float64 (§b.5)            :mod:`.quantize`
=====================  =============================================================  ==================
"""

from __future__ import annotations

import numpy as np

from .. import backend

__all__ = ["kernel", "on_gpu", "KERNELS", "compiled"]

#: every kernel name this package defines (the parity tests iterate over it)
KERNELS = ("im2col", "col2im", "max_pool_fwd", "max_pool_bwd", "bn_stats", "softmax_loss_fwd",
           "softmax_loss_bwd", "fixed_point")

_CACHE: dict = {}


def on_gpu(*arrays) -> bool:
    """True when any of ``arrays`` is a CuPy array (the kernel path)."""
    return backend.get_array_module(*arrays) is not np


def kernel(name: str, kind: str, *args, key=None, **kwargs):
    """The compiled kernel ``name`` (``kind`` "elementwise" or "raw"), built from ``args`` on first use.

    ``key`` distinguishes variants of one name (e.g. the element type of a RawKernel)."""
    k = (name, key)
    kern = _CACHE.get(k)
    if kern is None:
        cp = backend.cupy_module()
        if kind == "elementwise":
            kern = cp.ElementwiseKernel(*args, name=name, **kwargs)
        elif kind == "raw":
            kern = cp.RawKernel(*args, **kwargs)
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown kernel kind {kind!r}")
        _CACHE[k] = kern
    return kern


def compiled() -> list:
    """The (name, variant) pairs compiled so far in this process."""
    return sorted(_CACHE, key=str)
