"""Eltwise, Scale and Bias: real-Caffe fixtures, float64 gradient checks, fillers, in place, errors."""

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite.blob import Blob
from caffelite.errors import NetError
from caffelite.layer import create_layer
from caffelite.proto import caffe_pb2
from gradient_check import check_layer_gradient
from layer_case import assert_case_matches

FIXTURE_CASES = [
    "eltwise_sum", "eltwise_sum_coeff", "eltwise_prod", "eltwise_max",
    "scale_bias", "scale_axis1_numaxes2", "scale_numaxes0", "scale_axis2_numaxes_m1", "scale_two_bottom",
    "bias_learned", "bias_two_bottom",
]


@pytest.mark.parametrize("name", FIXTURE_CASES)
def test_fixture_case(name):
    assert_case_matches(name)


def P(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def rnd(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def distinct(shape, n, seed):
    """``n`` arrays whose values differ element-wise by more than the checker's step (MAX has kinks)."""
    r = np.random.default_rng(seed)
    base = r.permutation(np.arange(n * int(np.prod(shape)))).reshape((n,) + shape) * 0.1
    return [base[i] - r.uniform(0, 0.02, shape) for i in range(n)]


def _random_params(layer):
    r = np.random.default_rng(5)
    for b in layer.blobs:
        b.data[...] = r.uniform(0.5, 1.5, b.shape)


S = (2, 3, 4, 5)
ELT = 'name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
GRAD_CASES = {
    "sum": (ELT, [rnd(S, 1), rnd(S, 2), rnd(S, 3)]),
    "sum_coeff": (ELT + "eltwise_param { coeff: 1 coeff: -0.5 coeff: 2 }", [rnd(S, 1), rnd(S, 2), rnd(S, 3)]),
    "prod": (ELT + "eltwise_param { operation: PROD }", [rnd(S, 1), rnd(S, 2), rnd(S, 3)]),
    "prod_unstable": (ELT + "eltwise_param { operation: PROD stable_prod_grad: false }",
                      [rnd(S, 1) + 3, rnd(S, 2) + 3, rnd(S, 3) + 3]),
    "max": (ELT + "eltwise_param { operation: MAX }", distinct(S, 3, 4)),
    "max2": ('name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { operation: MAX }',
             distinct(S, 2, 6)),
    "scale": ('name: "s" type: "Scale" bottom: "x" top: "y"', [rnd(S, 1)]),
    "scale_bias": ('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true }', [rnd(S, 1)]),
    "scale_axis1_numaxes2": ('name: "s" type: "Scale" bottom: "x" top: "y" '
                             'scale_param { axis: 1 num_axes: 2 bias_term: true }', [rnd(S, 1)]),
    "scale_numaxes0": ('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { num_axes: 0 bias_term: true }',
                       [rnd(S, 1)]),
    "scale_axis2_all": ('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { axis: -2 num_axes: -1 }',
                        [rnd(S, 1)]),
    "scale_axis0": ('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { axis: 0 }', [rnd(S, 1)]),
    "scale_two_bottom": ('name: "s" type: "Scale" bottom: "x" bottom: "g" top: "y" scale_param { bias_term: true }',
                         [rnd(S, 1), rnd((3, 4), 2)]),
    "scale_two_bottom_scalar": ('name: "s" type: "Scale" bottom: "x" bottom: "g" top: "y"',
                                [rnd(S, 1), rnd((), 2)]),
    "bias": ('name: "b" type: "Bias" bottom: "x" top: "y"', [rnd(S, 1)]),
    "bias_numaxes2": ('name: "b" type: "Bias" bottom: "x" top: "y" bias_param { num_axes: 2 }', [rnd(S, 1)]),
    "bias_two_bottom": ('name: "b" type: "Bias" bottom: "x" bottom: "c" top: "y" bias_param { axis: 1 }',
                        [rnd(S, 1), rnd((3, 4), 2)]),
}


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradient(case):
    text, xs = GRAD_CASES[case]
    assert check_layer_gradient(P(text), xs, init_params=_random_params) > 0


def _run(text, xs, dy, in_place):
    layer = create_layer(P(text))
    bottom = []
    for x in xs:
        b = Blob(x.shape, np.float64)
        b.data[...] = x
        bottom.append(b)
    top = [bottom[0] if in_place else Blob((), np.float64)]
    layer.setup(bottom, top)
    for b in layer.blobs:  # float64 params for an exact comparison
        b.__init__(b.shape, np.float64)
    _random_params(layer)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    y = top[0].data.copy()
    top[0].diff[...] = dy
    for b in layer.blobs:
        b.diff[...] = 0
    layer.backward(top, [True] * len(bottom), bottom)
    return y, [b.diff.copy() for b in bottom], [b.diff.copy() for b in layer.blobs]


@pytest.mark.parametrize("case", ["scale", "scale_bias", "scale_two_bottom", "bias", "bias_two_bottom"])
def test_in_place_equals_out_of_place(case):
    text, xs = GRAD_CASES[case]
    dy = rnd(S, 9)
    y0, dx0, dp0 = _run(text, xs, dy, False)
    y1, dx1, dp1 = _run(text, xs, dy, True)
    np.testing.assert_allclose(y1, y0, rtol=1e-12)
    for a, b in zip(dx0 + dp0, dx1 + dp1, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


def test_param_diffs_accumulate():
    text, xs = GRAD_CASES["scale_bias"]
    layer = create_layer(P(text))
    bottom = [Blob(S, np.float64)]
    bottom[0].data[...] = xs[0]
    top = [Blob((), np.float64)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    layer.backward(top, [False], bottom)
    once = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, [False], bottom)
    for b, o in zip(layer.blobs, once, strict=True):
        np.testing.assert_allclose(b.diff, 2 * o)


def test_eltwise_max_tie_rules():
    # Caffe: bottom 1 wins a tie with bottom 0; a later bottom must be strictly larger to win
    a = np.array([1.0, 2.0, 0.0])
    b = np.array([1.0, 1.0, 3.0])
    c = np.array([1.0, 2.0, 3.0])
    text = 'name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" eltwise_param { operation: MAX }'
    y, dx, _ = _run(text, [a, b, c], np.array([10.0, 20.0, 30.0]), False)
    np.testing.assert_array_equal(y, [1, 2, 3])
    np.testing.assert_array_equal(dx[0], [0, 20, 0])
    np.testing.assert_array_equal(dx[1], [10, 0, 30])
    np.testing.assert_array_equal(dx[2], [0, 0, 0])


def test_default_and_jacinto_fillers():
    x = Blob((2, 3, 4, 5))
    layer = create_layer(P('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true }'))
    layer.setup([x], [Blob(())])
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 1.0)  # Caffe's default gamma
    np.testing.assert_array_equal(layer.blobs[1].data, 0.0)
    layer = create_layer(P('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true '
                           'filler { type: "constant" value: 2 } bias_filler { type: "constant" value: -1 } }'))
    layer.setup([x], [Blob(())])
    np.testing.assert_array_equal(layer.blobs[0].data, 2.0)
    np.testing.assert_array_equal(layer.blobs[1].data, -1.0)
    # caffe-jacinto's data/bias: a Bias with a constant -128 filler (docs/jacinto-spec.md §f)
    layer = create_layer(P('name: "data/bias" type: "Bias" bottom: "x" top: "y" '
                           'bias_param { filler { type: "constant" value: -128 } }'))
    layer.setup([x], [Blob(())])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, -128.0)
    x.data[...] = 200
    top = Blob(())
    layer.reshape([x], [top])
    layer.forward([x], [top])
    np.testing.assert_array_equal(top.data, 72.0)
    layer = create_layer(P('name: "b" type: "Bias" bottom: "x" top: "y"'))
    layer.setup([x], [Blob(())])
    np.testing.assert_array_equal(layer.blobs[0].data, 0.0)


def test_random_filler_draws():
    layer = create_layer(P('name: "s" type: "Scale" bottom: "x" top: "y" '
                           'scale_param { filler { type: "uniform" min: 2 max: 3 } }'))
    layer.setup([Blob((2, 50, 3))], [Blob(())])
    d = layer.blobs[0].data
    assert d.shape == (50,) and np.all((d >= 2) & (d <= 3)) and np.unique(d).size > 1


@pytest.mark.parametrize("text,shapes", [
    ('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', [(2, 3), (2, 3)]),
    ('type: "Eltwise" eltwise_param { coeff: 1 }', [(2, 3), (2, 3)]),
    ('type: "Eltwise"', [(2, 3), (2, 4)]),
    ('type: "Scale" scale_param { axis: 1 num_axes: 4 }', [(2, 3, 4)]),
    ('type: "Scale" scale_param { axis: 5 }', [(2, 3, 4)]),
    ('type: "Scale"', [(2, 3, 4), (4,)]),
    ('type: "Bias"', [(2, 3, 4), (3, 5)]),
])
def test_bad_shapes_and_options_raise(text, shapes):
    layer = create_layer(P('name: "l" ' + text))
    bottom = [Blob(s) for s in shapes]
    top = [Blob(())]
    with pytest.raises(NetError):
        layer.setup(bottom, top)
        layer.reshape(bottom, top)


def _all_cases():
    import test_layers_neuron as tn
    import test_layers_structure as ts
    cases = {f"neuron/{k}": (v[0], [v[1]], None) for k, v in tn.GRAD_CASES.items()}
    cases.update({f"eltwise/{k}": (v[0], v[1], None) for k, v in GRAD_CASES.items()})
    cases.update({f"structure/{k}": v for k, v in ts.GRAD_CASES.items()})
    cases["structure/argmax_top3"] = ('name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 3 }',
                                      [np.round(rnd((2, 3, 4), 5))], None)
    cases["structure/argmax_axis"] = ('name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 1 }',
                                      [np.round(rnd((2, 5, 3), 6))], None)
    return cases


def run_on(xp, text, xs, check):
    """Forward + backward of one layer with blobs of array module ``xp``; results as host arrays."""
    from caffelite import backend
    from test_layers_neuron import make_param
    param, extra = make_param(text)
    layer = create_layer(param, extra=extra)
    bottom = []
    for x in xs:
        b = Blob(np.shape(x), np.float32, xp)
        b.data[...] = xp.asarray(x, dtype=np.float32)
        bottom.append(b)
    top = [Blob((), np.float32, xp) for _ in param.top]
    layer.setup(bottom, top)
    r = np.random.default_rng(5)
    for b in layer.blobs:
        b.data[...] = xp.asarray(r.uniform(0.5, 1.5, b.shape), dtype=np.float32)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    out = [backend.to_numpy(t.data).copy() for t in top]
    if layer.has_backward():
        for i, t in enumerate(top):
            t.diff[...] = xp.asarray(rnd(t.shape, 20 + i), dtype=np.float32)
        prop = [check is None or i in check for i in range(len(bottom))]
        layer.backward(top, prop, bottom)
        out += [backend.to_numpy(b.diff).copy() for b, p in zip(bottom, prop, strict=True) if p]
        out += [backend.to_numpy(b.diff).copy() for b in layer.blobs]
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(_all_cases()))
def test_gpu_parity(case):
    """NumPy and CuPy give the same numbers for every layer of this family (one xp body)."""
    import cupy
    text, xs, check = _all_cases()[case]
    want = run_on(np, text, xs, check)
    got = run_on(cupy, text, xs, check)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
