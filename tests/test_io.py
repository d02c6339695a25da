"""caffelite.io: every shipped file parses; blobs decode from every encoding; byte-identical round trips."""

import glob
import lzma
import os

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite import io
from caffelite.errors import FileFormatError
from caffelite.proto import caffe_pb2, dialect
from conftest import FIXTURES, REFERENCE

EXTS = (".prototxt", ".caffemodel", ".caffemodel.xz", ".binaryproto", ".solverstate")
ALL_FILES = sorted(p for root in (FIXTURES, REFERENCE) for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                   if p.endswith(EXTS))
CAFFEMODELS = sorted(p for p in ALL_FILES if p.endswith(".caffemodel"))


def _rel(p):
    return os.path.relpath(p, os.path.dirname(FIXTURES))


def test_enough_files_found():
    assert len(ALL_FILES) > 300 and len(CAFFEMODELS) > 80


@pytest.mark.parametrize("path", ALL_FILES, ids=_rel)
def test_every_shipped_file_parses(path):
    kind = io.file_kind(path)
    if kind == "weights":
        net, report = io.read_weights_ex(path)
        assert len(net.layer) and report.dialect == "bvlc"  # all fixtures were written by BVLC Caffe
        for l in net.layer:
            for b in l.blobs:
                a = io.blob_to_array(b)
                assert a.dtype == np.float32 and a.size == int(np.prod(io.blob_shape(b)))
    elif kind == "binaryproto":
        assert io.read_binaryproto(path).ndim == 4
    elif kind == "solverstate":
        st = io.read_solverstate(path)
        assert st.iter > 0 and len(st.history)
    else:
        kind, msg, report = io.read_text_any(path)
        assert kind == ("solver" if "solver" in os.path.basename(path) else "net")
        if kind == "net":
            assert len(msg.layer) and not len(msg.layers) and not len(msg.input)


