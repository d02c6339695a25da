"""Convolution, Deconvolution, Im2col, InnerProduct and Embed: real-Caffe fixtures and float64 gradient checks."""

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite.blob import Blob
from caffelite.errors import NetError, UnsupportedError
from caffelite.layer import create_layer
from caffelite.proto import caffe_pb2

from gradient_check import check_layer_gradient
from layer_case import assert_case_matches, case_names

FAMILY = ("conv_", "deconv_", "ip_", "im2col", "embed")
CASES = [c for c in case_names() if c.startswith(FAMILY)]


def test_fixture_cases_exist():
    assert len(CASES) >= 19


@pytest.mark.parametrize("name", CASES)
def test_fixture_case(name):
    assert_case_matches(name)


def layer_param(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def randomize(layer):
    rs = np.random.default_rng(1)
    for b in layer.blobs:
        b.data[...] = rs.standard_normal(b.shape)


CONV_GRAD = [
    ("Convolution", "num_output: 3 kernel_size: 3", (2, 2, 5, 6)),
    ("Convolution", "num_output: 4 kernel_size: 3 stride: 2 pad: 1", (1, 3, 7, 6)),
    ("Convolution", "num_output: 4 kernel_size: 3 pad: 2 dilation: 2 group: 2", (1, 4, 6, 7)),
    ("Convolution", "num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_w: 1 bias_term: false",
     (2, 3, 6, 5)),
    ("Convolution", "num_output: 5 kernel_size: 1", (2, 3, 4, 3)),
    ("Convolution", "num_output: 4 kernel_size: 3 pad: 1 group: 4", (1, 4, 5, 5)),  # depthwise path
    ("Deconvolution", "num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 2, 3, 4)),
    ("Deconvolution", "num_output: 4 kernel_h: 2 kernel_w: 3 stride: 2 group: 2", (1, 4, 3, 3)),
    ("Deconvolution", "num_output: 3 kernel_size: 4 stride: 2 pad: 1 group: 3", (1, 3, 3, 4)),  # depthwise
    ("Deconvolution", "num_output: 2 kernel_size: 1", (1, 3, 3, 3)),
]


@pytest.mark.parametrize("ltype,opts,shape", CONV_GRAD)
def test_conv_gradient(ltype, opts, shape):
    p = layer_param(f'name: "c" type: "{ltype}" bottom: "x" top: "y" convolution_param {{ {opts} }}')
    n = check_layer_gradient(p, [rand(*shape)], init_params=randomize, max_checks=60)
    assert n > 0


def test_im2col_gradient():
    p = layer_param('name: "c" type: "Im2col" bottom: "x" top: "y" '
                    'convolution_param { kernel_size: 3 stride: 2 pad: 1 dilation: 1 }')
    assert check_layer_gradient(p, [rand(1, 2, 5, 6)], max_checks=80) > 0


@pytest.mark.parametrize("opts,shape", [("num_output: 3", (2, 3, 2)), ("num_output: 4 axis: 2", (2, 3, 5)),
                                        ("num_output: 3 transpose: true bias_term: false", (3, 4))])
def test_inner_product_gradient(opts, shape):
    p = layer_param(f'name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ {opts} }}')
    assert check_layer_gradient(p, [rand(*shape)], init_params=randomize) > 0


def test_embed_gradient_params_only():
    p = layer_param('name: "e" type: "Embed" bottom: "i" top: "y" embed_param { num_output: 3 input_dim: 5 }')
    idx = np.array([[0, 3, 3], [4, 1, 0]], dtype=np.float64)
    assert check_layer_gradient(p, [idx], check_bottoms=[], init_params=randomize) > 0


def _setup(text, shape):
    layer = create_layer(layer_param(text))
    b, t = Blob(shape), Blob(())
    layer.setup([b], [t])
    layer.reshape([b], [t])
    return layer, b, t


def test_conv_matches_direct_loop_reference():
    # an independent (slow, obvious) reference on random data: group 2, dilation 2, stride 2, rect pad
    layer, b, t = _setup('name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
                         'stride: 2 pad_h: 2 pad_w: 1 dilation: 2 group: 2 }', (2, 4, 9, 8))
    randomize(layer)
    b.data[...] = rand(2, 4, 9, 8)
    layer.forward([b], [t])
    w, bias = layer.blobs[0].data, layer.blobs[1].data
    xpad = np.pad(b.data, ((0, 0), (0, 0), (2, 2), (1, 1)))
    ho, wo = t.shape[2:]
    ref = np.zeros(t.shape, np.float64)
    for o in range(4):
        gi = o // 2
        for c in range(2):
            for i in range(3):
                for j in range(3):
                    patch = xpad[:, gi * 2 + c, i * 2:i * 2 + 2 * (ho - 1) + 1:2, j * 2:j * 2 + 2 * (wo - 1) + 1:2]
                    ref[:, o] += w[o, c, i, j] * patch
        ref[:, o] += bias[o]
    np.testing.assert_allclose(t.data, ref, rtol=1e-4, atol=1e-4)


def test_conv_errors():
    with pytest.raises(NetError, match="multiple of group"):
        _setup('name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 group: 3 }',
               (1, 6, 5, 5))
    with pytest.raises(NetError, match="not both"):
        _setup('name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 kernel_h: 3 '
               'kernel_w: 3 }', (1, 2, 5, 5))
    with pytest.raises(NetError, match="kernel_size"):
        _setup('name: "c" type: "Convolution" convolution_param { num_output: 4 }', (1, 2, 5, 5))
    with pytest.raises(UnsupportedError):
        _setup('name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 axis: 2 }',
               (1, 2, 5, 5))


def test_inner_product_shape_mismatch_names_layer():
    layer, b, t = _setup('name: "fc" type: "InnerProduct" inner_product_param { num_output: 3 }', (2, 4))
    b.reshape(2, 5)
    with pytest.raises(NetError, match="fc"):
        layer.reshape([b], [t])


def test_embed_rejects_out_of_range_index():
    layer, b, t = _setup('name: "e" type: "Embed" embed_param { num_output: 3 input_dim: 4 }', (3,))
    b.data[...] = [0, 4, 1]
    with pytest.raises(NetError, match="input_dim"):
        layer.forward([b], [t])


def test_conv_reshape_follows_input():
    layer, b, t = _setup('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 pad: 1 '
                         'stride: 2 }', (1, 3, 8, 8))
    assert t.shape == (1, 2, 4, 4)
    b.reshape(2, 3, 16, 10)
    layer.reshape([b], [t])
    layer.forward([b], [t])
    assert t.shape == (2, 2, 8, 5)
