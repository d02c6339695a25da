"""Fields of other Caffe forks (numbers no schema declares) survive every conversion byte for byte, at any depth,
and ``caffelite info`` lists them as "kept, not understood"."""

import numpy as np
import pytest

from caffelite import cli
from caffelite import io as cio
from caffelite.io.foreign import foreign_fields
from caffelite.io.blobs import array_to_blob, varint
from caffelite.io.wire import tag
from caffelite.proto import caffe_pb2


def _unk(num, wire, val):
    if wire == 0:
        return tag(num, 0) + varint(val)
    if wire == 1:
        return tag(num, 1) + int(val).to_bytes(8, "little")
    if wire == 5:
        return tag(num, 5) + int(val).to_bytes(4, "little")
    return tag(num, 2) + varint(len(val)) + val


EXPECTED = [
    "net: field 10004 (varint)",
    "layer 'data': memory_data_param: field 10000 (varint)",
    "layer 'data': memory_data_param: field 10001 (length-delimited)",
    "layer 'conv1': field 10003 (fixed64)",
    "layer 'conv1': blobs[0]: field 10005 (varint)",
    "layer 'conv1': convolution_param.weight_filler: field 10002 (fixed32)",
    "layer 'bn1': batch_norm_param: field 10006 (length-delimited)",
]


def fork_caffemodel(path, form):
    """A caffemodel as another fork writes it: fields 10000+ inside memory_data_param (as the 2016 ResNet-50
    file has), in a layer, a filler, a blob, batch_norm_param and the net itself."""
    net = caffe_pb2.NetParameter(name="fork")
    d = net.layer.add(name="data", type="MemoryData")
    d.top.extend(["data", "label"])
    mp = d.memory_data_param
    mp.batch_size, mp.channels, mp.height, mp.width = 1, 3, 4, 4
    mp.MergeFromString(_unk(10000, 0, 3) + _unk(10001, 2, b"fork-specific"))
    c = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    c.convolution_param.num_output = 2
    c.convolution_param.kernel_size.append(3)
    c.convolution_param.weight_filler.MergeFromString(_unk(10002, 5, 1234))
    c.blobs.add().CopyFrom(array_to_blob(np.arange(54, dtype=np.float32).reshape(2, 3, 3, 3), form=form))
    c.blobs[0].MergeFromString(_unk(10005, 0, 9))
    c.MergeFromString(_unk(10003, 1, 77))
    b = net.layer.add(name="bn1", type="BatchNorm", bottom=["conv1"], top=["conv1"])
    b.batch_norm_param.MergeFromString(_unk(10006, 2, b"\x08\x01"))
    for k in range(3):
        b.blobs.add().CopyFrom(array_to_blob(np.full(2 if k < 2 else 1, 0.5 if k < 2 else 1.0, np.float32), form=form))
    net.MergeFromString(_unk(10004, 0, 5))
    data = net.SerializeToString()
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("form", ["jacinto", "bvlc"])
def test_convert_keeps_fork_fields(tmp_path, form):
    orig = fork_caffemodel(tmp_path / "in.caffemodel", form)
    other = "bvlc" if form == "jacinto" else "jacinto"
    same, conv, back = (str(tmp_path / n) for n in ("same.caffemodel", "other.caffemodel", "back.caffemodel"))
    assert cli.main(["convert", "--to", form, str(tmp_path / "in.caffemodel"), same]) == 0
    assert cli.main(["convert", "--to", other, str(tmp_path / "in.caffemodel"), conv]) == 0
    assert cli.main(["convert", "--to", form, conv, back]) == 0
    assert open(same, "rb").read() == orig
    assert open(back, "rb").read() == orig
    # the other form holds every one of them too, at the same place
    assert [ff.describe() for ff in foreign_fields(cio.read_weights(conv))] == EXPECTED
    assert [ff.describe() for ff in foreign_fields(cio.read_weights(str(tmp_path / "in.caffemodel")))] == EXPECTED


def test_library_round_trip(tmp_path):
    orig = fork_caffemodel(tmp_path / "in.caffemodel", "jacinto")
    net = cio.read_weights(str(tmp_path / "in.caffemodel"))
    cio.write_weights(net, str(tmp_path / "out.caffemodel"))
    assert (tmp_path / "out.caffemodel").read_bytes() == orig


