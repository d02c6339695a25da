"""BatchNorm's blocked TRAIN passes (caffelite/ops/batch_norm.py, run by the BatchNorm layer) against the plain
two-pass form.

The blocked forward/backward promise the same float operations in the same order as the straightforward
whole-array code, so in float32 the outputs, the running statistics and every diff must be bitwise equal to
it, with one block or many (a partial last block, a block of one row, rows of one value); float64 results are
also checked against the textbook formulas.
"""

import numpy as np
import pytest

import caffelite.ops.batch_norm as bn
from caffelite.ops import native
from helpers import bits_equal
from native_case import check_bn_without_backward_keeps_nothing, forward_backward, set_scale_bias, single_layer


@pytest.fixture(autouse=True)
def _numpy_path():
    """These tests pin the NumPy path (the reference) bitwise; tests/test_native_bn.py compares the compiled
    kernels against it."""
    with native.enabled(False):
        yield


JSEG = "batch_norm_param { moving_average_fraction: 0.99 eps: 0.0001 scale_bias: true }"  # jsegnet21v2
CAFFE = "batch_norm_param { scale_bias: true moving_average_fraction: 0.9 engine: CAFFE }"
BVLC = "batch_norm_param { eps: 0.5 }"


def _layer(extra, x, in_place, dtype):
    layer, b, t = single_layer("BatchNorm", extra, x.shape, in_place, dtype)
    set_scale_bias(layer)
    return layer, b, t


class PlainBN:
    """The straightforward whole-array form (the previous implementation's float operations, in order)."""

    def __init__(self, layer):
        self.layer = layer
        c = layer.channels
        self.run = [blob.data.copy() for blob in layer.blobs[:3]]
        self.gamma = layer.blobs[3].data.copy() if layer.scale_bias else None
        self.beta = layer.blobs[4].data.copy() if layer.scale_bias else None
        self.dgamma = np.zeros(c, layer.blobs[0].dtype)
        self.dbeta = np.zeros(c, layer.blobs[0].dtype)
        self.forwards = 0

    def forward(self, x):
        layer = self.layer
        n, c = x.shape[0], layer.channels
        x3 = x.reshape(n, c, -1)
        m = x3.size // c
        vec = (1, c, 1)
        mean = x3.sum(axis=2).sum(axis=0) / m
        xhat = x3 - mean.reshape(vec)
        var = (xhat * xhat).sum(axis=2).sum(axis=0) / m
        self._running(mean, var, m)
        inv = 1 / np.sqrt(var + layer.eps)
        xhat *= inv.reshape(vec)
        self.xhat, self.inv, self.m = xhat, inv, m
        y = xhat if self.gamma is None else xhat * self.gamma.reshape(vec) + self.beta.reshape(vec)
        return y.reshape(x.shape)

    def _running(self, mean, var, m):
        layer = self.layer
        b0, b1, b2 = self.run
        unbias = m / (m - 1) if m > 1 else 1.0
        if layer.semantics == "bvlc":
            b2[...] = b2 * layer.maf + 1
            b0[...] = b0 * layer.maf + mean
            b1[...] = b1 * layer.maf + unbias * var
            return
        if layer.engine == "cudnn":
            f = 1.0 if self.forwards == 0 else 1.0 - layer.maf
            var = var * unbias
        else:
            f = 1.0 if self.forwards <= 1 else 1.0 - layer.maf
        self.forwards += 1
        if f == 1.0:
            b0[...], b1[...] = mean, var
        else:
            b0[...] = (1 - f) * b0 + f * mean
            b1[...] = (1 - f) * b1 + f * var

    def backward(self, dy):
        c = self.layer.channels
        vec = (1, c, 1)
        dy3 = dy.reshape(self.xhat.shape)
        dgamma = (dy3 * self.xhat).sum(axis=2).sum(axis=0)
        dbeta = dy3.sum(axis=2).sum(axis=0)
        scale = self.inv.reshape(vec)
        if self.gamma is not None:
            if self.layer.engine == "caffe":
                self.dgamma, self.dbeta = dgamma, dbeta
            else:
                self.dgamma = self.dgamma + dgamma
                self.dbeta = self.dbeta + dbeta
            scale = scale * self.gamma.reshape(vec)
        dx = self.xhat * (dgamma / self.m).reshape(vec)
        dx = dy3 - dx
        dx -= (dbeta / self.m).reshape(vec)
        dx *= scale
        return dx.reshape(dy.shape)


