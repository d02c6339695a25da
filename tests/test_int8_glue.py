"""The compiled non-convolution steps of the int8 engine (caffelite/ops/int8_glue.py, caffelite/_native/ci8glue.c):
each kernel against the NumPy/float computation it replaces, bit for bit on every instruction set this CPU runs,
and whole integer forwards (the jsegnet21v2 fixture and random quantized nets) against the engine's NumPy steps:
every integer identical, the teacher-forced per-layer check unchanged."""

import os

import numpy as np
import pytest

import caffelite.log  # noqa: F401  (the package's lazy names must not shadow the log module)
from caffelite.layer import TEST
from caffelite.ops import int8_glue as glue
from caffelite.ops import int8_lib
from caffelite.ops import native
from caffelite.ops.conv import deconv_forward
from caffelite.ops.im2col import ConvGeometry

from conftest import FIXTURES
from helpers import load_npz

pytestmark = pytest.mark.skipif(not glue.available(), reason="int8 glue kernels not built")


@pytest.fixture(params=["isa", "threads"])
def each_setting(request):
    """Yields once per instruction set (one thread), then with two threads on the widest: results must not
    depend on either."""
    lib = glue._LIB
    old = lib.isa, lib.threads
    try:
        settings = [(isa, 1) for isa in lib.supported] if request.param == "isa" else [(lib.supported[-1], 2)]
        yield settings
    finally:
        lib.isa, lib.threads = old


def _apply(setting):
    glue._LIB.isa, glue._LIB.threads = setting


def _quantize(x, st, off, lo, hi, ties):
    """The engine's quantizer, its NumPy branch (taken for a float64 input; float32 -> float64 is exact)."""
    return int8_lib.quantize_float(np.asarray(x, np.float64), st, off, lo, hi, ties)


def _dequantize(q, inv, off):
    return ((q.astype(np.float64) - off) * inv).astype(np.float32)


def _float_deconv(q, tab, lo, w, g, out_hw):
    """The float-exact step: dequantized input through the float deconvolution on NumPy."""
    x = tab[q.astype(np.intp) - lo]
    out = np.empty(q.shape[:2] + out_hw, np.float32)
    with native.enabled(False):
        deconv_forward(x, w.reshape(w.shape[0], 1, g.kh, g.kw), None, g, w.shape[0], out)
    return out


def _argmax_ref(q):
    """ArgMax over axis 1, ties to the larger index (caffelite/layers/reduction.py)."""
    c = q.shape[1]
    return ((c - 1) - np.argmax(q[:, ::-1], axis=1))[:, None].astype(np.float32)