def test_reference_quantize_text_is_jacinto():
    net, report = io.read_net_ex(os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", "test_quantize", "deploy.prototxt"))
    assert net.quantize and report.dialect == "jacinto017"
    assert any(l.batch_norm_param.scale_bias for l in net.layer if l.type == "BatchNorm")


@pytest.mark.parametrize("case,field", [("clip", "clip_param"), ("swish_beta1.5", "swish_param"),
                                        ("pool_max_k3s2_floor", "pooling_param.round_mode")])
def test_bvlc_only_options_become_extras(case, field):
    net, report = io.read_net_ex(os.path.join(FIXTURES, "layers", case, "net.prototxt"))
    assert report.dialect == "bvlc"
    layer = net.layer[-1]
    extra = report.extras[layer.name]
    assert extra.DESCRIPTOR.file.pool is dialect("bvlc").POOL
    assert any(field in d for d in report.dropped)
    if case == "clip":
        assert (extra.clip_param.min, extra.clip_param.max) != (0, 0)
    if case.startswith("pool"):
        assert extra.pooling_param.round_mode == dialect("bvlc").PoolingParameter.FLOOR


def test_bvlc_text_with_bn_scale_detected():
    net, report = io.read_net_ex(os.path.join(FIXTURES, "solvers", "sgd_step", "train_val.prototxt"))
    assert report.dialect == "bvlc"


def test_jacinto016_text_detected_and_converted():
    text = 'name: "q" layer { name: "c" type: "ReLU" bottom: "x" top: "x" quantization_param { precision: ' \
           'QuantizationParameter_Precision_DYNAMIC_FIXED_POINT power2_range: true } }'
    net, report = io.parse_net_text(text, "q.prototxt")
    assert report.dialect == "jacinto016"
    assert net.layer[0].quantization_param.precision == caffe_pb2.QuantizationParameter_Precision_DYNAMIC_FIXED_POINT
    assert any("power2_range" in d for d in report.dropped)


def test_bvlc_binary_with_clip_roundtrips_and_reports():
    bv = dialect("bvlc")
    net = bv.NetParameter(name="n")
    l = net.layer.add(name="clip", type="Clip", bottom=["x"], top=["y"])
    l.clip_param.min, l.clip_param.max = -1.0, 2.0
    c = net.layer.add(name="conv", type="Convolution", bottom=["y"], top=["z"])
    c.blobs.add().CopyFrom(io.array_to_blob(np.arange(6, dtype=np.float32).reshape(2, 3), "bvlc", pb=bv))
    raw = net.SerializeToString()
    got, report = io.parse_net_binary(raw, "clip.caffemodel")
    assert report.dialect == "bvlc" and report.form == "bvlc"
    assert report.extras["clip"].clip_param.max == 2.0
    assert io.serialize_weights(got, "bvlc") == raw
    np.testing.assert_array_equal(io.blob_to_array(got.layer[1].blobs[0]), np.arange(6).reshape(2, 3))


def test_solver_bvlc_fields_dropped(tmp_path):
    p = tmp_path / "solver.prototxt"
    p.write_text('base_lr: 0.1\nlayer_wise_reduce: false\nweights: "a.caffemodel"\ntype: "Adam"\n')
    s, report = io.read_solver_ex(p)
    assert report.dialect == "bvlc" and s.base_lr == pytest.approx(0.1) and s.type == "Adam"
    assert not s.HasField("rampup_interval") and not s.HasField("rampup_lr")  # 41/42 collide; not misread
    assert {"solver: layer_wise_reduce", "solver: weights"} <= set(report.dropped)


# ------------------------------------------------------------------------------------------------ blobs
def _blob(**kw):
    b = caffe_pb2.BlobProto()
    shape = kw.pop("shape", None)
    if shape is not None:
        b.shape.dim.extend(shape)
    for k, v in kw.items():
        if isinstance(v, (list, np.ndarray)):
            getattr(b, k).extend(v)
        else:
            setattr(b, k, v)
    return b


def test_blob_encodings():
    a = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    for b in (_blob(shape=[2, 3, 4], data=a.ravel().tolist()),
              _blob(shape=[2, 3, 4], double_data=a.astype(np.float64).ravel().tolist()),
              _blob(shape=[2, 3, 4], raw_data_type=caffe_pb2.FLOAT, raw_data=a.tobytes()),
              _blob(shape=[2, 3, 4], raw_data_type=caffe_pb2.DOUBLE, raw_data=a.astype("<f8").tobytes())):
        got = io.blob_to_array(b)
        assert got.dtype == np.float32 and got.flags.writeable
        np.testing.assert_array_equal(got, a)
    h = a.astype(np.float16)
    got = io.blob_to_array(_blob(shape=[2, 3, 4], raw_data_type=caffe_pb2.FLOAT16, raw_data=h.tobytes()))
    np.testing.assert_array_equal(got, h.astype(np.float32))


def test_legacy_dims_and_target_shape():
    b = _blob(num=1, channels=1, height=2, width=3, data=list(range(6)))
    assert io.blob_shape(b) == (1, 1, 2, 3)
    assert io.blob_to_array(b, shape=(2, 3)).shape == (2, 3)
    with pytest.raises(FileFormatError, match="does not match"):
        io.blob_to_array(b, shape=(7,))
    assert io.blob_shape(_blob(width=5, data=[0.0] * 0)) == (0, 0, 0, 5)


@pytest.mark.parametrize("kw,msg", [
    (dict(shape=[2, 3], data=[1.0] * 5), "declares 6 elements but data has 5"),
    (dict(shape=[2, 3], raw_data_type=caffe_pb2.FLOAT, raw_data=b"\0" * 20), "raw_data holds 20 bytes"),
    (dict(shape=[2, 3], raw_data_type=caffe_pb2.INT, raw_data=b"\0" * 24), "unsupported raw_data_type"),
    (dict(shape=[1 << 30, 1 << 30], data=[1.0]), "too many elements"),
    (dict(shape=[-1, 3], data=[1.0]), "negative"),
    (dict(shape=[4]), "holds no data"),
])
def test_bad_blobs(kw, msg):
    with pytest.raises(FileFormatError, match=msg):
        io.check_blob(_blob(**kw), "w.caffemodel")
    with pytest.raises(FileFormatError, match=msg):
        io.blob_to_array(_blob(**kw), where="w.caffemodel")


def test_array_to_blob_forms():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    j = io.array_to_blob(a)  # caffe-jacinto Blob::ToProto: shape + raw_data_type FLOAT + raw_data
    assert [f.name for f, _ in j.ListFields()] == ["shape", "raw_data_type", "raw_data"]
    assert j.raw_data_type == caffe_pb2.FLOAT and j.raw_data == a.tobytes() and list(j.shape.dim) == [3, 4]
    b = io.array_to_blob(a, "bvlc")
    assert [f.name for f, _ in b.ListFields()] == ["data", "shape"]
    np.testing.assert_array_equal(io.blob_to_array(b), a)
    with pytest.raises(ValueError):
        io.array_to_blob(a, "caffe2")


# -------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("path", CAFFEMODELS, ids=_rel)
def test_caffemodel_round_trips_byte_identical(path, tmp_path):
    with open(path, "rb") as f:
        raw = f.read()
    net = io.read_weights(path, upgrade=False)
    out = tmp_path / "w.caffemodel"
    io.write_weights(net, out, form="bvlc")
    assert out.read_bytes() == raw
    io.write_weights(net, out, form="jacinto")
    jraw = out.read_bytes()
    jnet, report = io.read_weights_ex(out, upgrade=False)
    assert report.form in ("jacinto", None)
    assert io.serialize_weights(jnet, "jacinto") == jraw
    assert io.serialize_weights(jnet, "bvlc") == raw


def test_xz_weights_read_transparently():
    p = os.path.join(FIXTURES, "nets", "lenet", "weights.caffemodel.xz")
    want = caffe_pb2.NetParameter.FromString(lzma.open(p).read())
    assert io.read_weights(p, upgrade=False) == want


def test_binaryproto_and_solverstate_round_trip(tmp_path):
    mean = os.path.join(FIXTURES, "lmdb", "mean.binaryproto")
    a = io.read_binaryproto(mean)
    io.write_binaryproto(a, tmp_path / "m.binaryproto", legacy_4d=True)  # as compute_image_mean writes it
    assert (tmp_path / "m.binaryproto").read_bytes() == open(mean, "rb").read()
    ss = os.path.join(FIXTURES, "solvers", "adam", "snapshot_iter_12.solverstate")
    st = io.read_solverstate(ss)
    assert len(st.history) == 16  # Adam: m then v for the 8 learnable params
    io.write_solverstate(st, tmp_path / "s.solverstate")
    assert (tmp_path / "s.solverstate").read_bytes() == open(ss, "rb").read()


def test_write_text_round_trip(tmp_path):
    src = os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", "sparse", "train.prototxt")
    net = io.read_net(src)
    io.write_text(net, tmp_path / "n.prototxt")
    assert io.read_net(tmp_path / "n.prototxt") == net


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")

    def chunks():
        yield b"new"
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.atomic_write(p, chunks())
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]


