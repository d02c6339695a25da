"""The integer engine for quantized nets (caffelite/jacinto/int8_engine.py) against caffe-jacinto's float
simulation (the 0.17 quantization hook) on the jsegnet21v2 deploy net of the fixtures (real weights,
BatchNorm + Scale), at 64x128."""

import os
import re

import numpy as np
import pytest

import caffelite.log  # noqa: F401  (the package's lazy names must not shadow the log module)
from caffelite.layer import TEST

from conftest import FIXTURES, REFERENCE
from helpers import load_npz

JSEG = os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy")
SIZE = (64, 128)


def _net(quantize=True, weight_bits=None):
    from caffelite import io, jacinto
    from caffelite.net import Net
    p = io.read_net(os.path.join(JSEG, "deploy.prototxt"))
    p.layer[0].input_param.shape[0].dim[:] = [1, 3, *SIZE]
    p.quantize = quantize
    if weight_bits:
        p.net_quantization_param.bitwidth_weights = weight_bits
    net = Net(p, TEST)
    net.copy_from(os.path.join(JSEG, "weights.caffemodel.xz"))
    return net, jacinto.attach_quantization(net)


def _input(seed):
    x = load_npz(os.path.join(JSEG, "input.npz"))["data"]
    return np.ascontiguousarray(np.roll(x, 7 * seed, axis=3)[:, :, :SIZE[0], :SIZE[1]])


@pytest.fixture(scope="module")
def calibrated():
    """A net calibrated on two forwards (ranges frozen), then one simulated forward with its integers."""
    from caffelite.jacinto import int8_engine as ie
    net, hook = _net()
    hook.freeze_ranges(after=2)
    for k in range(3):
        net.forward(data=_input(k))
    sim = {k: v.copy() for k, v in net.forward(data=_input(3)).items()}
    return net, hook, sim, ie.simulation_ints(net)


def test_teacher_forced_layers_equal_the_simulation(calibrated):
    """Each step fed the simulation's integers computes the simulation's integers: exactly for table, select
    and float-exact layers; for integer convolutions up to the elements where the simulation's float32 steps
    after its exact sum (rounding the sum, adding the bias, the BatchNorm's operations) put a value across a
    grid boundary that the engine's one float64 evaluation of that chain does not (a fraction far below 1e-3;
    printed)."""
    from caffelite.jacinto import int8_engine as ie
    net, hook, _, sint = calibrated
    eng = ie.Int8Net(net, hook)
    eng.forward(teacher=sint, data=_input(3))
    used = eng.engine_used
    assert used["conv1a"] == used["conv1a/bn"] == used["conv1a/relu"] == "int8"
    assert used["pool1"] == "int8-lut" and used["out3_out5_combined"] == "int8-lut"
    assert used["argMaxOut"] == "int8-lut" and used["out5a_up2"] == "float-exact"
    conv_blobs = {net._top_ids[i][0] for i, ly in enumerate(net.layers) if ly.type == "Convolution"}
    assert len(eng.mismatch) == len(sint) == 27
    bad = total = 0
    for blob, (m, n) in eng.mismatch.items():
        if blob in conv_blobs:
            bad, total = bad + m, total + n
        else:
            assert m == 0, blob
    frac = bad / total
    print(f"\nint8 vs float simulation, integer convolutions: {bad} of {total} elements differ ({frac:.2e})")
    assert frac < 1e-3
    # differences are one step of the output grid
    for blob in conv_blobs:
        assert np.abs(eng.ints[blob].astype(int) - sint[blob]).max() <= 1


def test_simulation_does_not_depend_on_the_convolution_kernel(calibrated):
    """Quantized convolutions sum exactly: the compiled kernels and the NumPy/BLAS path (another float32 order,
    which rounds 11 of these 17 convolutions' raw sums differently when they sum in float32) give the same raw
    sums and the same simulation, every blob bit for bit."""
    from caffelite.ops import native
    net, hook, _, _ = calibrated
    assert all(ly.exact_sums for ly in net.layers if ly.type == "Convolution")
    raw = {}

    def record(n, i, layer, bottom, top):  # runs before the quantizer: the convolution's own output
        if layer.type == "Convolution":
            raw[layer.name] = np.array(top[0].data)

    state = hook.get_state()
    net.hooks.after_forward.insert(0, record)
    try:
        net.forward(data=_input(5))
        first, blobs = dict(raw), {k: np.array(v.data) for k, v in net.blobs.items()}
        hook.set_state(state)
        with native.enabled(False):
            net.forward(data=_input(5))
    finally:
        net.hooks.after_forward.remove(record)
    assert len(first) == 17
    for k, v in first.items():
        np.testing.assert_array_equal(raw[k], v, err_msg=k)
    for k, v in blobs.items():
        np.testing.assert_array_equal(net.blobs[k].data, v, err_msg=k)


