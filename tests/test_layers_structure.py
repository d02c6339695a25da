"""Data movement (Concat, Slice, Crop, Flatten, Reshape, Tile, Silence, Filter), Reduction and ArgMax.

Real-Caffe fixtures, float64 gradient checks, and the shape rules / errors Caffe enforces.
"""

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite.blob import Blob
from caffelite.errors import NetError
from caffelite.layer import create_layer
from caffelite.proto import caffe_pb2
from gradient_check import check_layer_gradient
from layer_case import assert_case_matches, load_case, parse_last_layer, tolerance

FIXTURE_CASES = [
    "concat_axis1", "concat_axis2", "slice_points", "slice_equal_axis2", "crop_axis2", "flatten", "reshape",
    "tile_axis1", "tile_axis3", "silence",
    "reduction_sum_axis1", "reduction_mean_axis2", "reduction_asum_axis1", "reduction_sumsq_axis1",
    "reduction_sum_axis0_coeff",
    "argmax_axis1", "argmax_axis1_top2_outmaxval", "argmax_top2_outmaxval", "argmax_ties",
]


@pytest.mark.parametrize("name", FIXTURE_CASES)
def test_fixture_case(name):
    assert_case_matches(name)


def test_fixture_filter():
    """The filter case feeds x through a zero Bias ('bias0') into 'data'; run the Filter on x + bias."""
    d, meta, io = load_case("filter")
    _, lp, _ = parse_last_layer(f"{d}/net.prototxt")
    layer = create_layer(lp)
    data = Blob(io["bottom/x"].shape)
    data.data[...] = io["bottom/x"] + io["param/bias0/0"].reshape(1, -1, 1, 1)
    sel = Blob(io["bottom/sel"].shape)
    sel.data[...] = io["bottom/sel"]
    top = Blob(())
    bottom = [data, sel]
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    layer.setup(bottom, [top])
    layer.reshape(bottom, [top])
    layer.forward(bottom, [top])
    rtol, atol = tolerance(meta, "forward")
    np.testing.assert_allclose(top.data, io["top/filtered"], rtol=rtol, atol=atol)
    top.diff[...] = io["top_diff/filtered"]
    layer.backward([top], [True, False], bottom)
    rtol, atol = tolerance(meta, "backward")
    np.testing.assert_allclose(data.diff, io["bottom_diff/data"], rtol=rtol, atol=atol)
    with pytest.raises(NetError, match="filter index"):
        layer.backward([top], [True, True], bottom)