# ------------------------------------------------------------------------------------------------ errors
def test_syntax_error_names_line_and_column(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom "x"\n}\n')
    with pytest.raises(FileFormatError) as e:
        io.read_net(p)
    assert e.value.line == 5 and e.value.column is not None and str(p) in str(e.value)


def test_unknown_field_names_file_and_line(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "a"\n  colour: 3\n}\n')
    with pytest.raises(FileFormatError, match='no field named "colour"') as e:
        io.read_net(p)
    assert e.value.line == 4


def test_not_a_protobuf_and_truncated(tmp_path):
    png = tmp_path / "model.caffemodel"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)) * 4)
    with pytest.raises(FileFormatError, match="model.caffemodel"):
        io.read_weights(png)
    raw = open(os.path.join(FIXTURES, "nets", "cifar10_quick", "weights.caffemodel"), "rb").read()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FileFormatError, match="truncated"):
        io.read_weights(cut)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        io.read_weights(empty)


def test_shape_mismatch_in_file_detected(tmp_path):
    net = caffe_pb2.NetParameter()
    b = net.layer.add(name="ip", type="InnerProduct").blobs.add()
    b.shape.dim.extend([1000, 1000, 1000])
    b.data.extend([1.0, 2.0])
    p = tmp_path / "mismatch.caffemodel"
    p.write_bytes(net.SerializeToString())
    with pytest.raises(FileFormatError, match="layer 'ip' blob 0: blob declares 1000000000 elements"):
        io.read_weights(p)