@pytest.mark.parametrize("block_bytes", [None, 1, 300, 5000])
@pytest.mark.parametrize("extra", [JSEG, CAFFE, BVLC])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("shape", [(2, 8, 13, 11), (3, 5), (3, 5, 7), (1, 3, 40, 33), (2, 4, 1, 1)])
def test_train_step_bitwise_equals_plain_form(monkeypatch, block_bytes, extra, in_place, shape):
    if block_bytes is not None:  # several blocks, partial last ones, single rows
        monkeypatch.setattr(bn, "BLOCK_BYTES", block_bytes)
    rs = np.random.default_rng(sum(shape))
    layer, b, t = _layer(extra, np.zeros(shape), in_place, np.float32)
    ref = PlainBN(layer)
    for it in range(3):  # the running averages: overwrite, then blend
        x = (rs.standard_normal(shape) * 3 + 2 + it).astype(np.float32)
        dy = rs.standard_normal(shape).astype(np.float32)
        y, dx = forward_backward(layer, b, t, x, dy)
        want_y = ref.forward(x)
        want_dx = ref.backward(dy)
        assert bits_equal(y, want_y.astype(np.float32))
        assert bits_equal(dx, want_dx.astype(np.float32))
        for got, want in zip(layer.blobs[:3], ref.run, strict=True):
            assert bits_equal(got.data, want)
        if layer.scale_bias:
            assert bits_equal(layer.blobs[3].diff, ref.dgamma)
            assert bits_equal(layer.blobs[4].diff, ref.dbeta)


def test_float64_matches_the_formulas_and_param_diffs_only():
    rs = np.random.default_rng(3)
    shape = (3, 4, 5, 6)
    x = rs.standard_normal(shape) * 2 + 1
    dy = rs.standard_normal(shape)
    layer, b, t = _layer(JSEG, x, True, np.float64)
    gamma, beta = layer.blobs[3].data.copy(), layer.blobs[4].data.copy()
    y, dx = forward_backward(layer, b, t, x, dy)
    axes = (0, 2, 3)
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    xhat = (x - mu) / np.sqrt(var + layer.eps)
    g, bb = gamma.reshape(1, -1, 1, 1), beta.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(y, xhat * g + bb, rtol=1e-12, atol=1e-12)
    want = g / np.sqrt(var + layer.eps) * (dy - dy.mean(axis=axes, keepdims=True)
                                           - xhat * (dy * xhat).mean(axis=axes, keepdims=True))
    np.testing.assert_allclose(dx, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[3].diff, (dy * xhat).sum(axis=axes), rtol=1e-10)
    np.testing.assert_allclose(layer.blobs[4].diff, dy.sum(axis=axes), rtol=1e-10)
    # propagate_down false: only the param diffs (accumulated by the CUDNN engine), the bottom diff untouched
    before = [blob.diff.copy() for blob in layer.blobs[3:]]
    b.data[...] = x  # in place: the first forward overwrote it
    layer.forward([b], [t])
    t.diff[...] = dy
    layer.backward([t], [False], [b])
    assert np.array_equal(b.diff, dy)  # in place: the top diff, left as it was
    for blob, old in zip(layer.blobs[3:], before, strict=True):
        np.testing.assert_allclose(blob.diff, 2 * old, rtol=1e-12)


def test_without_backward_nothing_is_kept_and_output_is_the_same(monkeypatch):
    monkeypatch.setattr(bn, "BLOCK_BYTES", 700)  # several blocks per plane
    x = (np.random.default_rng(5).standard_normal((2, 6, 9, 7)) * 2 + 3).astype(np.float32)
    check_bn_without_backward_keeps_nothing(lambda: _layer(JSEG, x, True, np.float32), x)


def test_reshape_between_iterations_remakes_the_buffers():
    rs = np.random.default_rng(9)
    layer, b, t = _layer(JSEG, np.zeros((2, 3, 4, 4)), False, np.float32)
    ref = PlainBN(layer)
    for shape in [(2, 3, 4, 4), (1, 3, 9, 5), (2, 3, 4, 4)]:
        x = rs.standard_normal(shape).astype(np.float32)
        dy = rs.standard_normal(shape).astype(np.float32)
        b.reshape(shape)
        y, dx = forward_backward(layer, b, t, x, dy)
        assert y.shape == shape and bits_equal(y, ref.forward(x).astype(np.float32))
        assert bits_equal(dx, ref.backward(dy).astype(np.float32))


def test_blocks_are_whole_rows():
    rows = bn.row_blocks(np, 10, 100, 4)
    covered = [i for s in rows for i in range(s.start, s.stop)]
    assert covered == list(range(10))
    assert bn.row_blocks(np, 0, 5, 4) == [slice(0, 0)]


def _strided(shape, dtype):
    """A non-contiguous array of ``shape`` (every other element of a bigger one)."""
    return np.zeros(shape[:-1] + (2 * shape[-1],), dtype)[..., ::2]


def test_non_contiguous_blob_arrays(monkeypatch):
    monkeypatch.setattr(bn, "BLOCK_BYTES", 200)
    rs = np.random.default_rng(4)
    shape = (2, 3, 4, 5)
    x = (rs.standard_normal(shape) + 1).astype(np.float32)
    dy = rs.standard_normal(shape).astype(np.float32)
    want = forward_backward(*_layer(JSEG, x, False, np.float32), x, dy)
    layer, b, t = _layer(JSEG, x, False, np.float32)
    t.set_data_array(_strided(shape, np.float32))
    b.set_diff_array(_strided(shape, np.float32))
    got = forward_backward(layer, b, t, x, dy)
    assert not t.data.flags.c_contiguous and not b.diff.flags.c_contiguous
    assert all(bits_equal(g, w) for g, w in zip(got, want, strict=True))
