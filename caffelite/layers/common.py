"""Helpers every layer family shares: parameter blobs, ``param_propagate_down``, input copies and axes."""

from __future__ import annotations

from ..blob import Blob
from ..proto import caffe_pb2


def make_param_blob(shape, filler_param, like, default_value=0.0):
    """A new parameter Blob of ``shape`` (dtype and array module of Blob ``like``), filled.

    ``filler_param`` is a FillerParameter, or None for the layer's default: a constant ``default_value``
    (Caffe's default FillerParameter is ``constant 0``). Random fillers draw from backend.rng()
    (:mod:`caffelite.fillers`).
    """
    from ..fillers import fill

    blob = Blob(shape, like.dtype, like.xp)
    if filler_param is None:
        filler_param = caffe_pb2.FillerParameter(type="constant", value=float(default_value))
    fill(blob, filler_param)
    return blob


def filled_param_blob(shape, filler_param, default_value, like):
    """:func:`make_param_blob` with the default value first (the argument order the neuron layers use)."""
    return make_param_blob(shape, filler_param, like, default_value)


def param_propagate(layer, k) -> bool:
    """Whether the Net wants param ``k``'s diff (``param_propagate_down``; unset means yes)."""
    ppd = getattr(layer, "param_propagate_down", None)
    return not ppd or k >= len(ppd) or bool(ppd[k])


def copy_into(buf, x):
    """A copy of array ``x``, reusing ``buf`` when it fits (in-place layers keep their input every forward)."""
    if buf is None or buf.shape != x.shape or buf.dtype != x.dtype or type(buf) is not type(x):
        return x.copy()
    buf[...] = x
    return buf


def canonical_axis(layer, axis, num_axes):
    """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -num_axes <= axis < max(num_axes, 1) and not (num_axes == 0 and axis in (0, -1)):
        raise layer.error(f"axis {axis} out of range for a {num_axes}-D blob")
    return axis + num_axes if axis < 0 else axis
