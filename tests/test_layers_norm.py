"""BatchNorm (BVLC and caffe-jacinto semantics), LRN, MVN and Softmax: real-Caffe fixtures, float64 gradient
checks, and closed-form checks of the caffe-jacinto 5-blob BatchNorm (docs/jacinto-spec.md §d; no fixture exists)."""

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite.blob import Blob
from caffelite.errors import NetError
from caffelite.layer import TEST, TRAIN, create_layer
from caffelite.layers.batch_norm import BatchNormLayer, convert_blobs, split_for_bvlc
from caffelite.proto import caffe_pb2
from gradient_check import check_layer_gradient
from layer_case import assert_case_matches

FIXTURE_CASES = [
    "batchnorm_test_global", "batchnorm_test_zero_factor", "batchnorm_train", "batchnorm_train_2d",
    "lrn_across", "lrn_within", "mvn", "mvn_across_channels", "mvn_mean_only", "softmax_axis1", "softmax_axis2",
]


@pytest.mark.parametrize("name", FIXTURE_CASES)
def test_fixture_case(name):
    assert_case_matches(name)


def param(type_, extra="", top="y"):
    return text_format.Parse(f'name: "l" type: "{type_}" bottom: "x" top: "{top}" {extra}',
                             caffe_pb2.LayerParameter())


def build(p, x, phase=TEST, in_place=False, dtype=np.float64):
    layer = create_layer(p, phase)
    b = Blob(x.shape, dtype)
    b.data[...] = x
    t = b if in_place else Blob((), dtype)
    layer.check_blob_counts([b], [t])
    layer.setup([b], [t])
    layer.reshape([b], [t])
    return layer, b, t


def projected_gradient_check(p, x, phase=TEST, init=None, seed=0, step=1e-3, tol=1e-5):
    """Central differences of ``Σ r·y`` for a random ``r`` (Σy² is nearly constant for BN/MVN outputs, so
    the standard objective alone would hardly test them). Checks the bottom and every learnable param."""
    rs = np.random.default_rng(seed)
    layer, b, t = build(p, x, phase)
    if init:
        init(layer)
    layer.forward([b], [t])
    r = rs.standard_normal(t.shape)

    def obj():
        layer.forward([b], [t])
        return float(np.sum(r * t.data))

    t.diff[...] = r
    for blob in layer.blobs:
        blob.diff[...] = 0
    layer.backward([t], [True], [b])
    targets = [(b, b.diff.copy())] + [(blob, blob.diff.copy()) for blob, pd in
                                      zip(layer.blobs, layer.param_propagate_down, strict=True) if pd]
    for blob, analytic in targets:
        flat = blob.data.reshape(-1)
        for i in range(flat.size):
            v = flat[i]
            flat[i] = v + step
            plus = obj()
            flat[i] = v - step
            minus = obj()
            flat[i] = v
            num = (plus - minus) / (2 * step)
            assert abs(num - analytic.reshape(-1)[i]) <= tol * max(1.0, abs(num)), (i, num, analytic.reshape(-1)[i])
    return len(targets)


RS = np.random.default_rng(1234)
X4 = RS.standard_normal((3, 4, 3, 2)) * 2 + 0.5
EPS = float(np.float32(1e-3))  # the proto fields are floats
MAF = float(np.float32(0.9))
JAC = "batch_norm_param { scale_bias: true moving_average_fraction: 0.9 eps: 0.001 }"


def set_bvlc_stats(layer):
    c = layer.channels
    layer.blobs[0].data[...] = np.linspace(-1, 1, c) * 7.5
    layer.blobs[1].data[...] = np.linspace(0.5, 2, c) * 7.5
    layer.blobs[2].data[...] = 7.5


def set_jacinto_params(layer):
    c = layer.channels
    layer.blobs[0].data[...] = np.linspace(-1, 1, c)
    layer.blobs[1].data[...] = np.linspace(0.5, 2, c)
    layer.blobs[3].data[...] = np.linspace(0.5, 1.5, c)
    layer.blobs[4].data[...] = np.linspace(-0.3, 0.3, c)


