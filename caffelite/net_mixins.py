"""Two seams of :class:`caffelite.net.Net` kept out of net.py: read-only access to the wiring, and the weights.

:class:`GraphAccess` is the public way for code outside the Net (fusion, hooks, jacinto, export, solvers) to
read how layers are connected: by layer index ``i`` (the order of ``net.layers``), the names and Blobs of the
layer's bottoms and tops, its loss tops and which bottoms need a gradient. The lists returned are the net's
own: read them, do not modify them.

:class:`WeightsAndEngines` copies, shares and saves weights, and keeps the convolution engine plan
(:mod:`caffelite.ops.engine`) in step with them: every change of weights through these methods re-plans.
"""

from __future__ import annotations

from .io.netweights import copy_from, save_net, to_proto
from .ops import engine as _engine


class GraphAccess:
    """Read-only graph API of a built Net (by layer index)."""

    @property
    def net_param(self):
        """The NetParameter the net was built from (phase/level/stage-filtered, Split layers inserted)."""
        return self._param

    def layer_name(self, i: int) -> str:
        """The name of layer ``i``."""
        return self._layer_names[i]

    def bottom_ids(self, i: int) -> list:
        """The blob names layer ``i`` reads."""
        return self._bottom_ids[i]

    def top_ids(self, i: int) -> list:
        """The blob names layer ``i`` writes (in-place tops repeat a bottom's name)."""
        return self._top_ids[i]

    def bottom_vecs(self, i: int) -> list:
        """The Blobs layer ``i`` reads, in bottom order."""
        return self._bottom_vecs[i]

    def top_vecs(self, i: int) -> list:
        """The Blobs layer ``i`` writes, in top order."""
        return self._top_vecs[i]

    def loss_tops(self, i: int) -> list:
        """``[(top index, loss weight)]`` of layer ``i``'s tops that carry a non-zero loss weight."""
        return self._loss_tops[i]

    def bottom_need_backward(self, i: int) -> list:
        """Per bottom of layer ``i``: whether the backward computes its gradient."""
        return self._bottom_need_backward[i]


class WeightsAndEngines:
    """Weights in and out of a Net, and the convolution engine plan that depends on them."""

    #: True once this net shares its weights with another net (which may change them at any time)
    weights_shared = False

    def copy_from(self, weights):
        """Copy params by layer name from a caffemodel path or a NetParameter with blobs (Caffe's
        CopyTrainedLayersFrom); logs copied and ignored layers."""
        copy_from(self, weights)
        self.repack()

    @property
    def engine(self) -> str:
        """The convolution engine asked for: "dense", "sparse", "int8" or "auto" (:mod:`caffelite.ops.engine`;
        default ``$CAFFELITE_ENGINE``, else "auto"). Setting it (None: that default) re-plans every layer."""
        return self._engine

    @engine.setter
    def engine(self, value):
        self._engine = _engine.resolve(value)
        _engine.plan(self, self._engine)

    def repack(self):
        """Re-plan the engines and rebuild packed weights: call after editing weights in place."""
        if self._engine is not None:
            _engine.plan(self, self._engine)

    def share_weights_from(self, other):
        """Share param data with the same-named layers of ``other`` (Caffe's ShareTrainedLayersWith)."""
        for name, layer in other.layer_dict.items():
            mine = self.layer_dict.get(name)
            if mine is None or not layer.blobs:
                continue
            if len(mine.blobs) != len(layer.blobs):
                raise mine.error(f"Incompatible number of blobs for layer {name}: {len(layer.blobs)} vs "
                                 f"{len(mine.blobs)}")
            for j, (dst, src) in enumerate(zip(mine.blobs, layer.blobs, strict=True)):
                if dst.shape != src.shape:
                    raise mine.error(f"Cannot share param {j} weights from layer '{name}'; shape mismatch. "
                                     f"Source param shape is {list(src.shape)}; target param shape is "
                                     f"{list(dst.shape)}")
                dst.set_data_array(src.data)
        self.weights_shared = True  # the other net changes them: never packed (caffelite.ops.engine)
        self.repack()

    def to_proto(self, form="jacinto", write_diff=False):
        """A NetParameter of this net (every layer, Split layers included) with its blobs."""
        return to_proto(self, form, write_diff)

    def save(self, path, form="jacinto", write_diff=False):
        """Write the weights as a caffemodel (caffe-jacinto's form by default; ``form="bvlc"`` for BVLC),
        streamed from the blobs (the bytes of ``to_proto(form, write_diff).SerializeToString()``)."""
        save_net(self, path, form, write_diff)