# (C, H, W, k, stride, pad): jsegnet's bilinear x2, odd sizes, output widths not a multiple of the stride, a
# kernel smaller than the stride (phases without taps), a 5x5 with stride 3
GEOMS = [(8, 9, 21, 4, 2, 1), (5, 7, 13, 3, 2, 1), (3, 6, 11, 2, 2, 0), (4, 5, 9, 5, 3, 2), (2, 4, 7, 1, 2, 0),
         (6, 5, 8, 3, 1, 1)]


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("ties", ["even", "away"])
def test_deconv_float_arithmetic_equals_float_step(geom, ties, each_setting):
    """Float32 arithmetic (non-power-of-two scales, full-mantissa weights): the integers and the fused ArgMax
    equal the float deconvolution + quantizer exactly."""
    c, h, w, k, s, p = geom
    rng = np.random.default_rng(k * 10 + s)
    g = ConvGeometry(k, k, s, s, p, p)
    ho, wo = g.deconv_out_shape(h, w)
    inv = float(np.float32(1) / np.float32(11.209915))
    tab = _dequantize(np.arange(0, 256), inv, 0.0)
    wt = (rng.standard_normal((c, k, k)) * 0.4).astype(np.float32)
    st = float(np.float32(12.296057))
    q = rng.integers(0, 256, (2, c, h, w)).astype(np.int16)
    q[0, 0, 0, :4] = 255
    ref = _quantize(_float_deconv(q, tab, 0, wt, g, (ho, wo)), st, 0.0, -128, 127, ties)
    assert glue.integer_form(tab, wt) is None
    spec = glue.DeconvSpec("float", tab, 0, wt, 1.0, k, k, s, s, p, p, st, 0.0, -128.0, 127.0, ties == "away")
    mult = glue.DeconvSpec("float", tab, 0, wt, 1.0, k, k, s, s, p, p, st, 0.0, -128.0, 127.0, ties == "away",
                           inv=inv)
    assert spec.inv == 0.0 and mult.inv == inv  # the conversion by a multiplication, checked on the table
    for setting in each_setting:
        _apply(setting)
        for sp in (spec, mult):
            got, am = glue.deconv(q, sp, (2, c, ho, wo), want_ints=True, want_argmax=True)
            np.testing.assert_array_equal(got, ref, err_msg=str(setting))
            np.testing.assert_array_equal(am, _argmax_ref(ref), err_msg=str(setting))
            only, am2 = glue.deconv(q, sp, (2, c, ho, wo), want_ints=False, want_argmax=True)
            assert only is None
            np.testing.assert_array_equal(am2, am)


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("ties", ["even", "away"])
def test_deconv_integer_sums_equal_float_step(geom, ties, each_setting):
    """Power-of-two grids and weights on a 2**-e grid: integer_form proves int32 sums exact, and they give the
    float step's integers (scales chosen so that many values land on .5: ties)."""
    c, h, w, k, s, p = geom
    rng = np.random.default_rng(k + s)
    g = ConvGeometry(k, k, s, s, p, p)
    ho, wo = g.deconv_out_shape(h, w)
    tab = _dequantize(np.arange(-128, 128), 2.0 ** -3, 0.0)
    wt = (rng.integers(-2048, 2048, (c, k, k)) * 2.0 ** -11).astype(np.float32)
    form = glue.integer_form(tab, wt)
    assert form is not None and form[2] == 2.0 ** -14
    st = 4.0
    q = rng.integers(-128, 128, (1, c, h, w)).astype(np.int16)
    ref = _quantize(_float_deconv(q, tab, -128, wt, g, (ho, wo)), st, 0.0, -128, 127, ties)
    spec = glue.DeconvSpec("int", form[0], -128, form[1], form[2], k, k, s, s, p, p, st, 0.0, -128.0, 127.0,
                           ties == "away")
    for setting in each_setting:
        _apply(setting)
        got, am = glue.deconv(q, spec, (1, c, ho, wo), want_ints=True, want_argmax=True)
        np.testing.assert_array_equal(got, ref, err_msg=str(setting))
        np.testing.assert_array_equal(am, _argmax_ref(ref), err_msg=str(setting))


def test_integer_form_refuses_inexact_sums():
    """No integer form where a value is not on a power-of-two grid or the sums could reach 2**24 units."""
    tab = _dequantize(np.arange(0, 256), 2.0 ** -2, 0.0)
    assert glue.integer_form(tab, np.full((1, 2, 2), 0.1, np.float32)) is None
    big = np.full((1, 5, 5), 2.0 ** -4 * 4095, np.float32)  # 25 taps: 255 * 25 * 4095 units >= 2**24
    assert glue.integer_form(_dequantize(np.arange(0, 256), 1.0, 0.0), big) is None
    assert glue.integer_form(_dequantize(np.arange(0, 256), 1.0, 0.0), big[:, :4, :4]) is not None
    assert glue.integer_form(tab, np.full((1, 2, 2), 0.5625, np.float32)) is not None


def test_deconv_spec_multiplies_only_where_the_table_is_a_product():
    """The inv hint is dropped where the table is not float32(q) * inv: a grid with an offset, another step."""
    inv = float(np.float32(1) / np.float32(3.7))
    tab = _dequantize(np.arange(0, 256), inv, 0.0)
    args = (0, np.ones((1, 2, 2), np.float32), 1.0, 2, 2, 2, 2, 0, 0, 1.0, 0.0, 0.0, 255.0, False)
    assert glue.DeconvSpec("float", tab, *args, inv=inv).inv == inv
    assert glue.DeconvSpec("float", _dequantize(np.arange(0, 256), inv, 0.3), *args, inv=inv).inv == 0.0
    assert glue.DeconvSpec("float", tab, *args, inv=float(np.nextafter(np.float32(inv), 1))).inv == 0.0


