"""`caffelite upgrade / convert / info` on the fixtures, and one-line errors (exit 2) for bad files."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite import cli, io
from caffelite.proto import caffe_pb2
from conftest import FIXTURES, REFERENCE

LEGACY = os.path.join(FIXTURES, "legacy")
SGD = os.path.join(FIXTURES, "solvers", "sgd_step")


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_upgrade_text_binary_solver(tmp_path, capsys):
    rc, _, _ = run(capsys, "upgrade", os.path.join(LEGACY, "tiny_v0", "net.prototxt"), tmp_path / "n.prototxt")
    assert rc == 0
    want = text_format.Parse(open(os.path.join(LEGACY, "tiny_v0", "net.upgraded.prototxt")).read(),
                             caffe_pb2.NetParameter())
    assert text_format.Parse((tmp_path / "n.prototxt").read_text(), caffe_pb2.NetParameter()) == want
    rc, _, _ = run(capsys, "upgrade", os.path.join(LEGACY, "tiny_v1_binary", "net.caffemodel"), tmp_path / "w.cm")
    assert rc == 0
    assert (tmp_path / "w.cm").read_bytes() == open(os.path.join(LEGACY, "tiny_v1_binary",
                                                                  "net.upgraded.caffemodel"), "rb").read()
    rc, _, _ = run(capsys, "upgrade", os.path.join(LEGACY, "solver_v1_nesterov", "solver.prototxt"),
                   tmp_path / "solver.prototxt")
    assert rc == 0
    got = text_format.Parse((tmp_path / "solver.prototxt").read_text(), caffe_pb2.SolverParameter())
    assert got.type == "Nesterov" and not got.HasField("solver_type")


def test_convert_caffemodel_bvlc_jacinto_bvlc(tmp_path, capsys):
    src = os.path.join(SGD, "init.caffemodel")
    assert run(capsys, "convert", "--to", "jacinto", src, tmp_path / "j.caffemodel")[0] == 0
    jnet, report = io.read_weights_ex(tmp_path / "j.caffemodel")
    assert report.dialect == "jacinto017" and report.form == "jacinto"
    bn = [l for l in jnet.layer if l.type == "BatchNorm"]
    assert len(bn) == 1 and len(bn[0].blobs) == 5 and not any(l.type == "Scale" for l in jnet.layer)
    bnet = io.read_weights(src)
    b = {l.name: [io.blob_to_array(x) for x in l.blobs] for l in bnet.layer}
    got = [io.blob_to_array(x) for x in bn[0].blobs]
    s = b["conv1/bn"][2][0]
    k = 0.0 if s == 0 else 1.0 / s  # docs/jacinto-spec.md §d.5
    np.testing.assert_allclose(got[0], b["conv1/bn"][0] * np.float32(k), rtol=1e-6)
    np.testing.assert_allclose(got[1], b["conv1/bn"][1] * np.float32(k), rtol=1e-6)
    np.testing.assert_array_equal(got[3], b["conv1/scale"][0])
    np.testing.assert_array_equal(got[4], b["conv1/scale"][1])
    assert run(capsys, "convert", "--to", "bvlc", tmp_path / "j.caffemodel", tmp_path / "b.caffemodel")[0] == 0
    back, report = io.read_weights_ex(tmp_path / "b.caffemodel")
    assert report.dialect == "bvlc" and report.form == "bvlc"
    names = [l.name for l in back.layer]
    assert names[names.index("conv1/bn") + 1] == "conv1/bn/scale"
    sc = [io.blob_to_array(x) for x in back.layer[names.index("conv1/bn/scale")].blobs]
    np.testing.assert_array_equal(sc[0], b["conv1/scale"][0])
    assert not back.layer[0].HasField("forward_type")


def test_convert_text_round_trip(tmp_path, capsys):
    src = os.path.join(SGD, "train_val.prototxt")
    assert run(capsys, "convert", "--to", "jacinto", src, tmp_path / "j.prototxt")[0] == 0
    j = io.read_net(tmp_path / "j.prototxt")
    assert [l.batch_norm_param.scale_bias for l in j.layer if l.type == "BatchNorm"] == [True]
    assert run(capsys, "convert", "--to", "bvlc", tmp_path / "j.prototxt", tmp_path / "b.prototxt")[0] == 0
    assert [l.type for l in io.read_net(tmp_path / "b.prototxt").layer] == [l.type for l in io.read_net(src).layer]


def test_convert_jacinto_reference_to_bvlc(tmp_path, capsys, caplog):
    src = os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", "test_quantize", "deploy.prototxt")
    rc, _, err = run(capsys, "convert", "--to", "bvlc", src, tmp_path / "b.prototxt")
    assert rc == 0 and "were dropped" in err  # reported, not silently dropped
    assert any("net: quantize" in r.getMessage() for r in caplog.records)
    b = io.read_net(tmp_path / "b.prototxt")
    n_bn = sum(l.type == "BatchNorm" for l in io.read_net(src).layer)
    assert sum(l.type == "Scale" and l.name.endswith("/bn/scale") for l in b.layer) == n_bn


def test_info_tables(capsys):
    rc, out, _ = run(capsys, "info", os.path.join(FIXTURES, "nets", "cifar10_quick", "weights.caffemodel"))
    assert rc == 0 and "dialect: bvlc" in out and "32x3x5x5,32" in out and "total: 13 layers, 145578" in out
    rc, out, _ = run(capsys, "info", os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", "sparse", "solver.prototxt"))
    assert rc == 0 and out.startswith("solver")
    rc, out, _ = run(capsys, "info", os.path.join(FIXTURES, "lmdb", "mean.binaryproto"))
    assert rc == 0 and "[1, 3, 16, 16]" in out
    rc, out, _ = run(capsys, "info", os.path.join(SGD, "snapshot_iter_6.solverstate"))
    assert rc == 0 and "iter 6" in out and "history: 8 blobs" in out


def _bad_files(tmp):
    syntax = tmp / "syntax.prototxt"
    syntax.write_text('name: "x"\nlayer {\n  name: "a"\n  type "ReLU"\n}\n')
    unknown = tmp / "unknown.prototxt"
    unknown.write_text('name: "x"\nlayer {\n  name: "a"\n  frobnicate: 1\n}\n')
    png = tmp / "photo.caffemodel"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x02\0\0\0" + bytes(300))
    raw = open(os.path.join(SGD, "init.caffemodel"), "rb").read()
    trunc = tmp / "trunc.caffemodel"
    trunc.write_bytes(raw[: len(raw) - 100])
    net = caffe_pb2.NetParameter()
    b = net.layer.add(name="ip", type="InnerProduct").blobs.add()
    b.shape.dim.extend([3, 4])
    b.data.extend([1.0] * 11)
    mism = tmp / "mismatch.caffemodel"
    mism.write_bytes(net.SerializeToString())
    del b.shape.dim[:]
    b.shape.dim.extend([1 << 40, 1 << 40])
    huge = tmp / "huge.caffemodel"
    huge.write_bytes(net.SerializeToString())
    return {"syntax": (syntax, ":4:"), "unknown": (unknown, ":4:"), "png": (png, "photo.caffemodel"),
            "trunc": (trunc, "trunc.caffemodel"), "mismatch": (mism, "declares 12 elements"),
            "huge": (huge, "too many elements")}


@pytest.mark.parametrize("case", ["syntax", "unknown", "png", "trunc", "mismatch", "huge"])
@pytest.mark.parametrize("command", ["info", "upgrade", "convert"])
def test_bad_input_one_line_exit_2(tmp_path, capsys, case, command):
    path, needle = _bad_files(tmp_path)[case]
    argv = {"info": ["info", path], "upgrade": ["upgrade", path, tmp_path / "out"],
            "convert": ["convert", "--to", "bvlc", path, tmp_path / "out"]}[command]
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0] and str(path) in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_console_script_exit_status(tmp_path):
    exe = shutil.which("caffelite") or None
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff" * 64)
    cmd = [exe, "info", str(bad)] if exe else [sys.executable, "-m", "caffelite", "info", str(bad)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "bad.caffemodel" in p.stderr


def test_info_prototxt_builds_the_net_for_shapes_and_counts(capsys):
    rc, out, _ = run(capsys, "info", os.path.join(FIXTURES, "nets", "lenet", "deploy.prototxt"))
    assert rc == 0, out
    rows = {l.split()[0]: l.split() for l in out.splitlines()[2:-1]}
    assert rows["conv1"][4:7] == ["2x20x24x24", "20x1x5x5,20", "520"]
    assert rows["ip1"][4:7] == ["2x500", "500x800,500", "400500"]
    assert rows["pool1"][4:7] == ["2x20x12x12", "-", "-"]
    assert "total: 9 layers, 431080 parameters" in out  # 520 + 25050 + 400500 + 5010


def test_info_prototxt_with_missing_data_source_reports_unknown_shapes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ../_data/*_lmdb does not exist from here
    rc, out, _ = run(capsys, "info", os.path.join(SGD, "train_val.prototxt"))
    assert rc == 0, out
    lines = out.splitlines()
    data = [l.split() for l in lines if l.startswith("data ")]
    assert sorted(d[4] for d in data) == ["(not", "?"]  # the TRAIN data layer, the TEST one (no source)
    assert [l.split()[4] for l in lines if l.startswith("conv1 ")] == ["?"]
    assert any(l.startswith("note: shapes marked ? are unknown") and "lmdb" in l for l in lines)


def test_info_prototxt_with_data_source_shows_shapes(capsys, monkeypatch):
    monkeypatch.chdir(SGD)  # the fixture's relative ../_data LMDBs resolve from here
    rc, out, _ = run(capsys, "info", "train_val.prototxt")
    assert rc == 0, out
    conv = [l.split() for l in out.splitlines() if l.startswith("conv1 ")][0]
    assert "?" not in conv and conv[5].startswith("6x") and int(conv[6]) > 0


def test_info_caffemodel_zero_fraction_and_quantization(tmp_path, capsys):
    net = io.read_weights(os.path.join(FIXTURES, "nets", "cifar10_quick", "weights.caffemodel"))
    conv = net.layer[[l.name for l in net.layer].index("conv1")]
    w = io.blob_to_array(conv.blobs[0])
    w.reshape(-1)[: w.size // 4] = 0  # a quarter of the weights (biases untouched)
    conv.blobs[0].CopyFrom(io.array_to_blob(w, "bvlc"))
    q = conv.quantization_param
    q.qparam_w.add(quantize=True, bitwidth=8, fracbits=7)
    q.qparam_out.add(quantize=True, bitwidth=8, fracbits=3, unsigned_data=True)
    p = tmp_path / "q.caffemodel"
    io.write_weights(net, p, form="jacinto")
    rc, out, _ = run(capsys, "info", p)
    assert rc == 0, out
    row = [l for l in out.splitlines() if l.startswith("conv1 ")][0]
    expect = (w == 0).sum() / w.size
    assert f"{expect:.3f}" in row.split() and "w:8b/7f" in row and "out:8b/3fu" in row
    assert "zero fraction" in out.splitlines()[-1]


def test_info_prototxt_that_cannot_be_built_still_shows_wiring(tmp_path, capsys):
    p = tmp_path / "broken.prototxt"
    p.write_text('name: "b"\nlayer { name: "relu" type: "ReLU" bottom: "nowhere" top: "r" }\n')
    rc, out, _ = run(capsys, "info", p)
    assert rc == 0
    assert [l.split()[:4] for l in out.splitlines() if l.startswith("relu ")] == [["relu", "ReLU", "nowhere", "r"]]
    assert "note: cannot build the net for shapes" in out and "nowhere" in out