# ---------------------------------------------------------------- gradient checks (float64)
@pytest.mark.parametrize("shape", [(3, 4, 3, 2), (6, 5)])
def test_batchnorm_bvlc_train_gradient(shape):
    x = RS.standard_normal(shape) * 1.5 + 0.3
    p = param("BatchNorm", "batch_norm_param { eps: 0.5 }")  # a large eps makes Σy² depend on x
    assert check_layer_gradient(p, [x], phase=TRAIN) > 0
    projected_gradient_check(p, x, TRAIN)


def test_batchnorm_bvlc_global_gradient():
    p = param("BatchNorm", "batch_norm_param { use_global_stats: true }")
    assert check_layer_gradient(p, [X4], phase=TRAIN, init_params=set_bvlc_stats) > 0
    projected_gradient_check(p, X4, TRAIN, init=set_bvlc_stats)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_batchnorm_jacinto_gradient(phase):
    p = param("BatchNorm", JAC)
    assert check_layer_gradient(p, [X4], phase=phase, init_params=set_jacinto_params) > 0
    assert projected_gradient_check(p, X4, phase, init=set_jacinto_params) == 3  # bottom, γ, β


@pytest.mark.parametrize("extra", [
    "lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2 }",
    "lrn_param { local_size: 3 alpha: 0.9 beta: 0.6 k: 1.5 }",
    "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }",
])
def test_lrn_gradient(extra):
    x = RS.standard_normal((2, 7, 4, 5))
    p = param("LRN", extra)
    assert check_layer_gradient(p, [x]) > 0
    projected_gradient_check(p, x)


@pytest.mark.parametrize("extra", ["", "mvn_param { across_channels: true }",
                                   "mvn_param { normalize_variance: false }"])
def test_mvn_gradient(extra):
    x = RS.standard_normal((2, 3, 4, 3)) * 2 + 1
    p = param("MVN", extra)
    assert check_layer_gradient(p, [x]) > 0
    projected_gradient_check(p, x, tol=1e-4)


@pytest.mark.parametrize("extra", ["", "softmax_param { axis: 2 }", "softmax_param { axis: -1 }"])
def test_softmax_gradient(extra):
    x = RS.standard_normal((2, 3, 4, 2)) * 2
    p = param("Softmax", extra)
    assert check_layer_gradient(p, [x]) > 0
    projected_gradient_check(p, x)


