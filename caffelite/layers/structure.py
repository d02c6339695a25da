"""Data-movement layers: Concat, Slice, Crop, Flatten, Reshape, Tile, Silence, Filter.

None of them computes anything: they copy (or, for Flatten and Reshape, view) data forward and route
diffs back. Bottom diffs are assigned, as in Caffe.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..layer import Layer, register
from .common import canonical_axis


def _prod(dims) -> int:
    return int(np.prod(dims, dtype=np.int64)) if len(dims) else 1


def _legacy_axis(layer, p, legacy):
    """``p.axis``, or the legacy field ``legacy`` (concat_dim / slice_dim) when set; not both."""
    if p.HasField("axis") and p.HasField(legacy):
        raise layer.error(f"Either axis or {legacy} should be specified; not both.")
    return int(getattr(p, legacy)) if p.HasField(legacy) else int(p.axis)


def _concat_into(arrays, axis, out):
    """Concatenate ``arrays`` along ``axis`` into ``out`` (Concat forward, Slice backward)."""
    if len(arrays) == 1:
        out[...] = arrays[0]
        return
    backend.get_array_module(out).concatenate(arrays, axis=axis, out=out)


def _pieces(x, axis, sizes):
    """The consecutive views of ``x`` along ``axis`` of the given ``sizes`` (Slice forward, Concat backward)."""
    start = 0
    for n in sizes:
        yield x[(slice(None),) * axis + (slice(start, start + n),)]
        start += n


@register("Concat")
class ConcatLayer(Layer):
    """Concatenate the bottoms along ``concat_param.axis`` (legacy ``concat_dim``)."""

    param_fields = {"concat_param": ("axis", "concat_dim")}

    min_num_bottom = 1
    exact_num_top = 1
    allows_in_place = False

    def setup(self, bottom, top):
        self._axis_param = _legacy_axis(self, self.param.concat_param, "concat_dim")

    def reshape(self, bottom, top):
        nd = len(bottom[0].shape)
        self.axis = canonical_axis(self, self._axis_param, nd)
        shape = list(bottom[0].shape)
        for i, b in enumerate(bottom[1:], 1):
            if len(b.shape) != nd:
                raise self.error("All inputs must have the same #axes.")
            for j in range(nd):
                if j != self.axis and b.shape[j] != shape[j]:
                    raise self.error(f"All inputs must have the same shape, except at concat_axis "
                                     f"(bottom[{i}] {b.shape} vs bottom[0] {bottom[0].shape})")
            shape[self.axis] += b.shape[self.axis]
        top[0].reshape(shape)

    def forward(self, bottom, top):
        _concat_into([b.data for b in bottom], self.axis, top[0].data)

    def backward(self, top, propagate_down, bottom):
        pieces = _pieces(top[0].diff, self.axis, [b.shape[self.axis] for b in bottom])
        for b, p, piece in zip(bottom, propagate_down, pieces, strict=True):
            if p:
                b.diff[...] = piece


@register("Slice")
class SliceLayer(Layer):
    """Split the bottom along ``slice_param.axis`` (legacy ``slice_dim``) at ``slice_point``s or equally."""

    param_fields = {"slice_param": ("axis", "slice_point", "slice_dim")}

    exact_num_bottom = 1
    min_num_top = 1
    allows_in_place = False

    def setup(self, bottom, top):
        p = self.param.slice_param
        self._axis_param = _legacy_axis(self, p, "slice_dim")
        self.points = [int(s) for s in p.slice_point]

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.axis = canonical_axis(self, self._axis_param, len(shape))
        total = shape[self.axis]
        if self.points:
            if len(self.points) != len(top) - 1:
                raise self.error(f"{len(self.points)} slice points need {len(self.points) + 1} tops, "
                                 f"got {len(top)}")
            bounds = [0] + self.points + [total]
            sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            if any(s <= 0 for s in sizes):
                raise self.error(f"slice points {self.points} must be increasing and inside (0, {total})")
        else:
            if total % len(top):
                raise self.error(f"Number of top blobs ({len(top)}) should evenly divide input slice axis "
                                 f"({total})")
            sizes = [total // len(top)] * len(top)
        self.sizes = sizes
        for t, n in zip(top, sizes, strict=True):
            s = list(shape)
            s[self.axis] = n
            t.reshape(s)

    def forward(self, bottom, top):
        for t, piece in zip(top, _pieces(bottom[0].data, self.axis, self.sizes), strict=True):
            t.data[...] = piece

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _concat_into([t.diff for t in top], self.axis, bottom[0].diff)


@register("Crop")
class CropLayer(Layer):
    """Crop bottom[0] to bottom[1]'s shape from ``axis`` on, at ``offset`` (none: 0; one: every axis)."""

    param_fields = {"crop_param": ("axis", "offset")}

    exact_num_bottom = 2
    exact_num_top = 1
    allows_in_place = False

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0  # the reference blob only gives a shape

    def reshape(self, bottom, top):
        p = self.param.crop_param
        nd = len(bottom[0].shape)
        if len(bottom[1].shape) != nd:
            raise self.error("bottom[0] and bottom[1] must have the same number of axes")
        axis = canonical_axis(self, int(p.axis), nd)
        offsets = [int(o) for o in p.offset]
        n_crop = nd - axis
        if len(offsets) == 0:
            offsets = [0] * n_crop
        elif len(offsets) == 1:
            offsets = offsets * n_crop
        elif len(offsets) != n_crop:
            raise self.error(f"crop_param.offset must have 1 or {n_crop} values (one per axis from axis "
                             f"{axis}), got {len(offsets)}")
        shape = list(bottom[0].shape)
        self.region = [slice(None)] * nd
        for i in range(axis, nd):
            o, n = offsets[i - axis], bottom[1].shape[i]
            if o + n > bottom[0].shape[i]:
                raise self.error(f"crop offset {o} + size {n} exceeds bottom dimension {bottom[0].shape[i]} "
                                 f"at axis {i}")
            shape[i] = n
            self.region[i] = slice(o, o + n)
        self.region = tuple(self.region)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.region]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            d = bottom[0].diff
            d[...] = 0
            d[self.region] = top[0].diff


