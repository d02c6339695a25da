"""Input (the net's fed blobs) and Split (fan-out of one blob, inserted by the Net)."""

from __future__ import annotations

from ..layer import Layer, register


@register("Input")
class InputLayer(Layer):
    """Tops shaped from ``input_param.shape`` (one shape for all tops, or one per top).

    Reshape is a no-op, as in Caffe: a caller may reshape ``net.blobs['data']`` and then ``net.reshape()``
    re-shapes every layer downstream.
    """

    param_fields = {"input_param": ("shape",)}

    exact_num_bottom = 0
    min_num_top = 1

    def setup(self, bottom, top):
        shapes = self.param.input_param.shape
        n = len(shapes)
        if n not in (0, 1, len(top)):
            raise self.error(f"input_param.shape must be specified once, or once per top blob "
                             f"({len(top)}), got {n}")
        for i, t in enumerate(top):
            if n:
                t.reshape(tuple(shapes[0 if n == 1 else i].dim))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass


@register("Split")
class SplitLayer(Layer):
    """Every top shares the bottom's data; backward sums the top diffs into the bottom diff."""

    param_fields = {}

    exact_num_bottom = 1
    min_num_top = 1
    allows_in_place = False

    def reshape(self, bottom, top):
        b = bottom[0]
        for t in top:
            if t is b:
                raise self.error("does not allow in-place computation")
            t.share_data(b)  # re-shared every reshape: the bottom may have been reallocated

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        d = bottom[0].diff
        if len(top) == 1:
            d[...] = top[0].diff
            return
        xp = bottom[0].xp
        xp.add(top[0].diff, top[1].diff, out=d)
        for t in top[2:]:
            d += t.diff