def test_free_running_argmax_agrees(calibrated):
    """Whole forward in integers: the labels agree with the simulation's (small differences in one layer
    spread through the dilated context convolutions; at 64x128 about 1% of the pixels change)."""
    from caffelite.jacinto import int8_engine as ie
    net, hook, sim, sint = calibrated
    eng = ie.Int8Net(net, hook)
    out = eng.forward(data=_input(3))
    agree = float(np.mean(out["argMaxOut"] == sim["argMaxOut"]))
    print(f"\nint8 vs float simulation: ArgMax agreement {agree:.4f}")
    assert agree > 0.97
    assert np.array_equal(eng.ints["res2a_branch2b"], sint["res2a_branch2b"]) or \
        np.mean(eng.ints["res2a_branch2b"] != sint["res2a_branch2b"]) < 1e-3


def test_native_kernel_equals_numpy_reference_engine(calibrated):
    from caffelite.jacinto import int8_engine as ie
    from caffelite.ops import int8 as i8op
    if not i8op.available():
        pytest.skip("integer kernel not built")
    net, hook, _, _ = calibrated
    state = hook.get_state()  # the same forward twice (some scales alternate from one forward to the next)
    a = ie.Int8Net(net, hook, native=True)
    a.forward(data=_input(4))
    hook.set_state(state)
    b = ie.Int8Net(net, hook, native=False)
    b.forward(data=_input(4))
    assert a.ints.keys() == b.ints.keys()
    for k in a.ints:
        np.testing.assert_array_equal(a.ints[k], b.ints[k], err_msg=k)


def test_clear_errors():
    from caffelite.jacinto import int8_engine as ie
    net, hook = _net(quantize=False)
    with pytest.raises(ie.Int8Error, match="quantize: true"):
        ie.Int8Net(net)
    net, hook = _net()
    with pytest.raises(ie.Int8Error, match="no ranges yet.*calibration.*--quant-ranges"):
        ie.Int8Net(net, hook)
    net.forward(data=_input(0))
    with pytest.raises(ie.Int8Error, match="freeze"):
        ie.Int8Net(net, hook)
    from caffelite import jacinto
    h16 = jacinto.attach_quantization(net, version="0.16")
    with pytest.raises(ie.Int8Error, match="0.17"):
        ie.Int8Net(net, h16)


def test_loaded_ranges_quantize_weights_as_jacinto(tmp_path):
    """Ranges saved by a calibrated net and loaded into a fresh one: the integer forward switches the flags on
    and quantizes the weights in place (as jacinto's forward quantization_start does), onto the grid of the
    calibrated net's weights, and its labels agree with the calibrated net's integer forward."""
    from caffelite.jacinto import int8_engine as ie
    net, hook = _net()
    hook.freeze_ranges(after=2)
    for k in range(3):
        net.forward(data=_input(k))
    path = tmp_path / "ranges.json"
    hook.save_ranges(path)
    w_sim = net.params["res3a_branch2a"][0].data.copy()
    fresh, fh = _net()
    w_float = fresh.params["res3a_branch2a"][0].data.copy()
    fh.load_ranges(path)
    eng = ie.Int8Net(fresh, fh)
    out = eng.forward(data=_input(5))["argMaxOut"].copy()
    w = fresh.params["res3a_branch2a"][0].data
    assert not np.array_equal(w, w_float)
    np.testing.assert_allclose(w, w_sim, rtol=0, atol=1e-6)
    ref = ie.Int8Net(net, hook).forward(data=_input(5))["argMaxOut"]
    assert np.mean(out == ref) > 0.97