@pytest.mark.parametrize("type_,extra,phase", [
    ("BatchNorm", "", TRAIN), ("BatchNorm", JAC, TRAIN), ("BatchNorm", JAC, TEST), ("LRN", "", TEST),
    ("MVN", "", TEST), ("Softmax", "", TEST), ("LRN", "lrn_param { norm_region: WITHIN_CHANNEL }", TEST),
])
def test_in_place_equals_out_of_place(type_, extra, phase):
    rs = np.random.default_rng(5)
    x = rs.standard_normal((2, 5, 3, 3))
    dy = rs.standard_normal(x.shape)
    got = []
    for in_place in (False, True):
        p = param(type_, extra, top="x" if in_place else "y")
        layer, b, t = build(p, x, phase, in_place)
        if len(layer.blobs) == 5:
            set_jacinto_params(layer)
        layer.forward([b], [t])
        y = t.data.copy()
        t.diff[...] = dy
        layer.backward([t], [True], [b])
        got.append([y, b.diff.copy()] + [blob.diff.copy() for blob in layer.blobs])
    for a, b in zip(*got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- semantics selection and param specs
def test_semantics_selection():
    assert build(param("BatchNorm"), X4)[0].semantics == "bvlc"
    jl = build(param("BatchNorm", JAC), X4)[0]
    assert jl.semantics == "jacinto" and len(jl.blobs) == 5
    filler = build(param("BatchNorm", 'batch_norm_param { scale_filler { type: "constant" value: 2 } }'), X4)[0]
    assert len(filler.blobs) == 5 and np.all(filler.blobs[3].data == 2) and np.all(filler.blobs[4].data == 0)
    eng = build(param("BatchNorm", "batch_norm_param { engine: CAFFE }"), X4)[0]
    assert eng.semantics == "jacinto" and len(eng.blobs) == 3 and eng.blobs[2].data[0] == 1
    layer = create_layer(param("BatchNorm"), TEST)
    layer.semantics = "jacinto"  # a Net that knows the net is caffe-jacinto's
    b, t = Blob(X4.shape), Blob(())
    layer.setup([b], [t])
    assert layer.eps == 1e-5 and len(layer.blobs) == 3


def test_forced_param_specs():
    bl = build(param("BatchNorm"), X4)[0]
    assert [s.lr_mult for s in bl.param.param] == [0, 0, 0]
    assert bl.param_propagate_down == [False] * 3
    jl = build(param("BatchNorm", "param { lr_mult: 5 decay_mult: 0 } " + JAC), X4)[0]
    assert [(s.lr_mult, s.decay_mult) for s in jl.param.param] == [(0, 0)] * 3 + [(1, 1)] * 2  # §c.2
    assert jl.param_propagate_down == [False] * 3 + [True] * 2
    with pytest.raises(NetError, match="Cannot configure batch normalization statistics"):
        build(param("BatchNorm", "param { lr_mult: 1 }"), X4)


# ---------------------------------------------------------------- jacinto closed forms (§d.3)
def batch_stats(x):
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    return mean, var


def test_jacinto_train_output_and_cudnn_running_average():
    layer, b, t = build(param("BatchNorm", JAC), X4, TRAIN)
    set_jacinto_params(layer)
    old_mean, old_var = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
    mean, var = batch_stats(X4)
    g, be = layer.blobs[3].data.copy(), layer.blobs[4].data.copy()
    want = g[None, :, None, None] * (X4 - mean[None, :, None, None]) / np.sqrt(var + EPS)[None, :, None, None] \
        + be[None, :, None, None]
    m = X4.size / X4.shape[1]
    layer.solver_iter = 0  # iteration 0: f = 1 (overwrite, unbiased variance), for every forward in it
    layer.forward([b], [t])
    layer.forward([b], [t])
    np.testing.assert_allclose(t.data, want, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].data, mean, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, var * m / (m - 1), rtol=1e-12)
    assert layer.blobs[2].data[0] == 1  # never touched
    layer.blobs[0].data[...], layer.blobs[1].data[...] = old_mean, old_var
    layer.solver_iter = 3  # later iterations blend with f = 1 - maf = 0.1
    layer.forward([b], [t])
    np.testing.assert_allclose(t.data, want, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].data, MAF * old_mean + (1 - MAF) * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, MAF * old_var + (1 - MAF) * var * m / (m - 1), rtol=1e-12)


def test_jacinto_cudnn_without_solver_counts_its_own_forwards():
    layer, b, t = build(param("BatchNorm", JAC), X4, TRAIN)
    set_jacinto_params(layer)
    x2 = X4 * 0.5 + 1
    (m1, v1), (m2, v2) = batch_stats(X4), batch_stats(x2)
    u = (X4.size / X4.shape[1]) / (X4.size / X4.shape[1] - 1)
    layer.forward([b], [t])  # first TRAIN forward: overwrite
    np.testing.assert_allclose(layer.blobs[0].data, m1, rtol=1e-12)
    b.data[...] = x2
    layer.forward([b], [t])  # then blend
    np.testing.assert_allclose(layer.blobs[0].data, MAF * m1 + (1 - MAF) * m2, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, MAF * v1 * u + (1 - MAF) * v2 * u, rtol=1e-12)


def test_jacinto_caffe_engine_running_average():
    p = param("BatchNorm", "batch_norm_param { scale_bias: true moving_average_fraction: 0.9 engine: CAFFE }")
    layer, b, t = build(p, X4, TRAIN)
    x2 = X4 * 0.5 + 1
    m1, v1 = batch_stats(X4)
    m2, v2 = batch_stats(x2)
    for _ in range(2):  # forwards 0 and 1 copy the batch statistics (biased)
        b.data[...] = X4
        layer.forward([b], [t])
        np.testing.assert_allclose(layer.blobs[0].data, m1, rtol=1e-12)
        np.testing.assert_allclose(layer.blobs[1].data, v1, rtol=1e-12)
    b.data[...] = x2
    layer.forward([b], [t])
    np.testing.assert_allclose(layer.blobs[0].data, MAF * m1 + (1 - MAF) * m2, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, MAF * v1 + (1 - MAF) * v2, rtol=1e-12)


