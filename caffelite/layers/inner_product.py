"""InnerProduct (fully connected), BVLC semantics.

The bottom is flattened from ``axis`` on: (M, K) with M the product of the leading axes. Weights are
(N, K), or (K, N) with ``transpose: true``; the optional bias is (N,). The top is bottom.shape[:axis] + (N,).
"""

from __future__ import annotations

from ..layer import Layer, register
from .common import make_param_blob, param_propagate


@register("InnerProduct")
class InnerProductLayer(Layer):
    """Caffe's InnerProduct: top = bottom_flat @ W.T + b (``W`` stored (N, K), or (K, N) when transposed)."""

    exact_num_bottom = 1
    exact_num_top = 1
    allows_in_place = False
    param_fields = {"inner_product_param": ("num_output", "bias_term", "weight_filler", "bias_filler", "axis",
                                            "transpose")}

    def _axis(self, shape):
        axis = self.param.inner_product_param.axis
        nd = len(shape)
        if not -nd <= axis < nd:
            raise self.error(f"axis {axis} out of range for a {nd}-D bottom {tuple(shape)}")
        return axis + nd if axis < 0 else axis

    def setup(self, bottom, top):
        ip = self.param.inner_product_param
        if not ip.HasField("num_output") or ip.num_output <= 0:
            raise self.error("num_output must be specified and positive")
        self.n_out = int(ip.num_output)
        self.bias_term = bool(ip.bias_term)
        self.transpose = bool(ip.transpose)
        axis = self._axis(bottom[0].shape)
        self.k = 1
        for d in bottom[0].shape[axis:]:
            self.k *= int(d)
        wshape = (self.k, self.n_out) if self.transpose else (self.n_out, self.k)
        self.blobs = [make_param_blob(wshape, ip.weight_filler, bottom[0])]
        if self.bias_term:
            self.blobs.append(make_param_blob((self.n_out,), ip.bias_filler, bottom[0]))

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = self._axis(shape)
        k = 1
        for d in shape[axis:]:
            k *= int(d)
        if k != self.k:
            raise self.error(f"input size incompatible with inner product parameters: bottom {tuple(shape)} "
                             f"flattens to {k} inputs from axis {axis}, the weights expect {self.k}")
        self.m = 1
        for d in shape[:axis]:
            self.m *= int(d)
        top[0].reshape(tuple(shape[:axis]) + (self.n_out,))

    def _w_nk(self):
        w = self.blobs[0].data
        return w.T if self.transpose else w

    def forward(self, bottom, top):
        xp = bottom[0].xp
        x = bottom[0].data.reshape(self.m, self.k)
        out = top[0].data.reshape(self.m, self.n_out)
        if getattr(self, "exact_sums", False):
            # set by a hook that simulates fixed-point arithmetic: float64 sums (exact for fixed-point operands,
            # whatever the BLAS order), rounded once; the bias after, as below
            out[...] = xp.matmul(x.astype(xp.float64), self._w_nk().T.astype(xp.float64))
        else:
            xp.matmul(x, self._w_nk().T, out=out)
        if self.bias_term:
            out += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        xp = bottom[0].xp
        dy = top[0].diff.reshape(self.m, self.n_out)
        x = bottom[0].data.reshape(self.m, self.k)
        if param_propagate(self, 0):
            if self.transpose:
                self.blobs[0].diff += x.T @ dy
            else:
                self.blobs[0].diff += dy.T @ x
        if self.bias_term and param_propagate(self, 1):
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            xp.matmul(dy, self._w_nk(), out=bottom[0].diff.reshape(self.m, self.k))
