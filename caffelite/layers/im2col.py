"""Im2col: the column matrix of a convolution as a layer (BVLC semantics).

Reads ``convolution_param``'s kernel/stride/pad/dilation (group, num_output, bias_term and fillers, which
Caffe ignores, are refused rather than ignored).
Top: (N, C*kh*kw, Ho, Wo), channel order (c, kh, kw). Backward is col2im (a sum of overlaps).
"""

from __future__ import annotations

from ..layer import Layer, register
from ..ops import col2im, im2col
from .conv import GEOMETRY_FIELDS, check_spatial_input, conv_geometry


@register("Im2col")
class Im2colLayer(Layer):
    """Caffe's Im2col layer."""

    exact_num_bottom = 1
    exact_num_top = 1
    allows_in_place = False
    #: Caffe's Im2col reads only the geometry: num_output, group, bias_term or fillers set on it would be
    #: silently ignored, so they are refused
    param_fields = {"convolution_param": GEOMETRY_FIELDS}

    def setup(self, bottom, top):
        cp = self.param.convolution_param
        check_spatial_input(self, cp, bottom[0].shape)
        self.geom = conv_geometry(self, cp)

    def reshape(self, bottom, top):
        check_spatial_input(self, self.param.convolution_param, bottom[0].shape)
        n, c, h, w = bottom[0].shape
        ho, wo = self.geom.out_shape(h, w)
        if ho <= 0 or wo <= 0:
            raise self.error(f"output size {ho}x{wo} is not positive for input {h}x{w}")
        top[0].reshape(n, c * self.geom.kh * self.geom.kw, ho, wo)

    def forward(self, bottom, top):
        n, c, h, w = bottom[0].shape
        g = self.geom
        im2col(bottom[0].data, g, out=top[0].data.reshape(n, c, g.kh, g.kw, *top[0].shape[2:]))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n, c, h, w = bottom[0].shape
        g = self.geom
        col2im(top[0].diff.reshape(n, c, g.kh, g.kw, *top[0].shape[2:]), g, h, w, out=bottom[0].diff)