def test_jacinto_test_output_ignores_use_global_stats():
    p = param("BatchNorm", "batch_norm_param { scale_bias: true use_global_stats: false eps: 0.001 }")
    layer, b, t = build(p, X4, TEST)
    set_jacinto_params(layer)
    before = [blob.data.copy() for blob in layer.blobs]
    layer.forward([b], [t])
    mean, var, g, be = (layer.blobs[i].data[None, :, None, None] for i in (0, 1, 3, 4))
    np.testing.assert_allclose(t.data, g * (X4 - mean) / np.sqrt(var + EPS) + be, rtol=1e-12)
    for blob, old in zip(layer.blobs, before, strict=True):
        np.testing.assert_array_equal(blob.data, old)  # TEST never updates the statistics
    # the same flag in TRAIN still normalises with batch statistics
    layer2, b2, t2 = build(param("BatchNorm", "batch_norm_param { scale_bias: true use_global_stats: true }"),
                           X4, TRAIN)
    layer2.forward([b2], [t2])
    np.testing.assert_allclose(t2.data.mean(axis=(0, 2, 3)), 0, atol=1e-12)


def test_eps_floor():
    p = param("BatchNorm", "batch_norm_param { scale_bias: true eps: 1e-9 }")
    layer, b, t = build(p, X4, TEST)
    layer.blobs[1].data[...] = 1e-6  # tiny variance makes the eps visible
    layer.forward([b], [t])
    assert layer.eps == 1e-5
    np.testing.assert_allclose(t.data, X4 / np.sqrt(1e-6 + 1e-5), rtol=1e-12)
    bv, bb, bt = build(param("BatchNorm", "batch_norm_param { use_global_stats: true eps: 1e-9 }"), X4)
    bv.blobs[1].data[...] = 1e-6
    bv.blobs[2].data[...] = 1
    bv.forward([bb], [bt])  # BVLC has no floor
    np.testing.assert_allclose(bt.data, X4 / np.sqrt(1e-6 + float(np.float32(1e-9))), rtol=1e-12)


def test_jacinto_backward_param_diffs_accumulate_or_overwrite():
    for engine, factor in (("CUDNN", 2), ("CAFFE", 1)):
        p = param("BatchNorm", f"batch_norm_param {{ scale_bias: true engine: {engine} }}")
        layer, b, t = build(p, X4, TRAIN)
        layer.forward([b], [t])
        dy = np.random.default_rng(2).standard_normal(X4.shape)
        t.diff[...] = dy
        layer.backward([t], [True], [b])
        xhat = (t.data - layer.blobs[4].data[None, :, None, None]) / layer.blobs[3].data[None, :, None, None]
        t.diff[...] = dy
        layer.backward([t], [True], [b])
        np.testing.assert_allclose(layer.blobs[3].diff, factor * (dy * xhat).sum(axis=(0, 2, 3)), rtol=1e-10)
        np.testing.assert_allclose(layer.blobs[4].diff, factor * dy.sum(axis=(0, 2, 3)), rtol=1e-10)


