"""Named CuPy kernels for the measured GPU hotspots, run by the :mod:`caffelite.ops` dispatchers on CuPy arrays.

Layers write one ``xp`` body (or call an op); a GPU kernel replaces that body only where it is slow on CuPy
(many small launches, scatter-adds, float64 temporaries). The modules here hold GPU-only bodies: the choice
between the compiled CPU kernels, these kernels and the ``xp`` reference is made in :mod:`caffelite.ops`
(``tests/test_gpu_parity.py`` holds each kernel to the reference: on a GPU with ``pytest -m gpu``, and
everywhere by compiling the CUDA sources as C++).

Kernels are CUDA source strings compiled lazily — on first use, once per (name, dtype) — through
:func:`kernel`, which reaches CuPy only through :mod:`caffelite.backend`.

=====================  =============================================================  ==================
name                   what                                                           module (dispatcher)
=====================  =============================================================  ==================
``im2col``             columns (N, C, kh, kw, Ho, Wo) of a padded/strided/dilated x    :mod:`.im2col`
                                                                                      (ops.im2col)
``col2im``             the adjoint, gathered per pixel (no atomics)                    :mod:`.im2col`
                                                                                      (ops.im2col)
``max_pool_fwd``       MAX pooling with the window-offset argmax (first max wins)      :mod:`.pool` (ops.pool)
``max_pool_bwd``       its gradient, gathered per input pixel                          :mod:`.pool` (ops.pool)
``bn_stats``           per-channel mean and biased variance, two passes, one block/C   :mod:`.batchnorm`
                                                                                      (ops.batch_norm)
=====================  =============================================================  ==================

Extensions may define further kernels through :func:`kernel` (their own names; :func:`compiled` lists all).
"""

from __future__ import annotations

import numpy as np

from .. import backend

__all__ = ["kernel", "on_gpu", "KERNELS", "compiled"]

#: every kernel name this package defines (the parity tests iterate over it)
KERNELS = ("im2col", "col2im", "max_pool_fwd", "max_pool_bwd", "bn_stats")

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
