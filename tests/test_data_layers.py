"""Data, ImageData, ImageLabelData and DummyData layers: Caffe's feed, wrap, pairing and exact resume."""

import logging
import os

import numpy as np
import pytest

import caffelite
from caffelite.data.datum import array_to_datum
from caffelite.data.lmdb_io import LMDBWriter
from caffelite.errors import CaffeliteError
from conftest import FIXTURES
from helpers import load_npz

SOLVER_DATA = os.path.join(FIXTURES, "solvers", "_data")
LMDB_DIR = os.path.join(FIXTURES, "lmdb")


def _net(tmp_path, layer_text, phase=caffelite.TRAIN, name="n.prototxt"):
    p = tmp_path / name
    p.write_text(f'name: "t"\nlayer {{ {layer_text} }}\n')
    return caffelite.Net(str(p), phase)


def _data_layer(source, batch=8, transform="scale: 0.00390625", extra=""):
    return (f'name: "data" type: "Data" top: "data" top: "label" transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {extra} }}')


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_data_layer_feeds_what_caffe_fed(tmp_path):
    """The solvers fixture: scale 1/256, batch 8, key order, wrapping after 64 records (TRAIN) / 20 (TEST)."""
    z = load_npz(os.path.join(SOLVER_DATA, "data.npz"))
    cap = _Capture()
    logging.getLogger("caffelite").addHandler(cap)
    try:
        for split, phase in (("train", caffelite.TRAIN), ("test", caffelite.TEST)):
            net = _net(tmp_path, _data_layer(os.path.join(SOLVER_DATA, f"{split}_lmdb")), phase)
            n = len(z[f"{split}/label"])
            for it in range(10):
                net.forward()
                idx = (np.arange(8) + 8 * it) % n
                want = z[f"{split}/data"][idx].astype(np.float32) * np.float32(0.00390625)
                np.testing.assert_array_equal(net.blobs["data"].data, want)
                np.testing.assert_array_equal(net.blobs["label"].data, z[f"{split}/label"][idx])
    finally:
        logging.getLogger("caffelite").removeHandler(cap)
    assert "output data size: 8,3,16,16" in cap.lines
    assert "Restarting data prefetching from start." in cap.lines


def test_data_layer_mean_file_and_encoded(tmp_path):
    """Encoded records decode to the source pixels; a mean.binaryproto is subtracted before scaling."""
    z = load_npz(os.path.join(LMDB_DIR, "expected.npz"))
    mean = os.path.join(LMDB_DIR, "mean.binaryproto")
    net = _net(tmp_path, _data_layer(os.path.join(LMDB_DIR, "resized_lmdb"), 6,
                                     f'mean_file: "{mean}" scale: 0.5'), caffelite.TEST)
    net.forward()
    raw = np.stack([z[f"resized_lmdb/{i:08d}_img{i}.png/data"] for i in range(6)]).astype(np.float32)
    np.testing.assert_array_equal(net.blobs["data"].data, (raw - z["mean"]) * np.float32(0.5))
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1, 2, 0, 1, 2])
    enc = _net(tmp_path, _data_layer(os.path.join(LMDB_DIR, "encoded_lmdb"), 1, "force_color: true"), caffelite.TEST)
    for i in range(6):
        enc.forward()
        src = z[f"source/img{i}.png"]
        src = np.repeat(src[..., None], 3, 2) if src.ndim == 2 else src
        np.testing.assert_array_equal(enc.blobs["data"].data[0], src[..., ::-1].transpose(2, 0, 1))


def test_mixed_sizes_need_crop_or_batch_one(tmp_path):
    with pytest.raises(CaffeliteError, match="gray_lmdb"):
        net = _net(tmp_path, _data_layer(os.path.join(LMDB_DIR, "gray_lmdb"), 2))
        net.forward()


def _random_crop_net(tmp_path, name):
    return _net(tmp_path, _data_layer(os.path.join(SOLVER_DATA, "train_lmdb"), 8,
                                      "crop_size: 11 mirror: true scale: 0.00390625"), name=name)


def test_reader_state_resumes_exactly(tmp_path):
    """Position and random crop/mirror state survive a restore into a freshly built net."""
    caffelite.set_random_seed(5)
    a = _random_crop_net(tmp_path, "a.prototxt")
    for _ in range(5):
        a.forward()
    state = a.layers[0].get_reader_state()
    ref = []
    for _ in range(6):  # crosses the wrap at 64 records
        a.forward()
        ref.append((a.blobs["data"].data.copy(), a.blobs["label"].data.copy()))
    caffelite.set_random_seed(99)
    b = _random_crop_net(tmp_path, "b.prototxt")
    b.forward()
    b.layers[0].set_reader_state(state)
    for d, lab in ref:
        b.forward()
        np.testing.assert_array_equal(b.blobs["data"].data, d)
        np.testing.assert_array_equal(b.blobs["label"].data, lab)
    # randomness is real: crops differ across the batch and between two seeds
    assert not np.array_equal(ref[0][0], ref[1][0])


