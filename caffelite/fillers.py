"""Fillers: how learnable blobs are initialised, keyed by Caffe's ``FillerParameter.type`` strings.

Usage from a layer's ``setup``::

    from caffelite.fillers import fill
    fill(self.blobs[0], self.param.convolution_param.weight_filler)

Values are drawn on the host from :func:`caffelite.backend.rng` (seeded by ``set_random_seed`` /
``random_seed``) and then moved to the blob's array module, so a seed gives the same weights on NumPy and
CuPy. Formulas follow BVLC Caffe's ``filler.hpp`` (fan-in = count / shape[0], fan-out = count / shape[1]).
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .errors import NetError
from .registry import Registry

_FILLERS = Registry("filler")


def register_filler(*names):
    """Class decorator: register a :class:`Filler` subclass under Caffe filler type strings."""

    return _FILLERS.decorator(*names)


def filler_types() -> list[str]:
    """All registered filler type strings, sorted."""
    return _FILLERS.names()


class Filler:
    """Base class: ``draw(shape)`` returns a float64 host array of ``shape`` (the blob's dtype is applied later)."""

    def __init__(self, param):
        self.param = param

    def draw(self, shape: tuple) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, shape, dtype=np.float32, xp=None):
        """An array of ``shape`` and ``dtype`` in module ``xp`` (default: the current mode's)."""
        xp = xp or backend.current_xp()
        host = np.asarray(self.draw(tuple(int(s) for s in shape)), dtype=dtype)
        return xp.asarray(host)


def _fans(shape):
    """Caffe's fan-in (count / shape[0]) and fan-out (count / shape[1], or count for 1-D blobs)."""
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if not shape or shape[0] == 0:
        raise NetError(f"filler: cannot compute fan-in of a blob of shape {tuple(shape)}")
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _fan(param, shape):
    """The ``n`` of Xavier/MSRA chosen by ``variance_norm`` (FAN_IN 0, FAN_OUT 1, AVERAGE 2)."""
    fan_in, fan_out = _fans(shape)
    norm = param.variance_norm
    if norm == 1:
        return fan_out
    if norm == 2:
        return (fan_in + fan_out) / 2.0
    return fan_in


@register_filler("constant")
class ConstantFiller(Filler):
    """Every value is ``value`` (default 0)."""

    def draw(self, shape):
        return np.full(shape, self.param.value, dtype=np.float64)


@register_filler("uniform")
class UniformFiller(Filler):
    """U(``min``, ``max``) (defaults 0, 1)."""

    def draw(self, shape):
        lo, hi = float(self.param.min), float(self.param.max)
        if hi < lo:
            raise NetError(f"uniform filler: max ({hi}) < min ({lo})")
        return backend.rng().uniform(lo, hi, size=shape)


@register_filler("gaussian")
class GaussianFiller(Filler):
    """N(``mean``, ``std``); with ``sparse`` >= 0 each value is kept with probability sparse / shape[0]."""

    def draw(self, shape):
        g = backend.rng()
        out = g.normal(float(self.param.mean), float(self.param.std), size=shape)
        sparse = int(self.param.sparse)
        if sparse >= 0:
            # Caffe: sparsity over the outputs (shape[0]); p = sparse / num_outputs, a Bernoulli mask.
            if len(shape) < 1 or shape[0] == 0:
                raise NetError("gaussian filler: sparse needs a blob with at least one axis")
            p = min(1.0, sparse / float(shape[0]))
            out *= g.random(size=shape) < p
        return out


@register_filler("positive_unitball")
class PositiveUnitballFiller(Filler):
    """U(0, 1) values, each row (everything after axis 0) normalised to sum to 1."""

    def draw(self, shape):
        out = backend.rng().uniform(0.0, 1.0, size=shape)
        if out.size == 0:
            return out
        rows = out.reshape(shape[0] if shape else 1, -1)
        rows /= rows.sum(axis=1, keepdims=True)
        return out


@register_filler("xavier")
class XavierFiller(Filler):
    """U(-a, a) with a = sqrt(3 / n), n from ``variance_norm`` (Glorot & Bengio)."""

    def draw(self, shape):
        a = math.sqrt(3.0 / _fan(self.param, shape))
        return backend.rng().uniform(-a, a, size=shape)


@register_filler("msra")
class MSRAFiller(Filler):
    """N(0, sqrt(2 / n)), n from ``variance_norm`` (He et al.)."""

    def draw(self, shape):
        std = math.sqrt(2.0 / _fan(self.param, shape))
        return backend.rng().normal(0.0, std, size=shape)


@register_filler("bilinear")
class BilinearFiller(Filler):
    """Bilinear upsampling kernels for a Deconvolution: the same k×k kernel in every (out, in) slice.

    f = ceil(k / 2), c = (2f - 1 - f % 2) / (2f), w[y, x] = (1 - |x/f - c|)(1 - |y/f - c|)
    (spec docs/jacinto-spec.md §f, Deconvolution + bilinear filler).
    """

    def draw(self, shape):
        if len(shape) != 4 or shape[2] != shape[3]:
            raise NetError(f"bilinear filler needs a 4-D blob with square kernels, got shape {tuple(shape)}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        taps = 1.0 - np.abs(np.arange(k, dtype=np.float64) / f - c)
        kernel = taps[:, None] * taps[None, :]
        return np.broadcast_to(kernel, shape).copy()


def get_filler(param) -> Filler:
    """The filler for a ``FillerParameter`` (an unknown type is a NetError listing the known ones)."""
    name = param.type
    try:
        cls = _FILLERS[name]
    except KeyError:
        raise NetError(f"unknown filler type '{name}' (known: {', '.join(filler_types())})") from None
    return cls(param)


def fill(blob, param) -> None:
    """Fill ``blob.data`` (a :class:`~caffelite.blob.Blob`) in place as ``param`` says."""
    blob.data[...] = get_filler(param)(blob.shape, blob.dtype, blob.xp)