def test_deconv_rejects_integers_outside_its_table():
    tab = _dequantize(np.arange(0, 256), 0.5, 0.0)
    wt = np.ones((1, 4, 4), np.float32)
    spec = glue.DeconvSpec("float", tab, 0, wt, 1.0, 4, 4, 2, 2, 1, 1, 1.0, 0.0, 0.0, 255.0, False)
    q = np.zeros((1, 1, 4, 4), np.int16)
    q[0, 0, 2, 1] = 256
    with pytest.raises(RuntimeError, match="int8 glue"):
        glue.deconv(q, spec, (1, 1, 8, 8))


@pytest.mark.parametrize("kernel,stride,pad", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)),
                                               ((3, 2), (1, 2), (1, 0)), ((1, 1), (1, 1), (0, 0)),
                                               ((2, 2), (2, 2), (1, 1))])
def test_pool_max_equals_float_pooling(kernel, stride, pad, each_setting):
    """MAX pooling of the integers (Caffe's windows, ceil output size) with and without a table equals the
    float pooling of the same integers followed by the table."""
    from caffelite.layers.pooling import P
    rng = np.random.default_rng(sum(kernel) + pad[0])
    q = rng.integers(-20, 60, (2, 3, 11, 14)).astype(np.int16)
    ho = P.pooled_size(11, kernel[0], stride[0], pad[0], True)
    wo = P.pooled_size(14, kernel[1], stride[1], pad[1], True)
    ref = np.empty((2, 3, ho, wo), np.float32)
    with native.enabled(False):
        P.max_pool_forward(q.astype(np.float32), kernel, stride, pad, ho, wo, ref)
    ref = ref.astype(np.int16)
    lut = rng.integers(-128, 128, 80).astype(np.int16)
    for setting in each_setting:
        _apply(setting)
        np.testing.assert_array_equal(glue.pool_max(q, ref.shape, kernel, stride, pad), ref)
        np.testing.assert_array_equal(glue.pool_max(q, ref.shape, kernel, stride, pad, lut, -20), lut[ref + 20])


def test_argmax_ties_go_to_the_larger_index(each_setting):
    rng = np.random.default_rng(5)
    q = rng.integers(0, 3, (2, 7, 5, 4099)).astype(np.int16)  # many ties, a partial last block
    out = np.empty((2, 1, 5, 4099), np.float32)
    for setting in each_setting:
        _apply(setting)
        out[...] = -1
        glue.argmax(q, out)
        np.testing.assert_array_equal(out, _argmax_ref(q))


def test_lut2_and_bounds(each_setting):
    rng = np.random.default_rng(6)
    lut = rng.integers(-128, 128, (256, 200)).astype(np.int16)
    a = rng.integers(0, 256, (1, 4, 33, 65)).astype(np.int16)
    b = rng.integers(-100, 100, (1, 4, 33, 65)).astype(np.int16)
    for setting in each_setting:
        _apply(setting)
        np.testing.assert_array_equal(glue.lut2(a, b, lut, 0, -100), lut[a, b + 100])
    b[0, 1, 2, 3] = 100
    with pytest.raises(RuntimeError, match="int8 glue"):
        glue.lut2(a, b, lut, 0, -100)