# ---------------------------------------------------------------- converting blobs (§d.5)
def test_convert_bvlc_to_jacinto_matches_batchnorm_plus_scale():
    c = X4.shape[1]
    rs = np.random.default_rng(3)
    s = 7.5
    bvlc = [rs.standard_normal(c) * s, rs.uniform(0.5, 2, c) * s, np.array([s])]
    gamma, beta = rs.uniform(0.5, 1.5, c), rs.standard_normal(c)
    bl, bb, bt = build(param("BatchNorm", "batch_norm_param { eps: 0.001 }"), X4)
    for blob, a in zip(bl.blobs, bvlc, strict=True):
        blob.data[...] = a
    bl.forward([bb], [bt])
    want = bt.data * gamma[None, :, None, None] + beta[None, :, None, None]  # BVLC BatchNorm + Scale
    jp = param("BatchNorm", "batch_norm_param { scale_bias: true eps: 0.001 }")
    arrays = convert_blobs(bvlc, jp, scale=(gamma, beta))
    assert [a.shape for a in arrays] == [(c,), (c,), (1,), (c,), (c,)] and arrays[0].dtype == np.float32
    np.testing.assert_allclose(arrays[0], bvlc[0] / s, rtol=1e-6)
    jl, jb, jt = build(jp, X4)
    for blob, a in zip(jl.blobs, arrays, strict=True):
        blob.data[...] = a
    jl.forward([jb], [jt])
    np.testing.assert_allclose(jt.data, want, rtol=1e-5, atol=1e-5)
    # the classmethod-style entry point the Net uses
    assert all(np.array_equal(a, b) for a, b in zip(BatchNormLayer.convert_blobs(bvlc, jp, scale=(gamma, beta)),
                                                    arrays, strict=True))


def test_convert_zero_factor_and_defaults():
    jp = param("BatchNorm", "batch_norm_param { scale_bias: true }")
    out = convert_blobs([np.ones(3), np.ones(3), np.zeros(1)], jp)
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_array_equal(out[3], 1)
    np.testing.assert_array_equal(out[4], 0)


def test_convert_digits_order_and_reverse():
    jp = param("BatchNorm", "batch_norm_param { scale_bias: true }")
    mean, var, g, b = np.arange(4.0), np.arange(4.0) + 1, np.full(4, 2.0), np.full(4, 0.5)
    digits = [g, b, mean, var, np.zeros(1)]
    out = convert_blobs(digits, jp)
    for got, want in zip(out, [mean, var, np.zeros(1), g, b], strict=True):
        np.testing.assert_array_equal(got, want)
    three, g2, b2 = split_for_bvlc(out)
    np.testing.assert_array_equal(three[2], [1])  # s = 1 even when a 0.16 file stored 0
    np.testing.assert_array_equal(g2, g)
    np.testing.assert_array_equal(b2, b)
    with pytest.raises(NetError, match="scale_bias"):
        convert_blobs(out, param("BatchNorm"))  # γ, β would be lost
    plain = convert_blobs([mean, var, np.zeros(1), np.ones(4), np.zeros(4)], param("BatchNorm"))
    np.testing.assert_array_equal(plain[2], [1])
    np.testing.assert_array_equal(plain[0], mean)
    bv = [mean * 3, var * 3, np.array([3.0])]
    for got, want in zip(convert_blobs(bv, param("BatchNorm")), bv, strict=True):
        np.testing.assert_array_equal(got, want)  # BVLC into BVLC: unchanged
    for p3, target in ((param("BatchNorm", "batch_norm_param { engine: CAFFE }"), None),
                       (param("BatchNorm"), "jacinto")):  # BVLC sums into a jacinto 3-blob layer
        out3 = convert_blobs(bv, p3, source="bvlc", target=target)
        np.testing.assert_allclose(out3[0], mean, rtol=1e-6)
        np.testing.assert_allclose(out3[1], var, rtol=1e-6)
        np.testing.assert_array_equal(out3[2], [1])
    raw = convert_blobs([mean, var, np.zeros(1)], param("BatchNorm"), source="jacinto")
    np.testing.assert_array_equal(raw[2], [1])
    with pytest.raises(NetError):
        convert_blobs([mean, var], jp)
    with pytest.raises(NetError):
        convert_blobs([mean, var[:2], np.ones(1)], jp)


# ---------------------------------------------------------------- option errors
def test_lrn_rejects_even_size():
    with pytest.raises(NetError, match="odd"):
        build(param("LRN", "lrn_param { local_size: 4 }"), np.zeros((1, 5, 2, 2)))


def test_lrn_needs_4d_and_softmax_axis_range():
    with pytest.raises(NetError):
        build(param("LRN"), np.zeros((2, 5)))
    with pytest.raises(NetError, match="axis"):
        build(param("Softmax", "softmax_param { axis: 4 }"), np.zeros((2, 3, 4, 5)))