def test_same_seed_same_stream_any_worker_count(tmp_path):
    outs = []
    for threads in (1, 3):
        caffelite.set_random_seed(11)
        net = _net(tmp_path, _data_layer(os.path.join(SOLVER_DATA, "train_lmdb"), 8,
                                         "crop_size: 9 mirror: true", f"threads: {threads}"),
                   name=f"w{threads}.prototxt")
        seq = []
        for _ in range(4):
            net.forward()
            seq.append(net.blobs["data"].data.copy())
        outs.append(np.stack(seq))
    np.testing.assert_array_equal(outs[0], outs[1])


def _write_pair(tmp_path, n=6, h=12, w=14, label_h=None, n_labels=None):
    rng = np.random.default_rng(3)
    img_db, lab_db = str(tmp_path / "img_lmdb"), str(tmp_path / "lab_lmdb")
    imgs = rng.integers(0, 256, (n, 3, h, w), dtype=np.uint8)
    with LMDBWriter(img_db) as wi:
        for i in range(n):
            wi.put(f"{i:010d}", array_to_datum(imgs[i]).SerializeToString())
    with LMDBWriter(lab_db) as wl:
        for i in range(n if n_labels is None else n_labels):
            lab = imgs[i, :1, : (label_h or h)] % 5  # the label is a function of image channel 0
            wl.put(f"{i:010d}", array_to_datum(lab).SerializeToString())
    return img_db, lab_db, imgs


def _ild(img_db, lab_db, crop=8, mirror="true", batch=4, mean="mean_value: 0"):
    return (f'name: "data" type: "ImageLabelData" top: "data" top: "label" '
            f'transform_param {{ crop_size: {crop} mirror: {mirror} {mean} }} '
            f'image_label_data_param {{ image_list_path: "{img_db}" label_list_path: "{lab_db}" '
            f'batch_size: {batch} backend: LMDB threads: 1 }}')


def test_image_label_data_same_crop_and_mirror(tmp_path):
    img_db, lab_db, imgs = _write_pair(tmp_path)
    caffelite.set_random_seed(1)
    net = _net(tmp_path, _ild(img_db, lab_db))
    mirrored = 0
    for _ in range(6):
        net.forward()
        d, lab = net.blobs["data"].data, net.blobs["label"].data
        assert d.shape == (4, 3, 8, 8) and lab.shape == (4, 1, 8, 8)
        np.testing.assert_array_equal(d[:, 0] % 5, lab[:, 0])
        mirrored += sum(not any(np.array_equal(d[k, 0], imgs[i, 0, y:y + 8, x:x + 8])
                                for i in range(6) for y in range(5) for x in range(7)) for k in range(4))
    assert 0 < mirrored < 24  # some, not all, items were mirrored
    test = _net(tmp_path, _ild(img_db, lab_db, mirror="false"), caffelite.TEST, name="t.prototxt")
    test.forward()
    np.testing.assert_array_equal(test.blobs["data"].data, imgs[:4, :, 2:10, 3:11].astype(np.float32))


def test_image_label_data_bad_input(tmp_path):
    img_db, lab_db, _ = _write_pair(tmp_path / "a", n_labels=5)
    with pytest.raises(CaffeliteError, match="has 6 records but label LMDB .* has 5"):
        _net(tmp_path, _ild(img_db, lab_db))
    img_db, lab_db, _ = _write_pair(tmp_path / "b", label_h=10)
    with pytest.raises(CaffeliteError, match="lab_lmdb key 0000000000 is 10x14"):
        _net(tmp_path, _ild(img_db, lab_db)).forward()
    for field in ("scale_prob: 0.5", "rand_skip: 3", "padding: REFLECT"):  # 0.16-only fields that 0.17 ignores
        with pytest.raises(CaffeliteError, match=field.split(":")[0] + ".*0.16 ImageLabelListData only"):
            _net(tmp_path, _ild(img_db, lab_db).replace("threads: 1", f"threads: 1 {field}"))


def test_image_data_layer(tmp_path):
    z = load_npz(os.path.join(LMDB_DIR, "expected.npz"))
    src = os.path.join(LMDB_DIR, "list.txt")
    text = (f'name: "data" type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{src}" '
            f'root_folder: "{LMDB_DIR}/images/" batch_size: 3 new_height: 16 new_width: 16 }}')
    net = _net(tmp_path, text, caffelite.TEST)
    for rep in range(4):
        net.forward()
        for k in range(3):
            i = (3 * rep + k) % 6
            np.testing.assert_array_equal(net.blobs["data"].data[k], z[f"resized_lmdb/{i:08d}_img{i}.png/data"])
        np.testing.assert_array_equal(net.blobs["label"].data, [0, 1, 2] if rep % 2 == 0 else [0, 1, 2])
    # shuffle: each epoch is a permutation, reproducible per seed
    seen = []
    for _ in range(2):
        caffelite.set_random_seed(4)
        net = _net(tmp_path, text.replace("batch_size: 3", "batch_size: 6 shuffle: true"), name="s.prototxt")
        net.forward()
        seen.append(net.blobs["data"].data.copy())
    np.testing.assert_array_equal(seen[0], seen[1])
    sums = sorted(float(x) for x in seen[0].sum(axis=(1, 2, 3)))
    ref = sorted(float(z[f"resized_lmdb/{i:08d}_img{i}.png/data"].astype(np.float32).sum()) for i in range(6))
    assert sums == ref


