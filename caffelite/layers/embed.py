"""Embed: a lookup table (BVLC semantics), top = W[index] (+ bias), for integer-valued float indices.

Weights are (input_dim, num_output), the optional bias (num_output,). The top shape is bottom.shape +
(num_output,). Indices must be integers in [0, input_dim) (checked, as Caffe's DCHECKs). Backpropagation to
the index bottom is impossible (Caffe: "Can't backpropagate to EmbedLayer input").
"""

from __future__ import annotations

from ..layer import Layer, register
from .common import make_param_blob, param_propagate


@register("Embed")
class EmbedLayer(Layer):
    """Caffe's Embed layer."""

    exact_num_bottom = 1
    exact_num_top = 1
    allows_in_place = False
    param_fields = {"embed_param": ("num_output", "input_dim", "bias_term", "weight_filler", "bias_filler")}

    def setup(self, bottom, top):
        ep = self.param.embed_param
        if not ep.HasField("num_output") or ep.num_output <= 0:
            raise self.error("EmbedLayer num_output must be positive")
        if not ep.HasField("input_dim") or ep.input_dim <= 0:
            raise self.error("EmbedLayer input_dim must be positive")
        self.n_out, self.k = int(ep.num_output), int(ep.input_dim)
        self.bias_term = bool(ep.bias_term)
        self.blobs = [make_param_blob((self.k, self.n_out), ep.weight_filler, bottom[0])]
        if self.bias_term:
            self.blobs.append(make_param_blob((self.n_out,), ep.bias_filler, bottom[0]))

    def reshape(self, bottom, top):
        top[0].reshape(tuple(bottom[0].shape) + (self.n_out,))

    def _indices(self, bottom):
        xp = bottom.xp
        v = bottom.data.reshape(-1)
        idx = v.astype(xp.int64)
        if v.size and (bool(xp.any(idx != v)) or int(idx.min()) < 0 or int(idx.max()) >= self.k):
            raise self.error(f"Embed indices must be integers in [0, {self.k}) (input_dim)")
        return idx

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def forward(self, bottom, top):
        idx = self._indices(bottom[0])
        out = top[0].data.reshape(-1, self.n_out)
        out[...] = self.blobs[0].data[idx]
        if self.bias_term:
            out += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("Can't backpropagate to EmbedLayer input.")
        xp = bottom[0].xp
        dy = top[0].diff.reshape(-1, self.n_out)
        if param_propagate(self, 0):
            # repeated indices must accumulate: a scatter-add, not a fancy-index assignment
            xp.add.at(self.blobs[0].diff, self._indices(bottom[0]), dy)
        if self.bias_term and param_propagate(self, 1):
            self.blobs[1].diff += dy.sum(axis=0)
