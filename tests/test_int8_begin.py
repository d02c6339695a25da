"""The per-forward quantization steps with frozen ranges (caffelite/jacinto/qmemo.py, Int8Net._begin): the
remembered set_params results leave every layer's quantization_param byte for byte as an uncached run does, and
the int8 engine and the float simulation compute the same values, also when the inputs of set_params change
between forwards (ranges loaded, edited in place, a -0.0 range bound, the net's settings)."""

import json
import math
import os

import numpy as np

import caffelite.log  # noqa: F401  (the package's lazy names must not shadow the log module)
from caffelite.layer import TEST
from caffelite.jacinto.validate import is_quantizable_type
from caffelite.proto.caffe_pb2 import QuantizationParameter

from conftest import FIXTURES
from helpers import load_npz

JSEG = os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy")
SIZE = (32, 64)
FORWARDS = 20
#: forward -> the change of set_params' inputs made before it (each after the scales settled into their cycle)
EDITS = {5: "load", 12: "-0.0", 17: "scale"}


def _net(memo):
    from caffelite import io, jacinto
    from caffelite.net import Net
    p = io.read_net(os.path.join(JSEG, "deploy.prototxt"))
    p.layer[0].input_param.shape[0].dim[:] = [1, 3, *SIZE]
    p.quantize = True
    net = Net(p, TEST)
    net.copy_from(os.path.join(JSEG, "weights.caffemodel.xz"))
    hook = jacinto.attach_quantization(net)
    hook.memo_params = memo
    hook.freeze_ranges(after=2)
    for k in range(3):  # two measuring forwards, then quantization_start (quantizes the weights)
        net.forward(data=_input(k))
    return net, hook


def _input(seed):
    x = load_npz(os.path.join(JSEG, "input.npz"))["data"]
    return np.ascontiguousarray(np.roll(x, 7 * seed, axis=3)[:, :, :SIZE[0], :SIZE[1]])


def _qparams(net):
    """Every layer's quantization_param, serialized (None where absent)."""
    return [ly.param.quantization_param.SerializeToString() if ly.param.HasField("quantization_param") else None
            for ly in net.layers]


def _sans_count(raw):
    """A serialized quantization_param with quantized_infer_count 0 (what repeats from forward to forward)."""
    out = []
    for r in raw:
        if r is None:
            out.append(None)
            continue
        m = QuantizationParameter.FromString(r)
        m.quantized_infer_count = 0
        out.append(m.SerializeToString())
    return tuple(out)


def _zero_min_output(net, hook):
    """(layer, top) of a quantized output whose range minimum is +0.0 (a ReLU's)."""
    for i, ly in enumerate(net.layers):
        qo = ly.param.quantization_param.qparam_out
        for j in range(len(hook.r_out[i])):
            if j < len(qo) and qo[j].quantize and hook.r_out[i][j][0] == 0:
                return i, j
    raise AssertionError("no quantized output with a zero range minimum")


def _run(memo, tmp_path, engine):
    """FORWARDS forwards (int8 engine or float simulation) with changes of set_params' inputs between them;
    returns per forward the quantization_params and the outputs (and the engine's integers)."""
    from caffelite.jacinto.int8_engine import Int8Net
    net, hook = _net(memo)
    eng = Int8Net(net, hook) if engine else None
    ranges = tmp_path / f"ranges_{int(memo)}_{int(engine)}.json"
    hook.save_ranges(ranges)
    data = json.loads(ranges.read_text())
    for r in data["ranges"].values():  # wider activation ranges: other scales everywhere
        r["out"] = [[mn * 1.5, mx * 1.5] for mn, mx in r["out"]]
        r["in"] = [[mn * 1.5, mx * 1.5] for mn, mx in r["in"]]
    ranges.write_text(json.dumps(data))
    record = []
    for f in range(FORWARDS):
        edit = EDITS.get(f)
        if edit == "load":
            hook.load_ranges(str(ranges))
        elif edit == "-0.0":
            i, j = _zero_min_output(net, hook)
            hook.r_out[i][j][0] = -0.0  # edited in place: +0.0 and -0.0 write different min/offset values
        elif edit == "scale":
            i = next(i for i, ly in enumerate(net.layers) if ly.type == "Convolution")
            hook.r_out[i][0] *= 0.75
        k = hook.infer_count
        x = _input(4)
        out = eng.forward(data=x) if engine else net.forward(data=x)
        ints = {name: np.array(eng.ints[name]) for name in eng.ints} if engine else {}
        counts = {ly.param.quantization_param.quantized_infer_count for ly in net.layers
                  if is_quantizable_type(ly.type)}
        assert counts == {k - hook.start}
        record.append((_qparams(net), {n: v.copy() for n, v in out.items()}, ints, hook.param_state is not None))
    return record, hook


