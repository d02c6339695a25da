"""Pooling: real-Caffe fixtures (MAX/AVE, CEIL/FLOOR, pad, global, mask top) and float64 gradient checks."""

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite.blob import Blob
from caffelite.errors import NetError, UnsupportedError
from caffelite.layer import create_layer
from caffelite.ops.pool import pooled_size
from caffelite.proto import caffe_pb2

from gradient_check import check_layer_gradient
from layer_case import assert_case_matches, case_names

CASES = [c for c in case_names() if c.startswith("pool_")]


def test_fixture_cases_exist():
    assert len(CASES) >= 9


@pytest.mark.parametrize("name", CASES)
def test_fixture_case(name):
    assert_case_matches(name)


def layer_param(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def distinct(*shape, seed=0):
    """Values that are pairwise far apart, so a MAX never has a near tie within the checker's step."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * 0.1).reshape(shape)


GRAD = [
    ("pool: MAX kernel_size: 2 stride: 2", (2, 2, 4, 6)),
    ("pool: MAX kernel_size: 3 stride: 2", (1, 2, 6, 8)),
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 6)),
    ("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2", (1, 2, 5, 7)),
    ("pool: MAX global_pooling: true", (2, 3, 4, 5)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 6, 7)),
    ("pool: AVE kernel_size: 2 stride: 2", (1, 2, 5, 7)),
    ("pool: AVE kernel_size: 2 stride: 2", (1, 2, 4, 6)),
    ("pool: AVE global_pooling: true", (2, 3, 4, 5)),
]


@pytest.mark.parametrize("opts,shape", GRAD)
def test_pool_gradient(opts, shape):
    p = layer_param(f'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ {opts} }}')
    assert check_layer_gradient(p, [distinct(*shape)]) > 0


def _setup(text, shape, ntop=1):
    layer = create_layer(layer_param(text))
    b, tops = Blob(shape), [Blob(()) for _ in range(ntop)]
    layer.check_blob_counts([b], tops)
    layer.setup([b], tops)
    layer.reshape([b], tops)
    return layer, b, tops


def test_pooled_size_rules():
    assert pooled_size(6, 3, 2, 0, True) == 3 and pooled_size(6, 3, 2, 0, False) == 2
    assert pooled_size(5, 2, 2, 1, True) == 3  # 4th window would start in the padding: dropped
    assert pooled_size(512, 2, 2, 0) == 256


def test_max_first_maximum_wins_and_mask():
    layer, b, (t, m) = _setup('name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
                              (1, 1, 2, 4), ntop=2)
    b.data[...] = np.array([[1, 5, 2, 2], [5, 0, 2, 2]], np.float32)
    layer.forward([b], [t, m])
    np.testing.assert_array_equal(t.data.ravel(), [5, 2])
    np.testing.assert_array_equal(m.data.ravel(), [1, 2])  # flat h*W+w of the first maximum


def test_max_overlapping_backward_accumulates():
    layer, b, (t,) = _setup('name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 1 }',
                            (1, 1, 3, 4))
    b.data[...] = np.arange(12, dtype=np.float32).reshape(3, 4)[::-1].copy()
    b.data[0, 0, 0, 1] = 100  # wins both windows
    layer.forward([b], [t])
    t.diff[...] = 1
    layer.backward([t], [True], [b])
    assert b.diff[0, 0, 0, 1] == 2 and b.diff.sum() == 2


def test_stochastic_is_unsupported():
    with pytest.raises(UnsupportedError, match="STOCHASTIC"):
        _setup('name: "p" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 }', (1, 1, 4, 4))


def test_bad_options():
    with pytest.raises(NetError, match="global"):
        _setup('name: "p" type: "Pooling" pooling_param { global_pooling: true kernel_size: 2 }', (1, 1, 4, 4))
    with pytest.raises(NetError, match="pad"):
        _setup('name: "p" type: "Pooling" pooling_param { kernel_size: 2 pad: 2 }', (1, 1, 4, 4))
    with pytest.raises(NetError):
        _setup('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 2 }', (1, 1, 4, 4), ntop=2)