def test_text_roundtrip_keeps_bvlc_only_fields(tmp_path):
    net, report = io.read_net_ex(os.path.join(FIXTURES, "layers", "clip", "net.prototxt"))
    io.write_text(net, tmp_path / "b.prototxt", "bvlc")
    back = text_format.Parse((tmp_path / "b.prototxt").read_text(), dialect("bvlc").NetParameter())
    assert back.layer[-1].clip_param == report.extras[net.layer[-1].name].clip_param


@pytest.mark.parametrize("path", [p for p in CAFFEMODELS if "/layers/" not in p] + [
    os.path.join(FIXTURES, "nets", "lenet", "weights.caffemodel.xz")], ids=_rel)
def test_load_weights_streaming_equals_read_weights(path):
    net, report = io.read_weights_ex(path)
    lean, lreport, arrays = io.load_weights(path)
    assert (lreport.dialect, lreport.form, lreport.upgraded) == (report.dialect, report.form, report.upgraded)
    assert [l.name for l in lean.layer] == [l.name for l in net.layer]
    for l in net.layer:
        assert len(arrays[l.name]) == len(l.blobs)
        for b, a in zip(l.blobs, arrays[l.name], strict=True):
            assert a.dtype == np.float32
            np.testing.assert_array_equal(a, io.blob_to_array(b))


def test_load_weights_checks_lengths_before_allocating(tmp_path):
    net = caffe_pb2.NetParameter()
    b = net.layer.add(name="fc", type="InnerProduct").blobs.add()
    b.shape.dim.extend([1 << 20, 1 << 12])  # 16 GiB if it were trusted
    b.raw_data_type = caffe_pb2.FLOAT
    b.raw_data = b"\0" * 64
    p = tmp_path / "lie.caffemodel"
    p.write_bytes(net.SerializeToString())
    with pytest.raises(FileFormatError, match="declares 4294967296 elements"):
        io.load_weights(p)
    p.write_bytes(net.SerializeToString()[:-10])
    with pytest.raises(FileFormatError, match="truncated"):
        io.load_weights(p)


def test_write_keeps_each_blob_encoding_with_form_none(tmp_path):
    net = caffe_pb2.NetParameter(name="mix")
    l = net.layer.add(name="a", type="Convolution")
    l.blobs.add().CopyFrom(io.array_to_blob(np.ones((2, 2)), "jacinto"))
    l.blobs.add().CopyFrom(io.array_to_blob(np.zeros(2), "bvlc"))
    l.forward_type = caffe_pb2.FLOAT
    assert io.serialize_weights(net, None) == net.SerializeToString()
    io.write_weights(net, tmp_path / "m.caffemodel", form=None)
    back, report = io.read_weights_ex(tmp_path / "m.caffemodel")
    assert report.form == "mixed" and report.dialect == "jacinto017" and back == net


def test_read_net_of_message_keeps_extras():
    bv = dialect("bvlc").NetParameter(name="m")
    l = bv.layer.add(name="c", type="Clip", bottom=["x"], top=["x"])
    l.clip_param.max = 3.0  # min missing: BVLC declares it required, we still convert it
    net, report = io.read_net_ex(bv)
    assert report.dialect == "bvlc" and report.extras["c"].clip_param.max == 3.0
    again, report2 = io.read_net_ex(net)  # jacinto message carrying the BVLC option as an unknown field
    assert report2.extras["c"].clip_param.max == 3.0 and again == net


