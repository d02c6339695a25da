"""Convolution and Deconvolution (BVLC semantics; caffe-jacinto adds nothing here, spec docs/jacinto-spec.md §f).

Options read from ``convolution_param``: num_output, bias_term, kernel_size / kernel_h+kernel_w, stride /
stride_h+stride_w, pad / pad_h+pad_w, dilation (each repeated field holds one value for all spatial axes or
one per axis), group, weight_filler, bias_filler, axis (channel axis; only 1 is supported), engine and
force_nd_im2col (implementation choices in Caffe; the result is the same, so they are accepted).
The arithmetic lives in :mod:`caffelite.ops.conv` (batched group GEMMs, no im2col for 1x1).
"""

from __future__ import annotations

from ..layer import Layer, register
from ..ops import ConvGeometry
from ..ops import conv as K
from ..ops import conv_dispatch
from .common import make_param_blob, param_propagate


# -- helpers shared by the parameterised layers of this family ------------------------------------------
def _pair(layer, cp, name, default, allow_zero):
    """One value per spatial axis from ``name`` (repeated) or ``name_h``/``name_w`` (Caffe's rules)."""
    rep = list(getattr(cp, name))
    hw_names = (name + "_h", name + "_w")
    if name == "kernel_size":
        hw_names = ("kernel_h", "kernel_w")
    has_h, has_w = (cp.HasField(hw_names[0]), cp.HasField(hw_names[1])) if name != "dilation" else (False, False)
    if has_h or has_w:
        if name == "kernel_size" and not (has_h and has_w):
            raise layer.error(f"{hw_names[0]} and {hw_names[1]} must be given together")
        if rep:
            raise layer.error(f"either {name} or {hw_names[0]}/{hw_names[1]} should be specified; not both")
        vals = (getattr(cp, hw_names[0]), getattr(cp, hw_names[1]))
    elif not rep:
        if default is None:
            raise layer.error(f"{name} (or {hw_names[0]}/{hw_names[1]}) is required")
        vals = (default, default)
    elif len(rep) == 1:
        vals = (rep[0], rep[0])
    elif len(rep) == 2:
        vals = tuple(rep)
    else:
        raise layer.error(f"{name} must be specified once, or once per spatial dimension "
                          f"({name} specified {len(rep)} times; 2 spatial dims)")
    if not allow_zero and min(vals) <= 0:
        raise layer.error(f"{name} dimensions must be nonzero, got {vals}")
    return tuple(int(v) for v in vals)


def conv_geometry(layer, cp) -> ConvGeometry:
    """The 2-D :class:`ConvGeometry` of a ConvolutionParameter (validated as Caffe does)."""
    kh, kw = _pair(layer, cp, "kernel_size", None, False)
    sh, sw = _pair(layer, cp, "stride", 1, False)
    ph, pw = _pair(layer, cp, "pad", 0, True)
    dh, dw = _pair(layer, cp, "dilation", 1, False)
    return ConvGeometry(kh, kw, sh, sw, ph, pw, dh, dw)


def check_spatial_input(layer, cp, bottom_shape):
    """Only NCHW input with channel axis 1 is implemented (the 2-D case every fixture and model uses)."""
    axis = cp.axis if cp.axis >= 0 else cp.axis + len(bottom_shape)
    if axis != 1:
        raise layer.unsupported("convolution_param.axis", cp.axis)
    if len(bottom_shape) != 4:
        raise layer.unsupported(f"{len(bottom_shape) - 2}-D convolution (input of shape {tuple(bottom_shape)}); "
                                "only 2 spatial axes")


#: geometry fields shared by Convolution, Deconvolution and Im2col, plus the choices of implementation that
#: cannot change the result (engine, N-d im2col, cuDNN algorithm search/override), accepted as other layers
#: accept ``engine``
GEOMETRY_FIELDS = ("kernel_size", "kernel_h", "kernel_w", "stride", "stride_h", "stride_w", "pad", "pad_h",
                   "pad_w", "dilation", "axis", "engine", "force_nd_im2col", "cudnn_convolution_algo_seeker",
                   "conv_algos_override")


