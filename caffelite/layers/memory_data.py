"""MemoryData: batches served from arrays the caller hands over with ``Net.set_input_arrays`` (pycaffe)."""

from __future__ import annotations

import numpy as np

from ..layer import Layer, register


@register("MemoryData")
class MemoryDataLayer(Layer):
    """Tops ``data`` (batch_size×channels×height×width) and ``label`` (batch_size), as Caffe's MemoryDataLayer.

    Each forward copies the next ``batch_size`` items of the arrays given to :meth:`reset`, wrapping around
    at the end. The arrays are served as given: ``transform_param`` is not applied to them (Caffe applies it
    only to datums added with AddDatumVector, which caffelite does not offer).
    """

    param_fields = {"memory_data_param": ("batch_size", "channels", "height", "width")}

    exact_num_bottom = 0
    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.param.memory_data_param
        self.shape = (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(self.shape) <= 0:
            raise self.error(f"memory_data_param batch_size, channels, height and width must be positive, got "
                             f"{self.shape}")
        if self.param.HasField("transform_param") and self.param.transform_param.ListFields():
            raise self.unsupported("transform_param", "(MemoryData serves its arrays untransformed)")
        self.data = self.labels = None
        self.pos = 0
        top[0].reshape(self.shape)
        top[1].reshape((self.shape[0],))

    def reset(self, data, labels):
        """Serve ``data`` (N×C×H×W float32) and ``labels`` (N, or N×1×1×1) from now on, from item 0."""
        data = np.asarray(data, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.float32).reshape(len(labels), -1)
        if data.ndim != 4 or data.shape[1:] != self.shape[1:]:
            raise self.error(f"set_input_arrays: data must have shape N x {self.shape[1]} x {self.shape[2]} x "
                             f"{self.shape[3]}, got {data.shape}")
        if labels.shape != (len(data), 1):
            raise self.error(f"set_input_arrays: one label per item expected: {len(data)} items, labels shape "
                             f"{labels.shape}")
        if len(data) % self.shape[0]:
            raise self.error(f"set_input_arrays: the number of items ({len(data)}) must be a multiple of the "
                             f"batch size ({self.shape[0]})")
        self.data, self.labels, self.pos = data, labels[:, 0], 0

    def reshape(self, bottom, top):
        top[0].reshape(self.shape)
        top[1].reshape((self.shape[0],))

    def forward(self, bottom, top):
        if self.data is None:
            raise self.error("MemoryDataLayer needs to be initialized by calling Net.set_input_arrays")
        n = self.shape[0]
        xp = top[0].xp
        top[0].data[...] = xp.asarray(self.data[self.pos:self.pos + n])
        top[1].data[...] = xp.asarray(self.labels[self.pos:self.pos + n])
        self.pos = (self.pos + n) % len(self.data)