def test_binary_jacinto016_vs_017_quantization():
    j16 = dialect("jacinto016")
    net = j16.NetParameter(name="q16")
    l = net.layer.add(name="conv", type="Convolution", forward_type=caffe_pb2.FLOAT)
    q = l.quantization_param
    q.qparam_out.quantize, q.qparam_out.bitwidth, q.qparam_out.fracbits = True, 8, 5
    q.qparam_w.fracbits = 7
    l.blobs.add().CopyFrom(io.array_to_blob(np.ones(3), pb=j16))
    got, report = io.parse_net_binary(net.SerializeToString(), "q16.caffemodel")
    assert report.dialect == "jacinto016"
    gq = got.layer[0].quantization_param
    assert [p.fracbits for p in gq.qparam_out] == [5] and [p.fracbits for p in gq.qparam_w] == [7]
    np.testing.assert_array_equal(io.blob_to_array(got.layer[0].blobs[0]), np.ones(3))

    n17 = caffe_pb2.NetParameter(name="q17")
    l = n17.layer.add(name="conv", type="Convolution", forward_type=caffe_pb2.FLOAT)
    for fb in (5, 6):
        l.quantization_param.qparam_w.add(quantize=True, bitwidth=8, fracbits=fb, unsigned_data=True)
    n17.net_quantization_param.bitwidth_weights = 8
    got, report = io.parse_net_binary(n17.SerializeToString(), "q17.caffemodel")
    assert report.dialect == "jacinto017" and got == n17


@pytest.mark.parametrize("form", ["jacinto", "bvlc"])
def test_write_weights_from_arrays_equals_blobs(tmp_path, form):
    rng = np.random.default_rng(0)
    arrays = {"conv": [rng.standard_normal((4, 3, 3, 3), dtype=np.float32), np.zeros(4, np.float32)],
              "ip": [rng.standard_normal((2, 5), dtype=np.float32)]}
    skel = caffe_pb2.NetParameter(name="n")
    for name, typ in (("data", "Input"), ("conv", "Convolution"), ("ip", "InnerProduct")):
        l = skel.layer.add(name=name, type=typ, bottom=["x"], top=["y"])
        l.include.add(phase=caffe_pb2.TEST)  # a field numbered after blobs (8)
    full = caffe_pb2.NetParameter()
    full.CopyFrom(skel)
    for l in full.layer:
        for a in arrays.get(l.name, []):
            l.blobs.add().CopyFrom(io.array_to_blob(a, form))
    io.write_weights(skel, tmp_path / "a.caffemodel", form=form, arrays=arrays)
    assert (tmp_path / "a.caffemodel").read_bytes() == full.SerializeToString()


def test_error_from_dialect_that_got_furthest(tmp_path):
    p = tmp_path / "bvlc_typo.prototxt"
    p.write_text('layer {\n  name: "c"\n  type: "Clip"\n  clip_param { min: 0 max: 1 }\n}\n'
                 'layer {\n  name: "r"\n  typo_field: 1\n}\n')
    with pytest.raises(FileFormatError, match="typo_field") as e:
        io.read_net(p)
    assert e.value.line == 8


def test_nvcaffe_label_smoothing_collision_is_named(tmp_path):
    # LossParameter field 4 is NVCaffe's label_smoothing but caffe-jacinto's label_weights: refuse, and say so
    p = tmp_path / "ls.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "loss"\n  type: "SoftmaxWithLoss"\n  loss_param {\n'
                 '    label_smoothing: 0.1\n  }\n}\n')
    with pytest.raises(FileFormatError, match=r"ls\.prototxt:6:5: .*label_weights") as e:
        io.read_net(p)
    assert "\n" not in str(e.value)
    p.write_text('name: "x"\nlayer {\n  name: "loss"\n  type: "SoftmaxWithLoss"\n  loss_param {\n'
                 '    label_weights: 0.5\n    label_weights: 2\n  }\n}\n')
    assert list(io.read_net(p).layer[0].loss_param.label_weights) == [0.5, 2.0]