class _ViewLayer(Layer):
    """A layer whose top is the bottom's data under another shape (Caffe shares data and diff)."""

    exact_num_bottom = 1
    exact_num_top = 1
    allows_in_place = False

    def top_shape(self, shape):
        raise NotImplementedError

    def reshape(self, bottom, top):
        self._shape = tuple(self.top_shape(bottom[0].shape))
        if _prod(self._shape) != bottom[0].count:
            raise self.error(f"output count {_prod(self._shape)} does not match input count {bottom[0].count} "
                             f"(input shape {bottom[0].shape}, output {self._shape})")
        top[0].set_data_array(bottom[0].data.reshape(self._shape))

    def forward(self, bottom, top):
        # Re-view each time: the bottom's array may have been replaced since reshape.
        top[0].set_data_array(bottom[0].data.reshape(self._shape))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register("Flatten")
class FlattenLayer(_ViewLayer):
    """Merge axes ``axis`` .. ``end_axis`` into one."""

    param_fields = {"flatten_param": ("axis", "end_axis")}

    def top_shape(self, shape):
        p = self.param.flatten_param
        nd = len(shape)
        a = canonical_axis(self, int(p.axis), nd)
        e = canonical_axis(self, int(p.end_axis), nd)
        if e < a:
            raise self.error(f"flatten end_axis {p.end_axis} is before axis {p.axis}")
        return list(shape[:a]) + [_prod(shape[a:e + 1])] + list(shape[e + 1:])


