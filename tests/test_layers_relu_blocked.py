"""ReLU's blocked CPU passes (caffelite/ops/relu.py, run by the ReLU layer) against the plain expressions, bitwise.

Forward with slope 0 runs NumPy's maximum against a block of zeros (its vector loop) instead of the scalar 0;
backward multiplies by a mask built block by block. Both must give exactly ``maximum(x, 0)`` and
``dy * (x > 0)``, special values included (NaN, ±0, ±inf, denormals), in place or not, over one block or many;
a nonzero ``negative_slope`` keeps Caffe's ``x > 0 ? x : slope·x`` and its gradient.
"""

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite.blob import Blob
from caffelite.layer import TRAIN, create_layer
from caffelite.ops import native
from caffelite.ops import relu as R
from caffelite.proto import caffe_pb2


@pytest.fixture(autouse=True)
def _numpy_path():
    """These tests pin the NumPy path (the reference) bitwise; tests/test_native_bn.py compares the compiled
    kernels against it."""
    with native.enabled(False):
        yield


SPECIAL = np.array([-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45, 1e-39, -1e-39, 1.0, -1.0, 3e38,
                    -3e38])


def _layer(extra, shape, in_place, dtype):
    p = text_format.Parse(f'name: "r" type: "ReLU" bottom: "x" top: "{"x" if in_place else "y"}" {extra}',
                          caffe_pb2.LayerParameter())
    layer = create_layer(p, TRAIN)
    b = Blob(shape, dtype)
    t = b if in_place else Blob((), dtype)
    layer.setup([b], [t])
    layer.reshape([b], [t])
    return layer, b, t


def _data(shape, dtype, seed):
    rs = np.random.default_rng(seed)
    x = rs.standard_normal(shape).astype(dtype)
    dy = rs.standard_normal(shape).astype(dtype)
    for a in (x, dy):
        flat = a.reshape(-1)
        flat[::7] = rs.choice(SPECIAL, flat[::7].size).astype(dtype)
    return x, dy


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


# special values: NumPy warns of inf·slope and 0·inf in the layer and in the reference expressions
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("block", [None, 5, 64])
@pytest.mark.parametrize("slope", [0.0, 0.1, -0.5, 2.5])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1,), (2, 130)])
def test_relu_bitwise_equals_plain_expressions(monkeypatch, block, slope, in_place, dtype, shape):
    if block is not None:  # several blocks, a partial last one
        monkeypatch.setattr(R, "RELU_BLOCK", block)
    extra = f"relu_param {{ negative_slope: {slope} }}" if slope else ""
    layer, b, t = _layer(extra, shape, in_place, dtype)
    x, dy = _data(shape, dtype, seed=len(shape) + int(abs(slope) * 10))
    s = dtype(np.float32(slope))  # the proto field is a float
    for _ in range(2):
        b.data[...] = x
        layer.forward([b], [t])
        want_y = np.maximum(x, 0) if slope == 0 else np.where(x > 0, x, x * s)
        assert np.array_equal(_bits(t.data), _bits(want_y))
        t.diff[...] = dy
        layer.backward([t], [True], [b])
        want_dx = dy * (x > 0) if slope == 0 else np.where(x > 0, dy, dy * s)
        assert np.array_equal(_bits(b.diff), _bits(want_dx))


def test_relu_shares_a_read_only_zeros_block():
    z = R._zeros(np.dtype(np.float32))
    assert not z.flags.writeable and not z.any() and z.size >= R.RELU_BLOCK
    x = np.array([-1.0, 2.0, -0.0], np.float32)
    R.relu_into(x, x)  # in place
    assert x.tolist() == [0.0, 2.0, 0.0] and not z.any()


def test_relu_grad_into_in_place_and_empty():
    x = np.array([[1.0, -1.0], [0.0, 3.0]], np.float32)
    dy = np.array([[5.0, 6.0], [7.0, -8.0]], np.float32)
    R.relu_grad_into(x, dy, dy)
    assert dy.tolist() == [[5.0, 0.0], [0.0, -8.0]]
    e = np.zeros((0, 3), np.float32)
    R.relu_into(e, e)
    R.relu_grad_into(e, e, e)


def test_relu_non_contiguous_blob_arrays():
    rs = np.random.default_rng(2)
    shape = (3, 4, 6)
    x = rs.standard_normal(shape).astype(np.float32)
    dy = rs.standard_normal(shape).astype(np.float32)
    layer, b, t = _layer("", shape, False, np.float32)
    t.set_data_array(np.zeros((3, 4, 12), np.float32)[..., ::2])
    b.set_diff_array(np.zeros((3, 4, 12), np.float32)[..., ::2])
    b.data[...] = x
    layer.forward([b], [t])
    t.diff[...] = dy
    layer.backward([t], [True], [b])
    assert np.array_equal(t.data, np.maximum(x, 0)) and np.array_equal(b.diff, dy * (x > 0))