def test_dummy_data(tmp_path):
    text = ('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 } '
            'shape { dim: 4 } data_filler { type: "constant" value: 7 } data_filler { type: "gaussian" std: 2 } }')
    net = _net(tmp_path, text)
    net.forward()
    assert net.blobs["a"].shape == (2, 3) and np.all(net.blobs["a"].data == 7)
    first = net.blobs["b"].data.copy()
    net.forward()
    assert net.blobs["b"].shape == (4,) and not np.array_equal(first, net.blobs["b"].data)


def test_missing_source_is_clear(tmp_path):
    with pytest.raises(CaffeliteError, match="nowhere_lmdb"):
        _net(tmp_path, _data_layer(str(tmp_path / "nowhere_lmdb")))


def test_image_label_data_resume(tmp_path):
    img_db, lab_db, _ = _write_pair(tmp_path, n=5)
    caffelite.set_random_seed(2)
    a = _net(tmp_path, _ild(img_db, lab_db, batch=2), name="a.prototxt")
    a.forward()
    a.forward()
    state = a.layers[0].get_reader_state()
    ref = []
    for _ in range(4):
        a.forward()
        ref.append((a.blobs["data"].data.copy(), a.blobs["label"].data.copy()))
    b = _net(tmp_path, _ild(img_db, lab_db, batch=2), name="b.prototxt")
    b.layers[0].set_reader_state(state)
    for d, lab in ref:
        b.forward()
        np.testing.assert_array_equal(b.blobs["data"].data, d)
        np.testing.assert_array_equal(b.blobs["label"].data, lab)


def test_image_label_data_mirrors_in_test_phase_like_caffe(tmp_path):
    """Caffe draws the mirror coin in TEST too when mirror is set (§e.2): centre crop, random flips, the same
    flip for image and label."""
    img_db, lab_db, imgs = _write_pair(tmp_path)
    caffelite.set_random_seed(3)
    net = _net(tmp_path, _ild(img_db, lab_db, batch=6), caffelite.TEST)
    centre = imgs[:, :, 2:10, 3:11].astype(np.float32)  # (12 - 8) // 2, (14 - 8) // 2
    flips = []
    for _ in range(4):
        net.forward()
        d, lab = net.blobs["data"].data, net.blobs["label"].data
        np.testing.assert_array_equal(d[:, 0] % 5, lab[:, 0])
        for k in range(6):
            if np.array_equal(d[k], centre[k]):
                flips.append(False)
            else:
                np.testing.assert_array_equal(d[k], centre[k][:, :, ::-1])
                flips.append(True)
    assert 0 < sum(flips) < len(flips)


def test_image_label_data_resumes_through_a_solver_snapshot(tmp_path, monkeypatch):
    """Train 6 iterations straight vs 3 + snapshot + resume for 3: the resumed run reads the same records with
    the same crops and flips, so the weights are bitwise equal."""
    from caffelite.backend import to_numpy
    from caffelite.solvers import get_solver

    img_db, lab_db, _ = _write_pair(tmp_path, n=5)
    (tmp_path / "net.prototxt").write_text(
        f'name: "seg"\nlayer {{ {_ild(img_db, lab_db, batch=2)} }}\n'
        'layer { name: "score" type: "Convolution" bottom: "data" top: "score" convolution_param { num_output: 5 '
        'kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" '
        'loss_param { ignore_label: 255 } }\n')
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\nbase_lr: 0.0001\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 6\nsnapshot: 3\n'
        'snapshot_prefix: "snap"\nrandom_seed: 7\ndisplay: 0\nsolver_mode: CPU\n')
    monkeypatch.chdir(tmp_path)

    def params(s):
        return [to_numpy(b.data).copy() for b in s.net.learnable_params]

    full = get_solver(str(tmp_path / "solver.prototxt"))
    full.solve()
    want = params(full)
    assert (tmp_path / "snap_iter_3.solverstate").exists()
    resumed = get_solver(str(tmp_path / "solver.prototxt"))
    resumed.solve(str(tmp_path / "snap_iter_3.solverstate"))
    for a, b in zip(params(resumed), want, strict=True):
        np.testing.assert_array_equal(a, b)
    # and the data did matter: a run started from scratch with another seed ends elsewhere
    (tmp_path / "solver.prototxt").write_text((tmp_path / "solver.prototxt").read_text().replace("seed: 7", "seed: 8"))
    other = get_solver(str(tmp_path / "solver.prototxt"))
    other.solve()
    assert not all(np.array_equal(a, b) for a, b in zip(params(other), want, strict=True))
