"""Neuron (element-wise) layers: real-Caffe fixtures, float64 gradient checks, in-place runs, Dropout."""

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite import backend
from caffelite.blob import Blob
from caffelite.errors import NetError
from caffelite.layer import TEST, TRAIN, create_layer
from caffelite.proto import caffe_pb2, dialect
from gradient_check import check_layer_gradient
from layer_case import assert_case_matches

FIXTURE_CASES = [
    "relu", "relu_slope0.1", "prelu", "prelu_shared", "sigmoid", "tanh", "elu", "absval", "bnll",
    "power", "power_frac", "exp", "exp_base2", "log", "log_base10", "threshold", "clip", "swish",
    "swish_beta1.5", "dropout_test",
]


@pytest.mark.parametrize("name", FIXTURE_CASES)
def test_fixture_case(name):
    assert_case_matches(name)


def make_param(text):
    """(LayerParameter in the jacinto form, BVLC original or None) from a layer's prototxt text."""
    try:
        return text_format.Parse(text, caffe_pb2.LayerParameter()), None
    except text_format.ParseError:
        bv = text_format.Parse(text, dialect("bvlc").LayerParameter())
        return caffe_pb2.LayerParameter.FromString(bv.SerializeToString()), bv


def layer_text(type_, extra=""):
    return f'name: "l" type: "{type_}" bottom: "x" top: "y" {extra}'


def away_from(x, points, margin=0.03):
    """Push values within ``margin`` of any kink point outside it (Caffe's checker skips one kink only)."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, margin, -margin) * 2
    return x


def rnd(shape=(2, 3, 4, 5), seed=1, lo=None, hi=None):
    r = np.random.default_rng(seed)
    if lo is not None:
        return r.uniform(lo, hi, shape)
    return r.standard_normal(shape)


# (text, input, kink, kink_range)
GRAD_CASES = {
    "relu": (layer_text("ReLU"), away_from(rnd(), [0]), 0.0, 0.01),
    "relu_leaky": (layer_text("ReLU", "relu_param { negative_slope: 0.1 }"), away_from(rnd(), [0]), 0.0, 0.01),
    "relu_neg_slope": (layer_text("ReLU", "relu_param { negative_slope: -0.3 }"), away_from(rnd(), [0]), 0.0, 0.01),
    "prelu": (layer_text("PReLU"), away_from(rnd(), [0]), 0.0, 0.01),
    "prelu_shared": (layer_text("PReLU", "prelu_param { channel_shared: true }"), away_from(rnd(), [0]), 0.0, 0.01),
    "sigmoid": (layer_text("Sigmoid"), rnd(), 0.0, -1.0),
    "tanh": (layer_text("TanH"), rnd(), 0.0, -1.0),
    "elu": (layer_text("ELU", "elu_param { alpha: 0.7 }"), away_from(rnd(), [0]), 0.0, 0.01),
    "elu_lambda": (layer_text("ELU", "elu_param { alpha: 1.6733 lambda: 1.0507 }"), away_from(rnd(), [0]), 0.0, 0.01),
    "absval": (layer_text("AbsVal"), away_from(rnd(), [0]), 0.0, 0.01),
    "bnll": (layer_text("BNLL"), rnd(), 0.0, -1.0),
    "power": (layer_text("Power", "power_param { power: 2 scale: 0.5 shift: 1 }"), rnd(), 0.0, -1.0),
    "power_frac": (layer_text("Power", "power_param { power: -0.75 scale: 2 shift: 3 }"), rnd(lo=-1, hi=2), 0.0, -1.0),
    "power_one": (layer_text("Power", "power_param { power: 1 scale: -1.5 shift: 0.2 }"), rnd(), 0.0, -1.0),
    "power_zero_scale": (layer_text("Power", "power_param { power: 3 scale: 0 shift: 2 }"), rnd(), 0.0, -1.0),
    "exp": (layer_text("Exp"), rnd(), 0.0, -1.0),
    "exp_base2": (layer_text("Exp", "exp_param { base: 2 scale: 0.5 shift: 0.1 }"), rnd(), 0.0, -1.0),
    "log": (layer_text("Log"), rnd(lo=0.5, hi=3), 0.0, -1.0),
    "log_base10": (layer_text("Log", "log_param { base: 10 scale: 0.5 shift: 1.5 }"), rnd(lo=-1, hi=3), 0.0, -1.0),
    "clip": (layer_text("Clip", "clip_param { min: -0.5 max: 0.8 }"), away_from(rnd(), [-0.5, 0.8]), 0.0, -1.0),
    "swish": (layer_text("Swish"), rnd(), 0.0, -1.0),
    "swish_beta": (layer_text("Swish", "swish_param { beta: 1.5 }"), rnd(), 0.0, -1.0),
    "dropout_test": (layer_text("Dropout", "dropout_param { dropout_ratio: 0.3 }"), rnd(), 0.0, -1.0),
}


def _random_slopes(layer):
    b = layer.blobs[0]
    b.data[...] = np.random.default_rng(3).uniform(0.05, 0.4, b.shape)


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradient(case):
    text, x, kink, kink_range = GRAD_CASES[case]
    param, extra = make_param(text)
    n = check_layer_gradient(param, [x], kink=kink, kink_range=kink_range, extra=extra,
                             init_params=_random_slopes if param.type == "PReLU" else None)
    assert n > 0


def _run(layer_text_, x, dy, in_place, phase=TEST):
    param, extra = make_param(layer_text_)
    layer = create_layer(param, phase, extra)
    bottom = Blob(x.shape, np.float64)
    bottom.data[...] = x
    top = bottom if in_place else Blob((), np.float64)
    layer.setup([bottom], [top])
    if layer.blobs:
        _random_slopes(layer)
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])
    y = top.data.copy()
    if not layer.has_backward():
        return y, None, None
    top.diff[...] = dy
    for b in layer.blobs:
        b.diff[...] = 0
    layer.backward([top], [True], [bottom])
    return y, bottom.diff.copy(), [b.diff.copy() for b in layer.blobs]


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_dropout_train_gradient(ratio):
    """TRAIN Dropout: the checker replays one random state per forward (as Caffe's), so the mask is fixed."""
    param, _ = make_param(layer_text("Dropout", f"dropout_param {{ dropout_ratio: {ratio} }}"))
    assert check_layer_gradient(param, [rnd()], phase=TRAIN) > 0


@pytest.mark.parametrize("case", sorted(GRAD_CASES) + ["threshold"])
def test_in_place_equals_out_of_place(case):
    if case == "threshold":
        text, x = layer_text("Threshold", "threshold_param { threshold: 0.2 }"), rnd()
    else:
        text, x = GRAD_CASES[case][:2]
    dy = rnd(x.shape, seed=7)
    y0, dx0, dp0 = _run(text, x, dy, in_place=False)
    y1, dx1, dp1 = _run(text, x, dy, in_place=True)
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=0)
    if dx0 is not None:
        np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-15)
        for a, b in zip(dp0, dp1, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-12)