class _ConvBase(Layer):
    """Shared setup/reshape of Convolution and Deconvolution."""

    param_fields = {"convolution_param": GEOMETRY_FIELDS + ("num_output", "bias_term", "group", "weight_filler",
                                                            "bias_filler")}

    exact_num_bottom = None
    min_num_bottom = 1
    min_num_top = 1
    allows_in_place = False
    transposed = False

    def setup(self, bottom, top):
        cp = self.param.convolution_param
        if len(bottom) != len(top):
            raise self.error(f"needs as many tops as bottoms, got {len(bottom)} bottoms and {len(top)} tops")
        check_spatial_input(self, cp, bottom[0].shape)
        self.geom = conv_geometry(self, cp)
        if not cp.HasField("num_output") or cp.num_output <= 0:
            raise self.error("num_output must be specified and positive")
        self.num_output = int(cp.num_output)
        self.group = int(cp.group)
        self.channels = int(bottom[0].shape[1])
        if self.group <= 0 or self.channels % self.group:
            raise self.error(f"number of input channels ({self.channels}) must be a multiple of group ({self.group})")
        if self.num_output % self.group:
            raise self.error(f"num_output ({self.num_output}) must be a multiple of group ({self.group})")
        self.bias_term = bool(cp.bias_term)
        if self.transposed:
            wshape = (self.channels, self.num_output // self.group, self.geom.kh, self.geom.kw)
        else:
            wshape = (self.num_output, self.channels // self.group, self.geom.kh, self.geom.kw)
        self.blobs = [make_param_blob(wshape, cp.weight_filler, bottom[0])]
        if self.bias_term:
            self.blobs.append(make_param_blob((self.num_output,), cp.bias_filler, bottom[0]))

    def reshape(self, bottom, top):
        for b in bottom:
            check_spatial_input(self, self.param.convolution_param, b.shape)
            if b.shape != bottom[0].shape:
                raise self.error(f"all bottoms must have the same shape, got {bottom[0].shape} and {b.shape}")
        n, c, h, w = bottom[0].shape
        if c != self.channels:
            raise self.error(f"input has {c} channels but the layer was set up for {self.channels}")
        ho, wo = (self.geom.deconv_out_shape if self.transposed else self.geom.out_shape)(h, w)
        if ho <= 0 or wo <= 0:
            raise self.error(f"output size {ho}x{wo} is not positive for input {h}x{w}")
        for t in top:
            t.reshape(n, self.num_output, ho, wo)

    def _bias(self):
        return self.blobs[1].data if self.bias_term else None

    def forward(self, bottom, top):
        w, b = self.blobs[0].data, self._bias()
        for bt, tp in zip(bottom, top, strict=True):
            if self.transposed:
                K.deconv_forward(bt.data, w, b, self.geom, self.group, tp.data)
            else:  # dense / sparse / int8, as the net's engine plan says (caffelite.ops.engine)
                conv_dispatch.conv_forward(self, bt.data, w, b, tp.data)

    def backward(self, top, propagate_down, bottom):
        bwd = K.deconv_backward if self.transposed else K.conv_backward
        want_w = param_propagate(self, 0)
        want_b = self.bias_term and param_propagate(self, 1)
        w = self.blobs[0].data
        dw = self.blobs[0].diff if want_w else None
        db = self.blobs[1].diff if want_b else None
        for tp, pd, bt in zip(top, propagate_down, bottom, strict=True):
            if not (pd or want_w or want_b):
                continue
            bwd(bt.data, w, tp.diff, self.geom, self.group, dx=bt.diff if pd else None, dw=dw, db=db)


@register("Convolution")
class ConvolutionLayer(_ConvBase):
    """Caffe's Convolution: weights (Cout, Cin/group, kh, kw), optional bias (Cout)."""

    def forward_fused(self, bottom, top, scale, shift, relu_slope) -> bool:
        """Forward with the in-place followers of an inference chain folded in (:mod:`caffelite.fusion`):
        ``* scale + shift`` per channel (or None) and a ReLU with ``relu_slope`` (or None). Returns False,
        computing nothing, when the compiled kernel cannot take it (the net then runs the layers one by one)."""
        if len(bottom) != 1:
            return False
        return conv_dispatch.conv_forward(self, bottom[0].data, self.blobs[0].data, self._bias(), top[0].data,
                                          scale, shift, relu_slope, fused=True)


@register("Deconvolution")
class DeconvolutionLayer(_ConvBase):
    """Caffe's Deconvolution (transposed convolution): weights (Cin, Cout/group, kh, kw), optional bias."""

    transposed = True
