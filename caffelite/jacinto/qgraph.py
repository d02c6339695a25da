"""Graph facts quantization needs (docs/jacinto-spec.md §b.3): "next", "prev" and "prev2" of each layer, and which
outputs are merged into the next layer (not quantized).

Works on a built Net: ``net.layers`` (``layer.param``) and ``net.bottom_ids(i)`` / ``net.top_ids(i)`` (blob names),
Split layers included, as jacinto's runtime net.
"""

from __future__ import annotations

CONV_LIKE = ("Convolution", "InnerProduct", "Deconvolution")


class LayerGraph:
    """Producer/consumer relations by blob name, in layer order (in-place layers count as writers)."""

    def __init__(self, net):
        self.types = [ly.param.type for ly in net.layers]
        self.names = [ly.param.name for ly in net.layers]
        self.bottoms = [list(net.bottom_ids(i)) for i in range(len(net.layers))]
        self.tops = [list(net.top_ids(i)) for i in range(len(net.layers))]
        n = len(self.types)
        # writer[i][j] = (layer index, top index) of the last layer before i that wrote bottom j of layer i
        self.writer = []
        last = {}
        for i in range(n):
            self.writer.append([last.get(b) for b in self.bottoms[i]])
            for j, t in enumerate(self.tops[i]):
                last[t] = (i, j)
        self._readers = {}
        for i in range(n):
            for b in self.bottoms[i]:
                self._readers.setdefault(b, []).append(i)

    def next(self, i):
        """Index of the first later layer that reads top 0 of layer ``i`` (None if none)."""
        if not self.tops[i]:
            return None
        for r in self._readers.get(self.tops[i][0], ()):
            if r > i:
                return r
        return None

    def prev(self, i):
        """Index of the last earlier layer that wrote bottom 0 of layer ``i`` (None if none)."""
        if not self.bottoms[i] or self.writer[i][0] is None:
            return None
        return self.writer[i][0][0]

    def type_of(self, i):
        return self.types[i] if i is not None else None

    def merged(self, i):
        """Whether layer ``i``'s output is merged into the next layer, i.e. not quantized (§b.3, 0.17)."""
        t = self.types[i]
        nxt = self.type_of(self.next(i))
        p = self.prev(i)
        prev = self.type_of(p)
        prev2 = self.type_of(self.prev(p)) if p is not None else None
        if t in CONV_LIKE:
            return nxt in ("BatchNorm", "Scale", "ReLU")
        if t == "BatchNorm":
            return nxt in ("Scale", "ReLU") or (nxt == "Convolution" and prev != "Convolution")
        if t == "Scale":
            return nxt == "ReLU" or (nxt == "Convolution" and prev != "Convolution" and prev2 != "Convolution")
        return False

    def output_flag_016(self, i):
        """Whether 0.16's AddQuantizationParams flags layer ``i``'s output (§b.6)."""
        t = self.types[i]
        nxt = self.type_of(self.next(i))
        if t in ("Convolution", "InnerProduct"):
            return nxt not in ("ReLU", "BatchNorm")
        if t == "BatchNorm":
            return nxt not in ("Convolution", "InnerProduct", "ReLU", "Scale")
        if t in ("ReLU", "Scale", "Pooling", "Concat", "Deconvolution"):
            return True
        if t == "Eltwise":
            return nxt != "ReLU"
        return False
