"""Fillers: formulas (Caffe's filler.hpp), statistics of the random ones, seeding, registry errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

import caffelite
from caffelite import fillers
from caffelite.blob import Blob
from caffelite.errors import NetError
from caffelite.proto import caffe_pb2

from conftest import FIXTURES

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


def filler(**kw):
    p = caffe_pb2.FillerParameter()
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def draw(shape, **kw):
    b = Blob(shape, np.float64)
    fillers.fill(b, filler(**kw))
    return b.data


def test_registry_has_caffe_types():
    assert {"constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear"} <= \
        set(fillers.filler_types())


def test_unknown_type_lists_known():
    with pytest.raises(NetError, match="unknown filler type 'nope'.*gaussian"):
        fillers.get_filler(filler(type="nope"))


def test_default_is_constant_zero():
    b = Blob((3, 4))
    b.data[...] = 7
    fillers.fill(b, caffe_pb2.FillerParameter())
    assert not b.data.any()


def test_constant():
    a = draw((2, 3), type="constant", value=-128.0)
    assert (a == -128).all()


def test_uniform_range_and_mean():
    caffelite.set_random_seed(1)
    a = draw((200, 100), type="uniform", min=-2.0, max=3.0)
    assert a.min() >= -2 and a.max() <= 3
    assert abs(a.mean() - 0.5) < 0.05
    assert abs(a.var() - 25 / 12) < 0.05


def test_gaussian_stats():
    caffelite.set_random_seed(2)
    a = draw((300, 100), type="gaussian", mean=1.5, std=0.3)
    assert abs(a.mean() - 1.5) < 0.01 and abs(a.std() - 0.3) < 0.01


def test_gaussian_sparse_keeps_sparse_over_num_outputs():
    caffelite.set_random_seed(3)
    a = draw((20, 5000), type="gaussian", std=1.0, sparse=5)
    kept = np.count_nonzero(a) / a.size
    assert abs(kept - 5 / 20) < 0.01


@pytest.mark.parametrize("norm,n", [(FAN_IN, 3 * 5 * 5), (FAN_OUT, 64 * 5 * 5), (AVERAGE, (75 + 1600) / 2)])
def test_xavier_bounds_and_variance(norm, n):
    caffelite.set_random_seed(4)
    a = draw((64, 3, 5, 5), type="xavier", variance_norm=norm)
    bound = np.sqrt(3.0 / n)
    assert np.abs(a).max() <= bound
    assert np.abs(a).max() > 0.95 * bound
    assert abs(a.var() * n - 1.0) < 0.1  # Var U(-a, a) = a^2 / 3 = 1 / n


@pytest.mark.parametrize("norm,n", [(FAN_IN, 32 * 3 * 3), (FAN_OUT, 64 * 3 * 3), (AVERAGE, (288 + 576) / 2)])
def test_msra_std(norm, n):
    caffelite.set_random_seed(5)
    a = draw((64, 32, 3, 3), type="msra", variance_norm=norm)
    assert abs(a.std() / np.sqrt(2.0 / n) - 1.0) < 0.03
    assert abs(a.mean()) < 0.01


def test_fan_of_1d_blob_is_count():
    caffelite.set_random_seed(6)
    a = draw((10000,), type="xavier")  # fan_in = count / shape[0] = 1
    assert np.abs(a).max() <= np.sqrt(3.0) and np.abs(a).max() > 1.5


def test_positive_unitball_rows_sum_to_one():
    caffelite.set_random_seed(7)
    a = draw((6, 2, 3, 3), type="positive_unitball")
    assert (a >= 0).all()
    np.testing.assert_allclose(a.reshape(6, -1).sum(axis=1), 1.0, rtol=1e-12)


def test_bilinear_k4_taps():
    a = draw((2, 1, 4, 4), type="bilinear")
    taps = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(a[1, 0], np.outer(taps, taps))


def test_bilinear_odd_kernel():
    # Caffe's formula as is: f = ceil(3/2) = 2, c = (2f - 1 - f%2) / 2f = 0.75 -> taps 0.25, 0.75, 0.75
    a = draw((1, 1, 3, 3), type="bilinear")
    np.testing.assert_allclose(a[0, 0], np.outer([0.25, 0.75, 0.75], [0.25, 0.75, 0.75]))


def test_bilinear_matches_caffe_deconvolution_weights():
    """fixtures/layers/deconv_bilinear_up2 stores Caffe's own bilinear filler output."""
    with np.load(os.path.join(FIXTURES, "layers", "deconv_bilinear_up2", "io.npz")) as io:
        want = io["param/up/0"]
    got = draw(want.shape, type="bilinear")
    np.testing.assert_array_equal(got.astype(np.float32), want)


def test_bilinear_rejects_non_square():
    with pytest.raises(NetError, match="bilinear"):
        draw((1, 1, 3, 4), type="bilinear")


def test_seeded_draws_repeat():
    caffelite.set_random_seed(1701)
    a = draw((5, 7), type="gaussian", std=0.1)
    caffelite.set_random_seed(1701)
    b = draw((5, 7), type="gaussian", std=0.1)
    c = draw((5, 7), type="gaussian", std=0.1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_fill_keeps_blob_dtype():
    b = Blob((3, 3), np.float32)
    fillers.fill(b, filler(type="uniform"))
    assert b.data.dtype == np.float32
