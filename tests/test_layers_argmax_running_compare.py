"""ArgMax's running-compare path (top_k 1 over an axis) against a plain reference: ties, NaN, N > 1, odd sizes."""

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite.blob import Blob
from caffelite.layer import create_layer
from caffelite.layers.reduction import ArgMaxLayer
from caffelite.ops import native
from caffelite.proto import caffe_pb2


@pytest.fixture(autouse=True, params=["native", "numpy"])
def _kernels(request):
    """Every test runs with the compiled kernels (when built) and on the NumPy path alone."""
    with native.enabled(request.param == "native"):
        yield request.param


def _argmax(x, axis, extra=""):
    p = caffe_pb2.LayerParameter()
    text_format.Merge(f'name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param {{ axis: {axis} {extra} }}', p)
    layer = create_layer(p)
    b = Blob(x.shape, np.float32)
    b.data[...] = x
    top = [Blob(())]
    layer.setup([b], top)
    layer.reshape([b], top)
    layer.forward([b], top)
    return layer, top[0].data


def _reference(x, axis):
    """The largest index holding the maximum (Caffe's tie rule), as float."""
    n = x.shape[axis]
    shape = [1] * x.ndim
    shape[axis] = n
    ids = np.arange(n).reshape(shape)
    hit = x == x.max(axis=axis, keepdims=True)
    return np.where(hit, ids, -1).max(axis=axis, keepdims=True).astype(np.float32)


@pytest.mark.parametrize("shape,axis", [
    ((1, 8, 64, 128), 1), ((3, 5, 17, 29), 1), ((2, 2, 9, 11), 1), ((2, 19, 40, 70), 1),
    ((4, 7, 300), 1), ((2, 3, 5, 200), 2), ((5, 300, 64), 1), ((1, 256, 8, 9), 1), ((2, 3, 80000), 1),
])
@pytest.mark.parametrize("ties", [False, True])
def test_top1_matches_reference(shape, axis, ties, monkeypatch):
    if 2 <= shape[axis] <= 256 and np.prod(shape[axis + 1:]) >= 64:  # the running-compare path must serve these
        monkeypatch.setattr(ArgMaxLayer, "_topk", lambda *a: pytest.fail("general path used"))
    rs = np.random.default_rng(sum(shape) * 4 + axis * 2 + ties)
    x = rs.standard_normal(shape).astype(np.float32)
    if ties:  # few distinct values, zeros after a ReLU, and both signs of zero
        x = np.maximum(np.round(x * 1.5), 0)
        x[..., ::3] = -0.0
    _, got = _argmax(x, axis)
    np.testing.assert_array_equal(got, _reference(x, axis))


def test_top1_all_equal_goes_to_last_index():
    _, got = _argmax(np.zeros((2, 6, 8, 16), np.float32), 1)
    assert (got == 5).all()


def test_top1_nan_follows_the_general_path():
    rs = np.random.default_rng(1)
    x = rs.standard_normal((2, 5, 16, 16)).astype(np.float32)
    x[0, 1, 3, 4] = x[0, 3, 3, 4] = np.nan
    x[1, 4, 0, 0] = np.nan
    layer, got = _argmax(x, 1)
    idx, _ = layer._topk(x, 1)
    np.testing.assert_array_equal(got, idx.astype(np.float32))
    assert got[0, 0, 3, 4] == 3 and got[1, 0, 0, 0] == 4


def test_top1_out_max_val_and_topk_unchanged():
    rs = np.random.default_rng(2)
    x = np.round(rs.standard_normal((2, 4, 10, 12)).astype(np.float32))
    _, vals = _argmax(x, 1, "out_max_val: true")
    np.testing.assert_array_equal(vals, x.max(axis=1, keepdims=True))
    _, top2 = _argmax(x, 1, "top_k: 2")
    np.testing.assert_array_equal(top2[:, :1], _reference(x, 1))