def P(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def rnd(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


S = (2, 3, 4, 5)
# (text, inputs, check_bottoms)
GRAD_CASES = {
    "concat1": ('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y"', [rnd((2, 2, 3, 4)), rnd((2, 3, 3, 4), 2)],
                None),
    "concat_neg_axis": ('name: "c" type: "Concat" bottom: "a" bottom: "b" bottom: "c" top: "y" '
                        'concat_param { axis: -1 }', [rnd((2, 3, 2)), rnd((2, 3, 4), 2), rnd((2, 3, 1), 3)], None),
    "concat_dim0": ('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { concat_dim: 0 }',
                    [rnd((1, 3, 2)), rnd((2, 3, 2), 2)], None),
    "slice_points": ('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" '
                     'slice_param { axis: 1 slice_point: 1 slice_point: 3 }', [rnd((2, 5, 3))], None),
    "slice_equal": ('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 2 }', [rnd(S)], None),
    "crop": ('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: 2 offset: 1 offset: 2 }',
             [rnd((2, 3, 8, 9)), rnd((2, 3, 5, 6), 2)], [0]),
    "crop_one_offset": ('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: 1 offset: 1 }',
                        [rnd((2, 4, 6, 5)), rnd((2, 2, 3, 3), 2)], [0]),
    "flatten": ('name: "f" type: "Flatten" bottom: "x" top: "y"', [rnd(S)], None),
    "flatten_mid": ('name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 2 }',
                    [rnd(S)], None),
    "reshape": ('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 dim: 4 } }',
                [rnd(S)], None),
    "tile1": ('name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 3 }', [rnd((2, 2, 3, 2))],
              None),
    "tile_last": ('name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: -1 tiles: 2 }',
                  [rnd((2, 2, 3, 2))], None),
    "silence": ('name: "s" type: "Silence" bottom: "x" bottom: "z"', [rnd((2, 3)), rnd((4,), 2)], None),
    "filter": ('name: "f" type: "Filter" bottom: "x" bottom: "z" bottom: "sel" top: "a" top: "b"',
               [rnd((4, 3, 2)), rnd((4, 5), 2), np.array([1.0, 0.0, 2.0, 1.0])], [0, 1]),
    "sum": ('name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { axis: 1 }', [rnd((2, 3, 4))], None),
    "sum_all_coeff": ('name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { coeff: -0.7 }',
                      [rnd((2, 3, 4))], None),
    "mean": ('name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { operation: MEAN axis: 2 coeff: 2 }',
             [rnd((2, 3, 4))], None),
    "asum": ('name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { operation: ASUM axis: -1 }',
             [rnd((2, 3, 4)) + np.sign(rnd((2, 3, 4), 3)) * 0.05], None),
    "sumsq": ('name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { operation: SUMSQ axis: 1 }',
              [rnd((2, 3, 4))], None),
    "split": ('name: "s" type: "Split" bottom: "x" top: "a" top: "b" top: "c"', [rnd(S)], None),
    "split_one": ('name: "s" type: "Split" bottom: "x" top: "a"', [rnd((3, 2))], None),
}


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradient(case):
    text, xs, check = GRAD_CASES[case]
    param = P(text)
    kink, kink_range = (0.0, 0.02) if "ASUM" in text else (0.0, -1.0)
    # Silence has no top: the objective is 0 and its gradient (zeros) is still checked
    n = check_layer_gradient(param, xs, check_bottoms=check, kink=kink, kink_range=kink_range)
    assert n > 0


def _forward(text, xs):
    layer = create_layer(P(text))
    bottom = []
    for x in xs:
        b = Blob(np.shape(x), np.float32)
        b.data[...] = x
        bottom.append(b)
    top = [Blob(()) for _ in P(text).top]
    layer.check_blob_counts(bottom, top)
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


def test_flatten_and_reshape_share_data():
    x = rnd(S).astype(np.float32)
    for text in ('name: "f" type: "Flatten" bottom: "x" top: "y"',
                 'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 } }'):
        _, bottom, top = _forward(text, [x])
        bottom[0].data[0, 0, 0, 0] = 42.0
        assert top[0].data.reshape(-1)[0] == 42.0


@pytest.mark.parametrize("dims,axis,num_axes,want", [
    ([0, -1, 4], 0, -1, (2, 15, 4)),
    ([12, 1], 1, 2, (2, 12, 1, 5)),  # replaces axes 1..2 only
    ([-1], -2, -1, (2, 3, 4, 5)),  # axis -2 starts at the last axis (Caffe: num_axes + axis + 1)
    ([1, -1], 4, 0, (2, 3, 4, 5, 1, 1)),  # num_axes 0 inserts
    ([3, 1], 1, 1, (2, 3, 1, 4, 5)),
    ([0], 2, 1, (2, 3, 4, 5)),  # 0 copies the bottom's dim at axis + i
])
def test_reshape_axis_rules(dims, axis, num_axes, want):
    text = ('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { '
            + " ".join(f"dim: {d}" for d in dims) + f" }} axis: {axis} num_axes: {num_axes} }}")
    _, _, top = _forward(text, [rnd(S)])
    assert top[0].shape == want


def test_argmax_no_backward_and_tie_rule():
    layer, _, top = _forward('name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 3 }',
                             [np.array([[1.0, 3.0, 3.0, 0.0, 3.0]])])
    assert not layer.has_backward()
    assert top[0].shape == (1, 1, 3)
    np.testing.assert_array_equal(top[0].data.reshape(-1), [4, 2, 1])  # ties: larger index first
    _, _, top = _forward('name: "a" type: "ArgMax" bottom: "x" top: "y"', [rnd((2, 3, 4, 5))])
    assert top[0].shape == (2, 1, 1, 1)
    x = rnd((2, 6))
    _, _, top = _forward('name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: -1 top_k: 2 }', [x])
    np.testing.assert_array_equal(top[0].data, np.argsort(-x, axis=1)[:, :2])


def test_filter_nothing_selected_and_shapes():
    layer, _, top = _forward('name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y"',
                             [rnd((3, 2)), np.zeros((3, 1, 1))])
    assert top[0].shape == (0, 2)


@pytest.mark.parametrize("text,shapes", [
    ('type: "Concat" bottom: "a" bottom: "b" top: "y"', [(2, 3, 4), (2, 3, 5)]),
    ('type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: 3 }', [(2, 3, 4), (2, 3, 4)]),
    ('type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: 1 concat_dim: 1 }', [(2, 3), (2, 3)]),
    ('type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 1 }', [(2, 3)]),
    ('type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_point: 1 slice_point: 2 }', [(2, 3)]),
    ('type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_point: 3 }', [(2, 3)]),
    ('type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 1 offset: 2 offset: 3 }',
     [(2, 3, 8, 8), (2, 3, 4, 4)]),
    ('type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 5 }', [(2, 3, 8, 8), (2, 3, 4, 4)]),
    ('type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: -1 } }', [(2, 3)]),
    ('type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 4 dim: -1 } }', [(2, 3)]),
    ('type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 7 } }', [(2, 3)]),
    ('type: "Tile" bottom: "x" top: "y" tile_param { tiles: 0 }', [(2, 3)]),
    ('type: "Filter" bottom: "x" bottom: "s" top: "y"', [(2, 3), (3,)]),
    ('type: "Filter" bottom: "x" bottom: "s" top: "y" top: "z"', [(2, 3), (2,)]),
    ('type: "Reduction" bottom: "x" top: "y" reduction_param { axis: 3 }', [(2, 3)]),
    ('type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 4 axis: 1 }', [(2, 3)]),
    ('type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 2 end_axis: 1 }', [(2, 3, 4)]),
])
def test_bad_shapes_and_options_raise(text, shapes):
    param = P('name: "l" ' + text)
    layer = create_layer(param)
    bottom = [Blob(s) for s in shapes]
    top = [Blob(()) for _ in param.top]
    with pytest.raises(NetError):
        layer.setup(bottom, top)
        layer.reshape(bottom, top)


def test_force_backward_rules():
    """Selector / reference / no-backward inputs are never forced into backward."""
    cases = {
        'type: "Crop" bottom: "x" bottom: "r" top: "y"': [True, False],
        'type: "Filter" bottom: "x" bottom: "z" bottom: "s" top: "a" top: "b"': [True, True, False],
        'type: "ArgMax" bottom: "x" top: "y"': [False],
        'type: "Concat" bottom: "x" bottom: "z" top: "y"': [True, True],
        'type: "Reduction" bottom: "x" top: "y"': [True],
    }
    for text, want in cases.items():
        layer = create_layer(P('name: "l" ' + text))
        assert [layer.allow_force_backward(i) for i in range(len(want))] == want, text


@pytest.mark.parametrize("text", ['name: "c" type: "Concat" bottom: "x" top: "y"',
                                  'name: "s" type: "Slice" bottom: "x" top: "y" slice_param { axis: 0 }'])
def test_single_blob_concat_and_slice_copy(text):
    x = rnd((3, 4)).astype(np.float32)
    layer, bottom, top = _forward(text, [x])
    np.testing.assert_array_equal(top[0].data, x)
    top[0].diff[...] = 2 * x
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 2 * x)
