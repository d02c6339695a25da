"""Shared by the compiled-kernel tests: pick an instruction set (and thread count) of a loaded library."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def using_isa(lib, name, threads=None):
    """Within the block, run ``lib`` (a caffelite.ops.native.KernelLibrary) with instruction set ``name`` and,
    when given, ``threads`` threads."""
    old = lib.isa, lib.threads
    lib.isa = name
    if threads is not None:
        lib.threads = threads
    try:
        yield
    finally:
        lib.isa, lib.threads = old


def single_layer(type_name, extra, shape, in_place, dtype=None, phase=None):
    """A TRAIN-phase layer ``type_name`` (options text ``extra``) set up on a bottom Blob of ``shape``, writing
    in place or into its own top; returns (layer, bottom, top)."""
    import numpy as np
    from google.protobuf import text_format

    from caffelite.blob import Blob
    from caffelite.layer import TRAIN, create_layer
    from caffelite.proto import caffe_pb2

    dtype = np.float32 if dtype is None else dtype
    p = text_format.Parse(f'name: "l" type: "{type_name}" bottom: "x" top: "{"x" if in_place else "y"}" {extra}',
                          caffe_pb2.LayerParameter())
    layer = create_layer(p, TRAIN if phase is None else phase)
    b = Blob(shape, dtype)
    t = b if in_place else Blob((), dtype)
    layer.setup([b], [t])
    layer.reshape([b], [t])
    return layer, b, t


def set_scale_bias(layer):
    """Non-trivial γ and β on a jacinto BatchNorm with scale_bias (no-op otherwise)."""
    import numpy as np
    if layer.scale_bias:
        rs = np.random.default_rng(7)
        layer.blobs[3].data[...] = rs.uniform(0.5, 1.5, layer.channels)
        layer.blobs[4].data[...] = rs.uniform(-0.5, 0.5, layer.channels)


def forward_backward(layer, b, t, x, dy, propagate=True):
    """One forward of ``layer`` (bottom Blob ``b``, top ``t``) on ``x`` and one backward of ``dy``; returns copies
    of the top data and of the bottom diff."""
    b.data[...] = x
    layer.reshape([b], [t])
    layer.forward([b], [t])
    y = t.data.copy()
    t.diff[...] = dy
    layer.backward([t], [propagate], [b])
    return y, b.diff.copy()


def check_bn_without_backward_keeps_nothing(make_layer, x):
    """A BatchNorm that no backward will need (``needs_backward`` False) keeps no saved state, gives the same
    output and running statistics bit for bit as one that does, and its backward refuses to run.
    ``make_layer()`` returns a fresh (layer, bottom, top)."""
    import numpy as np
    import pytest

    outs = []
    for needs in (True, False):
        layer, b, t = make_layer()
        layer.needs_backward = needs
        b.data[...] = x
        layer.forward([b], [t])
        outs.append((t.data.copy(), [blob.data.copy() for blob in layer.blobs]))
        assert (layer.xhat is not None) == needs
    (y0, s0), (y1, s1) = outs
    assert y0.dtype == y1.dtype and np.array_equal(y0.view(np.uint8), y1.view(np.uint8))
    for a, c in zip(s0, s1, strict=True):
        assert np.array_equal(a.view(np.uint8), c.view(np.uint8))
    with pytest.raises(Exception, match="kept nothing"):
        layer.backward([t], [True], [b])
