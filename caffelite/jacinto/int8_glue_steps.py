"""The compiled non-convolution steps of :class:`~caffelite.jacinto.int8_engine.Int8Net`
(:mod:`caffelite.ops.int8_glue`): MAX pooling with its table, ArgMax on the integers, a depthwise Deconvolution
(optionally fused with the ArgMax that alone reads it) and the float input Bias with its quantizer. Each gives
exactly the integers of the engine's NumPy step; each ``_glue_*`` returns False where its kernel does not apply,
and the engine then runs the NumPy step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..ops import int8_glue as glue
from .int8_plan import plain_argmax


class GlueSteps:
    """Mixin of :class:`~caffelite.jacinto.int8_engine.Int8Net`: the compiled steps (uses ``net``, ``ties`` and
    ``_out_grid``)."""
    def _glue_pool(self, st, ints):
        """MAX pooling and its table in one compiled pass; False (nothing done) where the kernel does not apply."""
        i = st[1]
        layer, b, t = self.net.layers[i], self.net.bottom_vecs(i), self.net.top_vecs(i)
        q = ints[self.net.bottom_ids(i)[0]][0]
        if q.ndim != 4 or b[0].shape != q.shape:
            return False
        layer.reshape(b, t)
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.pad
        ho, wo = t[0].shape[2:]
        h, w = q.shape[2:]
        # every window holds an input pixel (Caffe's output size guarantees it; checked, not assumed)
        if ph >= kh or pw >= kw or (ho - 1) * sh - ph >= h or (wo - 1) * sw - pw >= w:
            return False
        table, lo = st[3], st[4]
        ident = table.size == 0 or np.array_equal(table, np.arange(lo, lo + table.size))
        if ident and (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and t[0].shape == q.shape:
            out = q  # a 1x1 pooling onto the same grid passes the integers through (shared, as a Split's)
        else:
            out = glue.pool_max(q, t[0].shape, (kh, kw), (sh, sw), (ph, pw), None if ident else table, lo)
        ints[self.net.top_ids(i)[0]] = (out, self._out_grid(i, 0))
        return True

    def _glue_argmax(self, i, q):
        """ArgMax (top-1 over axis 1) of the integers into the layer's top, compiled; False where it does not
        apply."""
        layer, b, t = self.net.layers[i], self.net.bottom_vecs(i), self.net.top_vecs(i)
        if not plain_argmax(layer) or b[0].shape != q.shape or q.ndim < 2:
            return False
        layer.reshape(b, t)
        d = t[0].data
        if d.dtype != np.float32 or not d.flags.c_contiguous or d.shape != (q.shape[0], 1) + q.shape[2:]:
            return False
        glue.argmax(q, d)
        return True

    def _glue_deconv(self, st, ints):
        """A planned ``deconv`` step (:func:`caffelite.jacinto.int8_plan.deconv_step`); a fused ArgMax writes
        its labels into its top (the deconvolution's integers are not kept)."""
        i, last, spec = st[1], st[2], st[3]
        net = self.net
        layer, b, t = net.layers[i], net.bottom_vecs(i), net.top_vecs(i)
        q = ints[net.bottom_ids(i)[0]][0]
        layer.reshape(b, t)
        fused = last > i
        out, amax = glue.deconv(q, spec, t[0].shape, want_ints=not fused, want_argmax=fused)
        if fused:
            am, ab, at = net.layers[last], net.bottom_vecs(last), net.top_vecs(last)
            am.reshape(ab, at)
            at[0].data[...] = amax.reshape(at[0].shape)
            for name in net.top_ids(last):
                ints.pop(name, None)
            # no step reads these integers (the plan checked): they are computed only if asked for (Int8Net.ints)
            shape = t[0].shape
            ints[net.top_ids(i)[0]] = (Deferred(lambda: glue.deconv(q, spec, shape)[0]), self._out_grid(i, 0))
        else:
            ints[net.top_ids(i)[0]] = (out, self._out_grid(i, 0))

    def _glue_bias(self, i, ints):
        """The float32 Bias on the float input and its quantizer in one compiled pass (the same float32 add and
        quantizer as the float step); False where it does not apply."""
        net = self.net
        layer, b, t = net.layers[i], net.bottom_vecs(i), net.top_vecs(i)
        x = b[0].data
        if len(b) != 1 or x.dtype != np.float32 or layer.blobs[0].data.dtype != np.float32:
            return False
        layer.reshape(b, t)
        g = self._out_grid(i, 0)
        out = glue.bias_quantize(x, layer.blobs[0].data, layer._dims, g.st, g.off, g.lo, g.hi, self.ties == "away")
        ints[net.top_ids(i)[0]] = (out, g)
        return True


class Deferred:
    """Integers computed when first read (those of a Deconvolution fused with its ArgMax)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn


class LazyInts(Mapping):
    """:attr:`Int8Net.ints`: blob name -> integers; deferred ones are computed on first access."""

    def __init__(self, d):
        self._d = d

    def __getitem__(self, k):
        v = self._d[k]
        if isinstance(v, Deferred):
            v = self._d[k] = v.fn()
        return v

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)


def unfused_steps(st):
    """A planned step as the steps it fuses: a Deconvolution with its ArgMax becomes the two."""
    if st[0] == "deconv" and st[2] > st[1]:
        return [("deconv", st[1], st[1], st[3]), ("argmax", st[2], st[2])]
    return [st]