@pytest.mark.parametrize("ties", ["even", "away"])
def test_bias_quantize_equals_float_bias_and_quantizer(ties, each_setting):
    """float32 x + b[channel], then the quantizer: values on .5 boundaries included."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (2, 3, 17, 2100)).astype(np.float32)
    x[0, 0, 0, :8] = [0.5, 1.5, -0.5, 127.5, 128.5, 300, -300, 200.25]
    b = np.array([-128, -127.5, -3.25], np.float32)
    st, off = 0.7937702536582947, 0.0
    ref = _quantize(x + b.reshape(1, 3, 1, 1), st, off, -128, 127, ties)
    ref2 = _quantize(x + b.reshape(1, 3, 1, 1), 1.0, 0.0, -128, 127, ties)
    for setting in each_setting:
        _apply(setting)
        got = glue.bias_quantize(x, b, (2, 3, 17 * 2100), st, off, -128, 127, ties == "away")
        np.testing.assert_array_equal(got, ref)
        got2 = glue.bias_quantize(x, b, (2, 3, 17 * 2100), 1.0, 0.0, -128, 127, ties == "away")
        np.testing.assert_array_equal(got2, ref2)


@pytest.mark.parametrize("ties", ["even", "away"])
@pytest.mark.parametrize("st,off", [(1.0, 0.0), (0.75, 0.5), (float(np.float32(0.1)), 0.0), (16.0, -3.0),
                                    (float(np.float32(0.7)), float(np.float32(0.3)))])
def test_float32_quantizer_equals_double_quantizer_near_boundaries(st, off, ties, each_setting):
    """The kernels' float32 quantizer (fast_threshold) on values at, and a few float32 ulps around, every
    rounding boundary, beyond the clamp bounds and large: the double quantizer's integers, fast path on or off."""
    assert glue.fast_threshold(st, off, -128, 127) > 0.4
    assert glue.fast_threshold(0.1, 0.0, -128, 127) == 0.0  # not a float32 value: the double quantizer
    k = np.arange(-140, 141, dtype=np.float64) + 0.5
    y = (k - off) / st
    up = down = np.float32(y)
    vals = [up]
    for _ in range(3):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        vals += [up, down]
    x = np.concatenate(vals + [np.float32([1e30, -1e30, 3e7, -3e7, 0.0, -0.0])]).astype(np.float32)
    x = np.ascontiguousarray(np.tile(x, 3)[None, None])  # (1, 1, n): one channel, bias 0
    ref = _quantize(x, st, off, -128, 127, ties)
    old = glue.FAST_QUANT
    try:
        for fast in (True, False):
            glue.FAST_QUANT = fast
            for setting in each_setting:
                _apply(setting)
                got = glue.bias_quantize(x, np.zeros(1, np.float32), (1, 1, x.size), st, off, -128, 127,
                                         ties == "away")
                np.testing.assert_array_equal(got, ref, err_msg=f"fast={fast} {setting}")
    finally:
        glue.FAST_QUANT = old


# -- whole integer forwards -----------------------------------------------------------------------------------
def _engine_pair(net, hook, x, fuse=True):
    """(compiled engine, NumPy-glue engine, simulation integers), each forward on the same hook state."""
    from caffelite.jacinto import int8_engine as ie
    from caffelite.jacinto.int8_glue_steps import Deferred
    state = hook.get_state()
    net.forward(data=x)
    sint = ie.simulation_ints(net)
    res = []
    for compiled in (True, False):
        eng = ie.Int8Net(net, hook, compiled=compiled, fuse_argmax=fuse)
        hook.set_state(state)
        out = {k: v.copy() for k, v in eng.forward(data=x).items()}
        eng.deferred = [k for k, v in eng.ints._d.items() if isinstance(v, Deferred)]
        ints = dict(eng.ints)  # computes the deferred integers
        hook.set_state(state)
        eng.forward(teacher=sint, data=x)
        res.append((eng, out, ints, dict(eng.mismatch)))
    hook.set_state(state)
    return res


def _check_same(res, fused_blobs=()):
    """Same outputs, integers and teacher check; ``fused_blobs``: the integers the compiled engine did not
    store (a Deconvolution fused with its ArgMax) but computes when read."""
    (e1, out1, ints1, mm1), (e2, out2, ints2, mm2) = res
    assert e1.deferred == list(fused_blobs) and e2.deferred == []
    assert out1.keys() == out2.keys()
    for k in out1:
        np.testing.assert_array_equal(out1[k], out2[k], err_msg=k)
    assert ints1.keys() == ints2.keys()
    for k in ints1:
        np.testing.assert_array_equal(ints1[k], ints2[k], err_msg=k)
    assert mm1 == mm2


