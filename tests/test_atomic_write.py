"""Every file caffelite writes gets the user's umask (0644 under 022, 0600 under 077) and is written atomically
through one helper (caffelite.io.files.atomic_open): caffemodel, prototxt, solverstate + sidecar, converted
files, PNG, lists, LMDB."""

import os
import stat

import numpy as np
import pytest

import caffelite
from caffelite import cli
from caffelite import io as cio
from caffelite.io.files import atomic_open, atomic_write

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 dim: 4 dim: 6 dim: 6 }
                     data_filler { type: "gaussian" std: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "loss" type: "EuclideanLoss" bottom: "conv1" bottom: "target" top: "loss" }
"""


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _files(root):
    for d, _, names in os.walk(root):
        for n in names:
            yield os.path.join(d, n)


def test_helper_mode_and_no_leftovers(tmp_path, umask):
    p = tmp_path / "sub" / "f.bin"
    atomic_write(p, b"abc")
    assert p.read_bytes() == b"abc" and _mode(p) == 0o666 & ~umask
    atomic_write(p, [b"x", memoryview(b"yz")])
    assert p.read_bytes() == b"xyz"
    with pytest.raises(RuntimeError):
        with atomic_open(p) as f:
            f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert p.read_bytes() == b"xyz"                  # the target is untouched
    assert sorted(os.listdir(p.parent)) == ["f.bin"]  # and the temporary file is gone


def test_every_writer(tmp_path, umask, monkeypatch):
    monkeypatch.chdir(tmp_path)
    want = 0o666 & ~umask
    (tmp_path / "train.prototxt").write_text(NET)
    os.chmod(tmp_path / "train.prototxt", want)
    (tmp_path / "solver.prototxt").write_text(
        'net: "train.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 2 snapshot: 2 display: 0 '
        'snapshot_prefix: "snaps/s" random_seed: 1')
    os.chmod(tmp_path / "solver.prototxt", want)
    solver = caffelite.get_solver("solver.prototxt")
    solver.solve()                                   # caffemodel + solverstate + sidecar
    net = caffelite.Net("train.prototxt", caffelite.TEST)
    net.save("w.caffemodel")
    cio.write_text(cio.read_net("train.prototxt"), "copy.prototxt")
    assert cli.main(["convert", "--to", "bvlc", "w.caffemodel", "w_bvlc.caffemodel"]) == 0
    assert cli.main(["convert", "--to", "bvlc", "train.prototxt", "bvlc.prototxt"]) == 0
    assert cli.main(["upgrade", "train.prototxt", "up.prototxt"]) == 0
    from caffelite.segmentation.cityscapes import create_lists
    from caffelite.segmentation.lmdbs import create_segmentation_lmdbs
    from caffelite.segmentation.synthetic import generate_dataset
    generate_dataset(str(tmp_path / "cs"), 2, 1, (64, 32), seed=0)       # PNGs
    lists = create_lists(str(tmp_path / "cs"), str(tmp_path / "lists"), workers=1)  # lists + label PNGs
    il, ll = lists["train"]
    create_segmentation_lmdbs(il, ll, str(tmp_path / "img_lmdb"), str(tmp_path / "lab_lmdb"), num_classes=5)
    written = [p for p in _files(tmp_path)]
    kinds = {os.path.splitext(p)[1] for p in written}
    assert {".caffemodel", ".solverstate", ".npz", ".prototxt", ".png", ".txt", ".mdb"} <= kinds
    bad = {os.path.relpath(p, tmp_path): oct(_mode(p)) for p in written if _mode(p) != want}
    assert not bad, f"not {oct(want)}: {bad}"
    assert not [p for p in written if os.path.basename(p).startswith(".tmp-")]
    np.testing.assert_array_equal(caffelite.Net("train.prototxt", "snaps/s_iter_2.caffemodel", caffelite.TEST)
                                  .params["conv1"][0].data, solver.net.params["conv1"][0].data)