def _compare(tmp_path, engine):
    cached, hook = _run(True, tmp_path, engine)
    plain, plain_hook = _run(False, tmp_path, engine)
    assert plain_hook._memo is None and all(not r[3] for r in plain)
    assert all(r[3] for r in cached)  # every forward went through the memo
    assert len(hook._memo.entries) < FORWARDS  # and some of them were remembered results
    for f, ((qa, oa, ia, _), (qb, ob, ib, _)) in enumerate(zip(cached, plain, strict=True)):
        assert qa == qb, f"forward {f}: quantization_param differs"
        assert oa.keys() == ob.keys() and ia.keys() == ib.keys()
        for k in oa:
            assert np.array_equal(oa[k], ob[k]), f"forward {f}: output {k}"
        for k in ia:
            assert np.array_equal(ia[k], ib[k]), f"forward {f}: integers of {k}"
    states = [_sans_count(r[0]) for r in plain]
    # the scales alternate between two sets from one forward to the next (so the memo serves both); before each
    # change they have settled into that cycle, so a memo that missed the change would return a remembered set...
    for f in EDITS:
        assert states[f - 1] != states[f - 2] and states[f - 1] == states[f - 3] and states[f - 2] == states[f - 4]
    # ...and each change gave parameters not seen before
    for f in EDITS:
        assert states[f] not in states[:f], f"forward {f}"
    minus = [QuantizationParameter.FromString(r) for r in plain[12][0] if r is not None]
    assert any(q.quantize and q.min == 0 and math.copysign(1, q.min) < 0 for m in minus for q in m.qparam_out)


def test_int8_engine_begin_equals_uncached(tmp_path):
    """The int8 engine: parameters, outputs and integers after each forward equal an uncached run's."""
    _compare(tmp_path, engine=True)


def test_float_simulation_equals_uncached(tmp_path):
    """The hook's own forwards (the float simulation) with frozen ranges: the same."""
    _compare(tmp_path, engine=False)


def test_memo_follows_settings_and_unfreezing():
    """A changed net setting is a new key; unfrozen ranges (updated every forward) never use the memo."""
    a, ha = _net(True)
    b, hb = _net(False)
    for k in range(3):
        for net in (a, b):
            net.forward(data=_input(5 + k))
    assert _qparams(a) == _qparams(b) and ha.param_state is not None
    seen = _sans_count(_qparams(a))
    for net, hook in ((a, ha), (b, hb)):
        hook.qnet.power2_scale_activations = True
        net.forward(data=_input(8))
    assert _qparams(a) == _qparams(b) and _sans_count(_qparams(a)) != seen
    for hook in (ha, hb):
        hook.freeze_ranges(False)
    for k in range(3):
        for net in (a, b):
            net.forward(data=_input(9 + k))
        assert ha.param_state is None
        assert _qparams(a) == _qparams(b)
        for x, y in zip(ha.range_tables(), hb.range_tables(), strict=True):
            assert np.array_equal(x, y)
