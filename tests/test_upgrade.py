"""Legacy upgrades equal the outputs of BVLC's upgrade tools (tests/data/fixtures/legacy)."""

import os

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite import io
from caffelite.errors import FileFormatError
from caffelite.proto import caffe_pb2
from caffelite.io.upgrade import upgrade_net, upgrade_solver
from conftest import FIXTURES

LEGACY = os.path.join(FIXTURES, "legacy")
TEXT_CASES = sorted(d for d in os.listdir(LEGACY) if os.path.exists(os.path.join(LEGACY, d, "net.upgraded.prototxt")))
BIN_CASES = sorted(d for d in os.listdir(LEGACY) if os.path.exists(os.path.join(LEGACY, d, "net.upgraded.caffemodel")))


def _text(path, cls):
    with open(path) as f:
        return text_format.Parse(f.read(), cls())


@pytest.mark.parametrize("case", TEXT_CASES)
def test_text_upgrade_matches_caffe(case):
    got, report = io.read_net_ex(os.path.join(LEGACY, case, "net.prototxt"))
    want = _text(os.path.join(LEGACY, case, "net.upgraded.prototxt"), caffe_pb2.NetParameter)
    assert got == want, text_format.MessageToString(got)
    assert report.upgraded


@pytest.mark.parametrize("case", BIN_CASES)
def test_binary_upgrade_matches_caffe_bytes(case):
    got = io.read_weights(os.path.join(LEGACY, case, "net.caffemodel"))
    with open(os.path.join(LEGACY, case, "net.upgraded.caffemodel"), "rb") as f:
        want = f.read()
    assert got == caffe_pb2.NetParameter.FromString(want)
    assert io.serialize_weights(got, "bvlc") == want  # byte-identical to upgrade_net_proto_binary


@pytest.mark.parametrize("case", [c for c in BIN_CASES if os.path.exists(os.path.join(LEGACY, c, "io.npz"))])
def test_upgraded_params_equal_pycaffe(case):
    net = io.read_weights(os.path.join(LEGACY, case, "net.caffemodel"))
    with np.load(os.path.join(LEGACY, case, "io.npz")) as f:
        npz = dict(f)
    keys = [k for k in npz if k.startswith("param/")]
    assert keys
    layers = {l.name: l for l in net.layer}
    for k in keys:
        lname, i = k[len("param/"):].rsplit("/", 1)
        arr = io.blob_to_array(layers[lname].blobs[int(i)], shape=npz[k].shape)
        np.testing.assert_array_equal(arr, npz[k])


def test_solver_type_upgrade():
    d = os.path.join(LEGACY, "solver_v1_nesterov")
    got, report = io.read_solver_ex(os.path.join(d, "solver.prototxt"))
    assert got == _text(os.path.join(d, "solver.upgraded.prototxt"), caffe_pb2.SolverParameter)
    assert got.type == "Nesterov" and not got.HasField("solver_type") and report.upgraded


def test_solver_both_types_rejected():
    s = caffe_pb2.SolverParameter(type="Adam", solver_type=caffe_pb2.SolverParameter.SGD)
    with pytest.raises(FileFormatError, match="cannot be both specified"):
        upgrade_solver(s, "x.prototxt")


def test_batchnorm_upgrade_keeps_specs():
    d = os.path.join(LEGACY, "batchnorm_old")
    net = io.read_net(os.path.join(d, "net.prototxt"))
    bns = [l for l in net.layer if l.type == "BatchNorm"]
    three = [l for l in bns if len(l.param) == 3]
    assert three and all(p.lr_mult == 0 and p.decay_mult == 0 for l in three for p in l.param)
    bad = io.read_net(os.path.join(d, "bad_one_param.prototxt"))  # upgrade leaves it; the layer rejects it
    assert [len(l.param) for l in bad.layer if l.type == "BatchNorm"] == [1]


def test_input_dim_to_input_layer_first():
    net = caffe_pb2.NetParameter()
    text_format.Parse('input: "a" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 input: "b" '
                      'input_dim: 5 input_dim: 6 input_dim: 7 input_dim: 8 layer { name: "r" type: "ReLU" '
                      'bottom: "a" top: "a" }', net)
    assert upgrade_net(net)
    first = net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["a", "b"])
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert not len(net.input) and not len(net.input_dim)


def test_bare_input_is_stripped():
    net = caffe_pb2.NetParameter(input=["data"])
    net.layer.add(name="r", type="ReLU")
    upgrade_net(net)
    assert [l.name for l in net.layer] == ["r"] and not len(net.input)


def test_v0_padding_into_non_conv_rejected():
    net = caffe_pb2.NetParameter(input=["data"], input_dim=[1, 1, 4, 4])
    text_format.Parse('layers { layer { name: "p" type: "padding" pad: 1 } bottom: "data" top: "p" } '
                      'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }', net)
    with pytest.raises(FileFormatError, match="Padding layer input"):
        upgrade_net(net, "v0.prototxt")


def test_v0_unknown_parameter_rejected():
    net = caffe_pb2.NetParameter(input=["x"])
    text_format.Parse('layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "y" }', net)
    with pytest.raises(FileFormatError, match="num_output"):
        upgrade_net(net)


def _unknown_varint(num, val):
    from caffelite.io.blobs import varint
    from caffelite.io.wire import tag

    return tag(num, 0) + varint(val)


def test_v1_and_v0_layers_keep_other_forks_fields(caplog):
    """A legacy layer's field that no schema declares is carried onto the upgraded layer byte for byte (written
    back in every form); one whose number the new class declares would be misread there: dropped, with a
    warning naming the layer."""
    from caffelite.io.foreign import foreign_fields

    v1 = caffe_pb2.NetParameter(input=["x"], input_dim=[1, 1, 2, 2])
    text_format.Parse('layers { name: "r" type: RELU bottom: "x" top: "y" }', v1)
    v1.layers[0].MergeFromString(_unknown_varint(10011, 3))
    upgrade_net(v1)
    assert [ff.describe() for ff in foreign_fields(v1)] == ["layer 'r': field 10011 (varint)"]
    assert caffe_pb2.NetParameter.FromString(io.serialize_weights(v1, "bvlc")) == v1

    v0 = caffe_pb2.NetParameter(input=["x"], input_dim=[1, 1, 2, 2])
    text_format.Parse('layers { layer { name: "r" type: "relu" } bottom: "x" top: "y" }', v0)
    v0.layers[0].layer.MergeFromString(_unknown_varint(10012, 4) + _unknown_varint(23, 1))  # 23: declared in V1
    with caplog.at_level("WARNING", logger="caffelite.upgrade"):
        upgrade_net(v0, "v0.prototxt")
    assert [ff.describe() for ff in foreign_fields(v0)] == ["layer 'r': field 10012 (varint)"]
    assert [l.type for l in v0.layer] == ["Input", "ReLU"]
    assert "v0.prototxt: layer 'r': field 23 of another Caffe fork cannot be kept" in caplog.text