def test_jacinto_batchnorm_form_teacher_forced():
    """The pipeline's deploy net (jacinto BatchNorm with scale_bias, 5 blobs; ctx_final -> ReLU without BN) with
    random weights and statistics: integer steps equal the simulation as above."""
    from caffelite import io, jacinto
    from caffelite.jacinto import int8_engine as ie
    from caffelite.net import Net
    p = io.read_net(os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", "test", "deploy.prototxt"))
    p.layer[0].input_param.shape[0].dim[:] = [1, 3, 48, 96] if len(p.layer[0].input_param.shape) else []
    p.quantize = True
    net = Net(p, TEST)
    net.blobs[net.inputs[0]].reshape(1, 3, 48, 96)
    net.reshape()
    rs = np.random.default_rng(0)
    for ly in net.layers:
        if ly.type == "Convolution":
            w = ly.blobs[0].data
            w[...] = rs.standard_normal(w.shape) * np.sqrt(2.0 / np.prod(w.shape[1:]))
            if len(ly.blobs) > 1:
                ly.blobs[1].data[...] = rs.normal(scale=0.1, size=ly.blobs[1].shape)
        elif ly.type == "BatchNorm":
            b = ly.blobs
            assert len(b) == 5
            b[0].data[...] = rs.normal(scale=0.2, size=b[0].shape)
            b[1].data[...] = rs.uniform(0.5, 2.0, size=b[1].shape)
            b[3].data[...] = rs.uniform(0.5, 1.5, size=b[3].shape)
            b[4].data[...] = rs.normal(scale=0.2, size=b[4].shape)
    hook = jacinto.attach_quantization(net)
    hook.freeze_ranges(after=2)
    x = rs.uniform(0, 255, (1, 3, 48, 96)).astype(np.float32)
    for _ in range(3):
        net.forward(data=x)
    net.forward(data=x)
    sint = ie.simulation_ints(net)
    eng = ie.Int8Net(net, hook)
    eng.forward(teacher=sint, data=x)
    assert eng.engine_used["ctx_final/relu"] == "int8" and eng.engine_used["conv1a/bn"] == "int8"
    conv = {net._top_ids[i][0] for i, ly in enumerate(net.layers) if ly.type == "Convolution"}
    bad = sum(m for b, (m, n) in eng.mismatch.items() if b in conv)
    total = sum(n for b, (m, n) in eng.mismatch.items() if b in conv)
    assert all(m == 0 for b, (m, n) in eng.mismatch.items() if b not in conv)
    print(f"\njacinto BN form: {bad} of {total} conv elements differ from the simulation ({bad / total:.2e})")
    assert bad / total < 1e-3 and len(eng.mismatch) == len(sint)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    """`caffelite time --engine int8`: a net without quantize, a quantized net without ranges, ranges of another
    net: one line saying what to do, exit status 2."""
    import json

    from caffelite import cli
    plain = os.path.join(JSEG, "deploy.prototxt")
    quant = tmp_path / "q.prototxt"
    quant.write_text("quantize: true\n" + open(plain).read())
    cases = [([plain], "quantize: true"), ([str(quant)], "no ranges yet")]
    net, hook = _net()
    hook.freeze_ranges(after=1)
    net.forward(data=_input(0))
    ranges = tmp_path / "ranges.json"
    hook.save_ranges(ranges)
    other = tmp_path / "other.json"
    data = json.loads(ranges.read_text())
    data["ranges"] = {("x_" + k): v for k, v in data["ranges"].items()}  # another net's layer names
    other.write_text(json.dumps(data))
    cases.append(([str(quant), "--quant-ranges", "load", str(other)], "no quantization range"))
    for extra, msg in cases:
        rc = cli.main(["time", "--model", extra[0], "--engine", "int8", "--iterations", "1", *extra[1:]])
        err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]  # the log goes to stderr too
        assert rc == 2 and len(err) == 1 and err[0].startswith("caffelite time: error:") and msg in err[0], err
    rc = cli.main(["time", "--model", str(quant), "--engine", "int8", "--iterations", "1", "--quant-ranges", "load",
                   str(ranges)])
    assert rc == 0
    # convolutions report the zeros of the integer weights they run (the float blob has none once quantized)
    log = capsys.readouterr().err
    assert re.search(r"conv1a\tengine: int8[a-z-]* \(zero integer weights \d\.\d{3}\)", log), log[-2000:]


