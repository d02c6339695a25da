"""The rest of pycaffe's ``Net`` API, mixed into :class:`caffelite.net.Net`: batched ``forward_all`` /
``forward_backward_all``, ``set_input_arrays`` (MemoryData), ``share_with`` and Caffe's HDF5 weights.
"""

from __future__ import annotations

import collections

import numpy as np

from . import backend
from .errors import NetError

__all__ = ["PycaffeNetMixin"]


def _h5py():
    try:
        import h5py
    except ImportError:
        raise NetError("HDF5 weights need h5py: pip install 'caffelite[hdf5]'") from None
    return h5py


class PycaffeNetMixin:
    """pycaffe's convenience methods (the Net provides ``forward``, ``backward``, ``blobs``, ``inputs``...)."""

    def _check_inputs(self, names):
        """pycaffe's rule: arrays passed by name must be net inputs (pycaffe raises 'Input blob arguments
        do not match net inputs')."""
        for n in names:
            if n not in self.inputs:
                what = f"'{n}' is not an input" if n in self.blobs else f"no blob named '{n}'"
                raise NetError(f"Input blob arguments do not match net inputs: {what} in net '{self.name}' "
                               f"(inputs: {', '.join(self.inputs) or 'none'})")

    def _batches(self, arrays):
        """Split each array of ``arrays`` (name -> N×...) into the net's batch size, zero-padding the last."""
        if not arrays:
            return
        lens = {n: len(a) for n, a in arrays.items()}
        if len(set(lens.values())) != 1:
            raise NetError(f"forward_all: the arrays have different lengths: {lens}")
        num = next(iter(lens.values()))
        batch = next(iter(self.blobs.values())).shape[0]
        for i in range(0, num, batch):
            out = {}
            for n, a in arrays.items():
                chunk = np.asarray(a[i:i + batch])
                if len(chunk) < batch:
                    pad = np.zeros((batch - len(chunk),) + chunk.shape[1:], dtype=chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                out[n] = chunk
            yield out

    def _num(self, arrays):
        return len(next(iter(arrays.values()))) if arrays else None

    def forward_all(self, blobs=None, **kwargs):
        """Run forward over all of ``kwargs`` (input name -> N×C×H×W) in batches of the net's batch size;
        return name -> the concatenated outputs (plus ``blobs``), N long."""
        self._check_inputs(kwargs)
        outs = list(self.outputs) + [b for b in (blobs or []) if b not in self.outputs]
        acc = collections.OrderedDict((n, []) for n in outs)
        if not kwargs:
            out = self.forward(blobs=blobs)
            return {n: backend.to_numpy(out[n]).copy() for n in outs}
        for batch in self._batches(kwargs):
            out = self.forward(blobs=blobs, **batch)
            for n in outs:
                acc[n].append(backend.to_numpy(out[n]).copy())
        num = self._num(kwargs)
        return {n: np.concatenate(v)[:num] for n, v in acc.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """Forward and backward in batches: ``kwargs`` holds input arrays and output diffs by name; return
        (forward outputs, input diffs), each concatenated over the batches."""
        fwd_in = {n: a for n, a in kwargs.items() if n in self.inputs}
        bwd_in = {n: a for n, a in kwargs.items() if n in self.outputs}
        bad = [n for n in kwargs if n not in fwd_in and n not in bwd_in]
        if bad:
            raise NetError(f"forward_backward_all: {', '.join(map(repr, bad))} not among the inputs "
                           f"({', '.join(self.inputs)}) or outputs ({', '.join(self.outputs)}) of net '{self.name}'")
        fouts = list(self.outputs) + [b for b in (blobs or []) if b not in self.outputs]
        bouts = list(self.inputs) + [d for d in (diffs or []) if d not in self.inputs]
        facc = {n: [] for n in fouts}
        bacc = {n: [] for n in bouts}
        fb = list(self._batches(fwd_in)) if fwd_in else [{}]
        bb = list(self._batches(bwd_in)) if bwd_in else [{}] * len(fb)
        if len(bb) != len(fb):
            raise NetError("forward_backward_all: inputs and output diffs hold different numbers of items")
        for fbatch, bbatch in zip(fb, bb, strict=True):
            fo = self.forward(blobs=blobs, **fbatch)
            bo = self.backward(diffs=diffs, **bbatch)
            for n in fouts:
                facc[n].append(backend.to_numpy(fo[n]).copy())
            for n in bouts:
                bacc[n].append(backend.to_numpy(bo[n]).copy())
        num = self._num(fwd_in) or self._num(bwd_in)
        cut = (lambda a: a[:num]) if num is not None else (lambda a: a)
        return ({n: cut(np.concatenate(v)) for n, v in facc.items()},
                {n: cut(np.concatenate(v)) for n, v in bacc.items()})

    def set_input_arrays(self, data, labels):
        """Hand ``data`` (N×C×H×W float32) and ``labels`` (N) to the net's first layer, a MemoryData layer."""
        if not self.layers or self.layers[0].param.type != "MemoryData":
            raise NetError(f"set_input_arrays needs a MemoryData layer as the first layer of net '{self.name}'")
        labels = np.asarray(labels, dtype=np.float32)
        if labels.ndim == 1:
            labels = labels[:, None, None, None]
        self.layers[0].reset(np.ascontiguousarray(data, dtype=np.float32), np.ascontiguousarray(labels))

    def share_with(self, other):
        """Share the learnable params of ``other``'s same-named layers (pycaffe's ``Net.share_with``)."""
        self.share_weights_from(other)

    def save_hdf5(self, filename, write_diff=False):
        """Write the layers' params in Caffe's HDF5 layout: ``/data/<layer>/<i>`` (and ``/diff/...``)."""
        import io

        from .io.files import atomic_write

        h5py = _h5py()
        buf = io.BytesIO()  # built in memory, then written like every caffelite file (atomic, the user's umask)
        with h5py.File(buf, "w") as f:
            groups = [("data", "data")] + ([("diff", "diff")] if write_diff else [])
            for gname, attr in groups:
                g = f.create_group(gname)
                for name, layer in zip(self._layer_names, self.layers, strict=True):
                    lg = g.create_group(name)
                    for i, b in enumerate(layer.blobs):
                        lg.create_dataset(str(i), data=backend.to_numpy(getattr(b, attr)).astype(np.float32))
        atomic_write(filename, buf.getbuffer())

    def load_hdf5(self, filename):
        """Copy params by layer name from a Caffe HDF5 weights file (layers absent from the file are kept)."""
        h5py = _h5py()
        with h5py.File(filename, "r") as f:
            if "data" not in f:
                raise NetError(f"{filename}: not a Caffe HDF5 weights file (no 'data' group)")
            data = f["data"]
            for name, layer in zip(self._layer_names, self.layers, strict=True):
                if name not in data or not layer.blobs:
                    continue
                lg = data[name]
                if len(lg) != len(layer.blobs):
                    raise layer.error(f"{filename}: Incompatible number of blobs for layer {name}: the file has "
                                      f"{len(lg)}, the net {len(layer.blobs)}")
                for i, b in enumerate(layer.blobs):
                    arr = np.asarray(lg[str(i)])
                    if tuple(arr.shape) != tuple(b.shape):
                        raise layer.error(f"{filename}: param {i} of layer {name} has shape {list(arr.shape)}, "
                                          f"the net's is {list(b.shape)}")
                    b.data[...] = b.xp.asarray(arr, dtype=b.dtype)