@register("Reshape")
class ReshapeLayer(_ViewLayer):
    """Replace axes [axis, axis + num_axes) by ``reshape_param.shape`` (0 copies a dim, one -1 is inferred)."""

    param_fields = {"reshape_param": ("shape", "axis", "num_axes")}

    def setup(self, bottom, top):
        p = self.param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        if sum(d == -1 for d in self.dims) > 1:
            raise self.error("new shape contains multiple -1 dims; at most a single (1) value of -1 may be "
                             "specified")
        if any(d < -1 for d in self.dims):
            raise self.error(f"reshape dims must be >= -1, got {self.dims}")

    def top_shape(self, shape):
        p = self.param.reshape_param
        nd = len(shape)
        axis, num_axes = int(p.axis), int(p.num_axes)
        start = axis if axis >= 0 else nd + axis + 1
        if not 0 <= start <= nd:
            raise self.error(f"reshape axis {axis} out of range for a {nd}-D bottom")
        if num_axes < -1:
            raise self.error("num_axes must be >= 0, or -1 for all")
        end = nd if num_axes == -1 else start + num_axes
        if end > nd:
            raise self.error(f"axis {start} + num_axes {num_axes} exceeds the {nd} bottom axes")
        new = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= nd:
                    raise self.error(f"new shape dim {i} copies bottom axis {start + i}, which does not exist")
                new.append(shape[start + i])
            else:
                new.append(d)
        out = list(shape[:start]) + new + list(shape[end:])
        if -1 in new:
            known = _prod([d for d in out if d != -1])
            total = _prod(shape)
            if known == 0 or total % known:
                raise self.error(f"cannot infer the -1 dim: bottom count {total} is not divisible by {known}")
            out[out.index(-1)] = total // known
        return out


@register("Tile")
class TileLayer(Layer):
    """Repeat the bottom ``tiles`` times along ``axis`` (whole blocks from that axis on)."""

    param_fields = {"tile_param": ("axis", "tiles")}

    exact_num_bottom = 1
    exact_num_top = 1
    allows_in_place = False

    def setup(self, bottom, top):
        p = self.param.tile_param
        self.tiles = int(p.tiles)
        if self.tiles <= 0:
            raise self.error("Number of tiles must be positive.")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.axis = canonical_axis(self, int(self.param.tile_param.axis), len(shape))
        self.outer = _prod(shape[:self.axis])
        self.inner = _prod(shape[self.axis:])
        s = list(shape)
        s[self.axis] *= self.tiles
        top[0].reshape(s)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, 1, self.inner)
        top[0].data.reshape(self.outer, self.tiles, self.inner)[...] = x

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            g = top[0].diff.reshape(self.outer, self.tiles, self.inner).sum(axis=1)
            bottom[0].diff[...] = g.reshape(bottom[0].shape)


@register("Silence")
class SilenceLayer(Layer):
    """Swallow its bottoms (no top); backward writes zero diffs."""

    param_fields = {}

    min_num_bottom = 1
    exact_num_top = 0
    allows_in_place = False

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, p in zip(bottom, propagate_down, strict=True):
            if p:
                b.diff[...] = 0


@register("Filter")
class FilterLayer(Layer):
    """Keep the items (axis 0) whose selector (the last bottom) is non-zero, for every other bottom.

    Caffe cannot backpropagate into the selector: force_backward skips it and asking for it is an error.
    """

    param_fields = {}

    min_num_bottom = 2
    min_num_top = 1
    allows_in_place = False

    def allow_force_backward(self, bottom_index):
        return bottom_index != len(self.param.bottom) - 1  # may be asked before setup

    def setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise self.error("Top number must be equal to bottom number minus one (the selector)")

    def reshape(self, bottom, top):
        sel = bottom[-1]
        n = sel.shape[0] if sel.shape else 1
        if any(d != 1 for d in sel.shape[1:]):
            raise self.error("Selector blob dimensions must be singletons (1), except the first")
        for i, b in enumerate(bottom[:-1]):
            if not b.shape or b.shape[0] != n:
                raise self.error(f"Each bottom should have the same 0th dimension as the selector blob "
                                 f"(bottom[{i}] {b.shape}, selector {sel.shape})")
        xp = backend.get_array_module(sel.data)
        self.indices = xp.nonzero(sel.data.reshape(-1) != 0)[0]
        k = int(self.indices.shape[0])
        for b, t in zip(bottom[:-1], top, strict=True):
            t.reshape((k,) + tuple(b.shape[1:]))

    def forward(self, bottom, top):
        for b, t in zip(bottom[:-1], top, strict=True):
            t.data[...] = b.data[self.indices]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise self.error("Layer cannot backpropagate to filter index inputs")
        for b, t, p in zip(bottom[:-1], top, propagate_down[:-1], strict=True):
            if p:
                d = b.diff
                d[...] = 0
                d[self.indices] = t.diff