def test_8bit_weights_run_u8s8_kernel_teacher_forced():
    """With bitwidth_weights 8 the convolutions on unsigned 8-bit inputs take the u8 x s8 kernel (vpdpbusd
    where the CPU has VNNI); same check against the simulation."""
    from caffelite.jacinto import int8_engine as ie
    from caffelite.ops import int8 as i8op
    net, hook = _net(weight_bits=8)
    hook.freeze_ranges(after=2)
    for k in range(4):
        net.forward(data=_input(k))
    sint = ie.simulation_ints(net)
    eng = ie.Int8Net(net, hook, sparse=False)
    eng.forward(teacher=sint, data=_input(3))
    convs = {net.layers[st[1]].param.name: st[3] for st in eng._steps if st[0] == "conv"}
    assert len(convs) == 17
    if "vnni" in i8op.supported_isas():  # (outputs narrower than a 16-lane vector run the AVX2 pairs kernel)
        wide = {n for n in convs if net.blobs[n].shape[3] >= 16}
        assert not convs["conv1a"].quads and len(wide) >= 8
        assert all(pc.quads for n, pc in convs.items() if n != "conv1a" and n in wide)
    conv = {net._top_ids[i][0] for i, ly in enumerate(net.layers) if ly.type == "Convolution"}
    bad = sum(m for b, (m, n) in eng.mismatch.items() if b in conv)
    total = sum(n for b, (m, n) in eng.mismatch.items() if b in conv)
    assert all(m == 0 for b, (m, n) in eng.mismatch.items() if b not in conv)
    assert bad / total < 1e-3


def test_8bit_weights_sparse_kernel_keeps_pruned_zeros():
    """8-bit weights on unsigned inputs: the dense u8 x s8 kernel needs them centred into int8 (there the pruned
    zeros move), the sparse kernel keeps the zero point a float zero quantizes to, so pruned weights stay zero
    and it has work to skip. Dense, sparse and auto give the same integers."""
    from caffelite.jacinto import int8_engine as ie
    from caffelite.ops import int8 as i8op
    if not i8op.available():
        pytest.skip("integer kernels not built")
    net, hook = _net(weight_bits=8)
    for ly in net.layers:
        if ly.type == "Convolution":
            w = ly.blobs[0].data
            w[np.abs(w) < np.quantile(np.abs(w), 0.8)] = 0
    net.repack()
    hook.freeze_ranges(after=2)
    for k in range(4):
        net.forward(data=_input(k))
    state = hook.get_state()
    ints, plans = [], []
    for sparse in (False, True, None):
        hook.set_state(state)
        eng = ie.Int8Net(net, hook, sparse=sparse)
        for _ in range(14 if sparse is None else 1):  # auto: until every layer has chosen
            hook.set_state(state)
            eng.forward(data=_input(5))
        ints.append(dict(eng.ints))
        plans.append({net.layers[st[1]].param.name: st[3] for st in eng._steps if st[0] == "conv"})
    for other in ints[1:]:
        assert other.keys() == ints[0].keys()
        assert all(np.array_equal(other[k], ints[0][k]) for k in ints[0])
    # layers whose dense u8 x s8 kernel needs another zero point than the one keeping zeros
    moved = [n for n, pc in plans[0].items() if not np.array_equal(pc.w, plans[1][n].w)]
    if "vnni" in i8op.supported_isas():
        assert len(moved) >= 3
    for n in moved:
        assert np.mean(plans[0][n].w == 0) < 0.5, n  # the zeros moved with the centring
        assert np.mean(plans[1][n].w == 0) >= 0.75  # the sparse kernel's weights keep them
        auto = plans[2][n]
        assert isinstance(auto, i8op.AutoConv) and np.mean(auto.sparse_conv.w == 0) >= 0.75