def test_jsegnet_fixture_integers_identical_to_numpy_steps():
    """The jsegnet21v2 fixture (real weights) at 64x128: compiled pooling, table, ArgMax, Bias and
    Deconvolution steps give every integer of the NumPy steps, fused or not, and the same teacher check."""
    from caffelite import io, jacinto
    from caffelite.net import Net
    d = os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy")
    p = io.read_net(os.path.join(d, "deploy.prototxt"))
    p.layer[0].input_param.shape[0].dim[:] = [1, 3, 64, 128]
    p.quantize = True
    net = Net(p, TEST)
    net.copy_from(os.path.join(d, "weights.caffemodel.xz"))
    hook = jacinto.attach_quantization(net)
    x = np.ascontiguousarray(load_npz(os.path.join(d, "input.npz"))["data"][:, :, :64, :128])
    hook.freeze_ranges(after=2)
    for k in range(3):
        net.forward(data=np.roll(x, 7 * k, axis=3))
    res = _engine_pair(net, hook, x)
    used = res[0][0].engine_used
    assert used["out5a_up2"] == "float-exact" and used["argMaxOut"] == "int8-lut"
    kinds = {st[0] for st in res[0][0]._steps}
    assert {"deconv", "bias", "pool", "eltwise"} <= kinds
    assert not {"deconv", "bias"} & {st[0] for st in res[1][0]._steps}
    assert any(st[0] == "deconv" and st[2] > st[1] for st in res[0][0]._steps)  # fused with argMaxOut
    _check_same(res, fused_blobs=("out_deconv_final_up8",))
    _check_same(_engine_pair(net, hook, x, fuse=False))


NET = """
name: "glue"
quantize: true
net_quantization_param {{ power2_scale_weights: {p2} power2_scale_activations: {p2} apply_offset_weights: {offw} }}
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 24 dim: 40 }} }} }}
layer {{ name: "bias" type: "Bias" bottom: "data" top: "b" bias_param {{ filler {{ type: "constant" value: -128 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "b" top: "c1"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.05 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "c1" top: "c1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "c1" top: "p1" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "p1" top: "c2"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.2 }} }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "c2" top: "c2" }}
layer {{ name: "up1" type: "Deconvolution" bottom: "c2" top: "u1"
  convolution_param {{ num_output: 8 group: 8 kernel_size: 4 stride: 2 pad: 1 bias_term: false
                       weight_filler {{ type: "{filler}" std: 0.3 }} }} }}
layer {{ name: "sum" type: "Eltwise" bottom: "u1" bottom: "c1" top: "s" }}
layer {{ name: "pool2" type: "Pooling" bottom: "s" top: "p2"
  pooling_param {{ pool: MAX kernel_size: 3 stride: 1 pad: 1 }} }}
layer {{ name: "conv3" type: "Convolution" bottom: "p2" top: "c3"
  convolution_param {{ num_output: 5 kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "up2" type: "Deconvolution" bottom: "c3" top: "u2"
  convolution_param {{ num_output: 5 group: 5 kernel_size: 3 stride: 2 pad: 1 bias_term: false
                       weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "am" type: "ArgMax" bottom: "u2" top: "am" argmax_param {{ axis: 1 }} }}
"""


@pytest.mark.parametrize("p2,offw,filler", [("false", "true", "bilinear"), ("true", "false", "bilinear"),
                                            ("true", "false", "gaussian"), ("true", "true", "gaussian")])
def test_random_quantized_nets_identical_to_numpy_steps(p2, offw, filler):
    """Random quantized nets (float and power-of-two scales, weights with and without offset): every integer
    of the compiled steps equals the NumPy steps'; where integer_form applies the deconvolution runs on int32
    sums ("int8"), and every non-convolution blob matches the float simulation exactly under the teacher."""
    from google.protobuf import text_format

    import caffelite
    from caffelite import backend, jacinto
    from caffelite.proto import caffe_pb2
    backend.set_random_seed(11)
    net = caffelite.Net(text_format.Parse(NET.format(p2=p2, offw=offw, filler=filler), caffe_pb2.NetParameter()),
                        TEST)
    hook = jacinto.attach_quantization(net)
    rng = np.random.default_rng(3)
    hook.freeze_ranges(after=2)
    for _ in range(3):
        net.forward(data=rng.uniform(0, 255, (1, 3, 24, 40)).astype(np.float32))
    x = rng.uniform(0, 255, (1, 3, 24, 40)).astype(np.float32)
    res = _engine_pair(net, hook, x)
    _check_same(res, fused_blobs=("u2",))
    _check_same(_engine_pair(net, hook, x, fuse=False))
    eng, mm = res[0][0], res[0][3]
    for blob in ("b", "p1", "u1", "s", "p2", "u2"):
        assert mm[blob][0] == 0, (blob, mm[blob])
    modes = {st[3].mode for st in eng._steps if st[0] == "deconv"}
    if p2 == "true" and offw == "false":
        assert modes == {"int"} and eng.engine_used["up1"] == eng.engine_used["up2"] == "int8"
    else:
        assert "float" in modes