def test_threshold_and_no_backward():
    param, _ = make_param(layer_text("Threshold", "threshold_param { threshold: 0.2 }"))
    layer = create_layer(param)
    assert not layer.has_backward()
    assert not layer.allow_force_backward(0)  # force_backward skips it (Caffe would abort)
    x = np.array([[0.1, 0.2, 0.3, -1.0]])
    y, _, _ = _run(layer_text("Threshold", "threshold_param { threshold: 0.2 }"), x, x, False)
    np.testing.assert_array_equal(y, [[0, 0, 1, 0]])
    with pytest.raises(NetError):
        layer.backward([Blob((1,))], [True], [Blob((1,))])


def test_default_fillers():
    param, _ = make_param(layer_text("PReLU"))
    layer = create_layer(param)
    b = Blob((2, 4, 3), np.float32)
    layer.setup([b], [Blob(())])
    assert layer.blobs[0].shape == (4,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    filler = 'prelu_param { filler { type: "constant" value: 0.1 } channel_shared: true }'
    param, _ = make_param(layer_text("PReLU", filler))
    layer = create_layer(param)
    layer.setup([b], [Blob(())])
    assert layer.blobs[0].shape == ()
    np.testing.assert_allclose(layer.blobs[0].data, 0.1)


def test_bad_options_raise():
    for text in (layer_text("Exp", "exp_param { base: -2 }"), layer_text("Log", "log_param { base: 0 }"),
                 layer_text("Clip", "clip_param { min: 1 max: 0 }"),
                 layer_text("Dropout", "dropout_param { dropout_ratio: 1.0 }")):
        param, extra = make_param(text)
        layer = create_layer(param, TEST, extra)
        with pytest.raises(NetError):
            layer.setup([Blob((2, 3))], [Blob(())])
    param, _ = make_param(layer_text("PReLU"))
    layer = create_layer(param)
    with pytest.raises(NetError):
        layer.setup([Blob((5,))], [Blob(())])


def test_dropout_train():
    text = layer_text("Dropout", "dropout_param { dropout_ratio: 0.3 }")
    x = rnd((4, 50, 50), lo=1, hi=2)  # never 0, so a dropped element is recognisable
    dy = rnd(x.shape, seed=2)
    backend.set_random_seed(5)
    y, dx, _ = _run(text, x, dy, in_place=False, phase=TRAIN)
    kept = y != 0
    assert 0.67 < kept.mean() < 0.73  # keep probability 1 - p
    np.testing.assert_allclose(y[kept], x[kept] / 0.7)
    np.testing.assert_allclose(dx, np.where(kept, dy / 0.7, 0))
    # seeded: the same seed gives the same mask; in place gives the same numbers
    backend.set_random_seed(5)
    y2, dx2, _ = _run(text, x, dy, in_place=True, phase=TRAIN)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)
    backend.set_random_seed(6)
    y3, _, _ = _run(text, x, dy, in_place=False, phase=TRAIN)
    assert not np.array_equal(y3, y)


def test_dropout_own_seed():
    text = layer_text("Dropout", "dropout_param { dropout_ratio: 0.5 random_seed: 11 }")
    x = rnd((3, 40), lo=1, hi=2)
    backend.set_random_seed(1)
    y1, _, _ = _run(text, x, x, in_place=False, phase=TRAIN)
    backend.set_random_seed(2)  # the layer's own seed decides, not the global one
    y2, _, _ = _run(text, x, x, in_place=False, phase=TRAIN)
    np.testing.assert_array_equal(y1, y2)
    assert 0 < np.count_nonzero(y1) < y1.size


def test_sigmoid_bnll_extremes_are_finite():
    x = np.array([-1000.0, -60.0, 0.0, 60.0, 1000.0], dtype=np.float32)
    y, _, _ = _run(layer_text("Sigmoid"), x, x, False)
    assert np.all(np.isfinite(y)) and y[0] == 0 and y[-1] == 1
    y, dx, _ = _run(layer_text("BNLL"), x, np.ones_like(x), False)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(y[-1], 1000.0)