def test_observer_hooks_see_every_layer_once(calibrated, caplog):
    """Per-layer hooks marked ``observer`` (the timers of ``caffelite time``) are called around the int8 engine's
    steps: every layer once per forward, in net order, before then after; a fused step's layers in a row."""
    from caffelite.jacinto import int8_engine as ie
    net, hook, _, _ = calibrated
    calls = []

    def before(_net, i, layer, *_):
        calls.append(("b", i))

    def after(_net, i, layer, *_):
        calls.append(("a", i))

    def rewrite(_net, i, layer, *_):  # not an observer: integer steps do not apply it
        calls.append(("x", i))

    before.observer = after.observer = True
    state = hook.get_state()
    eng = ie.Int8Net(net, hook)
    for ev, fn in (("before_forward", before), ("after_forward", after), ("before_forward", rewrite)):
        net.add_hook(ev, fn)
    try:
        eng.forward(data=_input(3))
    finally:
        for ev, fn in (("before_forward", before), ("after_forward", after), ("before_forward", rewrite)):
            net.remove_hook(ev, fn)
        hook.set_state(state)
    assert calls == [(e, i) for i in range(len(net.layers)) for e in ("b", "a")]
    assert "does not run per-layer forward hooks that are not observers" in caplog.text and "rewrite" in caplog.text


def test_engine_speed_table(tmp_path):
    """The flagship's last table from a deploy prototxt, its caffemodel and a saved ranges file."""
    from caffelite.jacinto import int8_speed
    net, hook = _net()
    hook.freeze_ranges(after=2)
    for k in range(3):
        net.forward(data=_input(k))
    hook.save_ranges(tmp_path / "ranges.json")
    times, shape = int8_speed.engine_times(os.path.join(JSEG, "deploy.prototxt"),
                                           os.path.join(JSEG, "weights.caffemodel.xz"), tmp_path / "ranges.json",
                                           shape=(1, 3, *SIZE), runs=1)
    assert shape == (1, 3, *SIZE) and {"float dense", "int8"} <= set(times) and all(v > 0 for v in times.values())
    table = int8_speed.speed_table(times, shape)
    assert "| int8 |" in table and "1.00x" in table.splitlines()[2]


def test_convolutions_write_the_next_ones_planes():
    """Sparse kernels on every layer at 256x512 (rows wide enough for the quads kernel): a convolution whose output
    only the next convolution reads writes that one's planar input directly; every blob's integers are those of
    the forward without it, and reading them after a later forward is an error, not stale values."""
    from caffelite import io, jacinto
    from caffelite.jacinto import int8_engine as ie
    from caffelite.net import Net
    from caffelite.ops import int8 as i8op
    if "vnni" not in i8op.supported_isas():
        pytest.skip("no AVX-512 VNNI")
    p = io.read_net(os.path.join(JSEG, "deploy.prototxt"))
    p.layer[0].input_param.shape[0].dim[:] = [1, 3, 256, 512]
    p.quantize = True
    net = Net(p, TEST)
    net.copy_from(os.path.join(JSEG, "weights.caffemodel.xz"))
    for ly in net.layers:
        if ly.type == "Convolution":
            w = ly.blobs[0].data
            w[np.abs(w) < np.quantile(np.abs(w), 0.8)] = 0
    net.repack()
    hook = jacinto.attach_quantization(net)
    x = np.random.default_rng(3).uniform(0, 255, (1, 3, 256, 512)).astype(np.float32)
    hook.freeze_ranges(after=2)
    for _ in range(3):
        net.forward(data=x)
    state = hook.get_state()
    got = []
    for fuse in (True, False):
        hook.set_state(state)
        eng = ie.Int8Net(net, hook, sparse=True, fuse_packing=fuse)
        out = eng.forward(data=x)["argMaxOut"].copy()
        got.append((out, dict(eng.ints), list(eng.planes_written)))
    (out_f, ints_f, written), (out_u, ints_u, none) = got
    assert none == [] and {"conv1a", "res2a_branch2a", "ctx_conv1"} <= set(written)
    np.testing.assert_array_equal(out_f, out_u)
    assert ints_f.keys() == ints_u.keys()
    for k in ints_u:
        np.testing.assert_array_equal(ints_f[k], ints_u[k], err_msg=k)
    hook.set_state(state)
    eng = ie.Int8Net(net, hook, sparse=True)
    eng.forward(data=x)
    early = eng.ints
    hook.set_state(state)
    eng.forward(data=x)
    with pytest.raises(ie.Int8Error, match="overwritten by a later forward"):
        early["conv1a"]