def test_info_lists_them(tmp_path, capsys):
    fork_caffemodel(tmp_path / "in.caffemodel", "bvlc")
    assert cli.main(["info", str(tmp_path / "in.caffemodel")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("kept, not understood: ")]
    assert [ln[len("kept, not understood: "):] for ln in lines] == EXPECTED


def test_solverstate_keeps_them(tmp_path, capsys):
    st = caffe_pb2.SolverState(iter=4, learned_net="x.caffemodel", current_step=1)
    st.history.add().CopyFrom(array_to_blob(np.ones(3, np.float32), form="jacinto"))
    st.history[0].MergeFromString(_unk(10007, 0, 1))
    st.MergeFromString(_unk(10008, 2, b"abc"))
    (tmp_path / "s.solverstate").write_bytes(st.SerializeToString())
    for to in ("bvlc", "jacinto"):
        out = str(tmp_path / f"{to}.solverstate")
        assert cli.main(["convert", "--to", to, str(tmp_path / "s.solverstate"), out]) == 0
        assert [ff.describe("solverstate") for ff in foreign_fields(cio.read_solverstate(out))] == \
            ["solverstate: field 10008 (length-delimited)", "solverstate: history[0]: field 10007 (varint)"]
    assert cli.main(["info", str(tmp_path / "s.solverstate")]) == 0
    assert "kept, not understood: solverstate: history[0]: field 10007 (varint)" in capsys.readouterr().out


def test_binaryproto_keeps_them_and_its_legacy_dims(tmp_path, capsys):
    """A mean file as compute_image_mean writes it (legacy num/channels/height/width) with another fork's field:
    converted either way, the field and the 4-D dims are written back and the values are unchanged."""
    vals = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) / 7
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4)
    blob.data.extend(vals.ravel().tolist())
    blob.MergeFromString(_unk(10009, 0, 5))
    src = tmp_path / "mean.binaryproto"
    src.write_bytes(blob.SerializeToString())
    for to in ("jacinto", "bvlc"):
        out = str(tmp_path / f"{to}.binaryproto")
        assert cli.main(["convert", "--to", to, str(src), out]) == 0
        back = cio.read_blobproto(out)
        assert [ff.describe("blob") for ff in foreign_fields(back)] == ["blob: field 10009 (varint)"]
        assert (back.num, back.channels, back.height, back.width) == (1, 2, 3, 4) and not back.HasField("shape")
        assert np.array_equal(cio.read_binaryproto(out), vals)
        assert cli.main(["convert", "--to", "bvlc", out, str(tmp_path / "again.binaryproto")]) == 0
        assert (tmp_path / "again.binaryproto").read_bytes() == src.read_bytes()  # BVLC form: byte for byte
    assert cli.main(["info", str(src)]) == 0
    assert "kept, not understood: blob: field 10009 (varint)" in capsys.readouterr().out


def test_declared_number_with_wrong_wire_type_still_refused(tmp_path):
    """Another kind of file is still refused: a declared number in another wire type is no fork's field."""
    net = caffe_pb2.NetParameter()
    net.layer.add(name="a", type="ReLU")
    (tmp_path / "x.caffemodel").write_bytes(net.SerializeToString() + _unk(1, 0, 7))  # name (1) as a varint
    with pytest.raises(Exception, match="not a caffemodel"):
        cio.read_weights(str(tmp_path / "x.caffemodel"))
    with pytest.raises(Exception, match="not a caffemodel"):
        cio.load_weights(str(tmp_path / "x.caffemodel"))
    st = caffe_pb2.SolverState(iter=4)
    (tmp_path / "x.solverstate").write_bytes(st.SerializeToString() + _unk(2, 0, 7))  # learned_net as a varint
    with pytest.raises(Exception, match="not a solverstate"):
        cio.read_solverstate(str(tmp_path / "x.solverstate"))


def test_the_helpers_are_still_importable_from_dialects():
    """They live in caffelite.io.foreign; code that imported them from caffelite.io.dialects keeps working."""
    from caffelite.io import dialects, foreign

    assert dialects.foreign_fields is foreign.foreign_fields
    assert dialects.restore_foreign_fields is foreign.restore_foreign_fields
    assert dialects.ForeignField is foreign.ForeignField
