"""Pooling: MAX and AVE (global or windowed), Caffe's output-size and window rules (docs/jacinto-spec.md §f).

Output size: ceil((H + 2p - k)/s) + 1, minus one when the last window would start at/after H + p (only
with p > 0). BVLC's ``round_mode`` (FLOOR/CEIL) is a BVLC-only field (caffe-jacinto 0.17 has
``torch_pooling`` at a different number, unused by jacinto's code); we read it from the BVLC original of a
converted layer. A second top is MAX's argmax mask (flat h*W + w per channel, as float). STOCHASTIC pooling
(a Caffe GPU-only method) raises an unsupported-option error.
"""

from __future__ import annotations


from ..layer import TRAIN, Layer, register
from ..ops import pool as P
from ..proto import caffe_pb2

MAX, AVE, STOCHASTIC = (caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE,
                        caffe_pb2.PoolingParameter.STOCHASTIC)


def _round_mode_is_ceil(layer) -> bool:
    """BVLC's PoolingParameter.round_mode (CEIL = 0 default, FLOOR = 1), if the layer came from a BVLC file."""
    if layer.extra is None:
        return True
    bp = layer.extra.pooling_param
    return not (bp.HasField("round_mode") and bp.round_mode == type(bp).FLOOR)


@register("Pooling")
class PoolingLayer(Layer):
    """Caffe's Pooling layer (MAX with optional mask top, AVE; global_pooling; pad; CEIL/FLOOR)."""

    exact_num_bottom = 1
    min_num_top = 1
    allows_in_place = False
    #: ``torch_pooling`` (0.17 proto field, unused by caffe-jacinto's code, docs/jacinto-spec.md §f) is not declared:
    #: ``torch_pooling: true`` asks for a behaviour neither caffe-jacinto nor caffelite implements, so it is refused
    param_fields = {"pooling_param": ("pool", "kernel_size", "kernel_h", "kernel_w", "stride", "stride_h",
                                      "stride_w", "pad", "pad_h", "pad_w", "global_pooling", "engine")}

    @property
    def max_num_top(self):
        return 2 if self.param.pooling_param.pool == MAX else 1

    def setup(self, bottom, top):
        pp = self.param.pooling_param
        if pp.pool == STOCHASTIC:
            raise self.unsupported("pooling_param.pool", "STOCHASTIC")
        if pp.pool not in (MAX, AVE):
            raise self.unsupported("pooling_param.pool", pp.pool)
        self.method = pp.pool
        self.global_pooling = bool(pp.global_pooling)
        has_hw = pp.HasField("kernel_h") or pp.HasField("kernel_w")
        if self.global_pooling:
            if pp.HasField("kernel_size") or has_hw:
                raise self.error("with global_pooling: true, filter size cannot be specified")
        else:
            if pp.HasField("kernel_size") == has_hw:
                raise self.error("filter size is kernel_size OR kernel_h and kernel_w; not both")
            if has_hw and not (pp.HasField("kernel_h") and pp.HasField("kernel_w")):
                raise self.error("for non-square filters both kernel_h and kernel_w are required")
        if (pp.HasField("pad_h") or pp.HasField("pad_w")) and pp.HasField("pad"):
            raise self.error("pad is pad OR pad_h and pad_w are required")
        if (pp.HasField("stride_h") or pp.HasField("stride_w")) and pp.HasField("stride"):
            raise self.error("stride is stride OR stride_h and stride_w are required")
        if pp.HasField("kernel_size"):
            self.kernel = (int(pp.kernel_size),) * 2
        elif has_hw:
            self.kernel = (int(pp.kernel_h), int(pp.kernel_w))
        self.pad = (int(pp.pad_h), int(pp.pad_w)) if (pp.HasField("pad_h") or pp.HasField("pad_w")) \
            else (int(pp.pad),) * 2
        self.stride = (int(pp.stride_h), int(pp.stride_w)) if (pp.HasField("stride_h") or pp.HasField("stride_w")) \
            else (int(pp.stride),) * 2
        if min(self.stride) <= 0:
            raise self.error(f"stride must be positive, got {self.stride}")
        if self.global_pooling:
            if self.pad != (0, 0) or self.stride != (1, 1):
                raise self.error("with global pooling, pad must be 0 and stride 1")
        else:
            if min(self.kernel) <= 0:
                raise self.error(f"filter dimensions must be positive, got {self.kernel}")
            if self.pad != (0, 0):
                if self.method not in (MAX, AVE):
                    raise self.error("padding implemented only for AVE and MAX pooling")
                if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                    raise self.error(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        self.ceil_mode = _round_mode_is_ceil(self)
        self.use_mask_top = len(top) > 1

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"input must have 4 axes, corresponding to (num, channels, height, width); got {shape}")
        n, c, h, w = shape
        if self.global_pooling:
            self.kernel = (h, w)
        k, s, p = self.kernel, self.stride, self.pad
        self.out_hw = (P.pooled_size(h, k[0], s[0], p[0], self.ceil_mode),
                       P.pooled_size(w, k[1], s[1], p[1], self.ceil_mode))
        if min(self.out_hw) <= 0:
            raise self.error(f"pooled output {self.out_hw} is empty for input {h}x{w}")
        for t in top:
            t.reshape(n, c, *self.out_hw)
        if self.method == MAX:
            xp = bottom[0].xp
            if getattr(self, "_argmax", None) is None or self._argmax.shape != top[0].shape \
                    or type(self._argmax) is not xp.ndarray or self._argmax.dtype != P.argmax_dtype(self.kernel):
                self._argmax = xp.zeros(top[0].shape, dtype=P.argmax_dtype(self.kernel))

    def forward(self, bottom, top):
        x = bottom[0].data
        ho, wo = self.out_hw
        if self.method == MAX:
            # TEST-phase nets rarely run backward: skip the argmax bookkeeping there and recompute it from
            # the bottom if a backward does come (gradient checks, force_backward visualisations)
            self._argmax_valid = self.phase == TRAIN or self.use_mask_top
            P.max_pool_forward(x, self.kernel, self.stride, self.pad, ho, wo, top[0].data,
                               self._argmax if self._argmax_valid else None)
            if self.use_mask_top:
                h, w = x.shape[2:]
                top[1].data[...] = P.offsets_to_mask(self._argmax, self.kernel, self.stride, self.pad, h, w)
        else:
            P.ave_pool_forward(x, self.kernel, self.stride, self.pad, ho, wo, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        h, w = bottom[0].shape[2:]
        # the mask top's diff is ignored, as in Caffe
        if self.method == MAX:
            if not getattr(self, "_argmax_valid", False):
                scratch = bottom[0].xp.empty(top[0].shape, dtype=top[0].dtype)
                P.max_pool_forward(bottom[0].data, self.kernel, self.stride, self.pad, *self.out_hw, scratch,
                                   self._argmax)
                self._argmax_valid = True
            P.max_pool_backward(top[0].diff, self._argmax, self.kernel, self.stride, self.pad, h, w, bottom[0].diff)
        else:
            P.ave_pool_backward(top[0].diff, self.kernel, self.stride, self.pad, h, w, bottom[0].diff)
