"""Datum/LMDB reading against the LMDBs written by BVLC's tools, the transformer, and convert_imageset."""

import os

import numpy as np
import pytest

from caffelite.data.datum import array_to_datum, datum_to_array, decode_image, encode_image, parse_datum
from caffelite.data.imageops import resize_linear, resize_nearest_pil
from caffelite.data.lmdb_io import LMDBReader
from caffelite.data.lmdb_tools import convert_imageset
from caffelite.data.reader import load_image
from caffelite.data.transformer import DataTransformer, read_mean_file
from caffelite.errors import CaffeliteError, FileFormatError
from caffelite.proto import caffe_pb2
from conftest import FIXTURES
from helpers import load_npz

LMDB_DIR = os.path.join(FIXTURES, "lmdb")
SOLVER_DATA = os.path.join(FIXTURES, "solvers", "_data")


@pytest.fixture(scope="module")
def expected():
    return load_npz(os.path.join(LMDB_DIR, "expected.npz"))


@pytest.mark.parametrize("db", ["resized_lmdb", "gray_lmdb", "encoded_lmdb"])
def test_reads_caffe_lmdbs(db, expected):
    r = LMDBReader(os.path.join(LMDB_DIR, db))
    keys = [k.decode() for k in r.keys]
    assert keys == [f"{i:08d}_img{i}.png" for i in range(6)]
    for i, k in enumerate(keys):
        d = r.datum(i)
        assert d.label == expected[f"{db}/{k}/label"]
        want = expected[f"{db}/{k}/data"]
        if db == "encoded_lmdb":
            assert d.encoded and d.channels == 0
            assert np.frombuffer(d.data, np.uint8).tobytes() == want.tobytes()
            # decoding gives the source pixels in BGR CHW (gray PNGs stay 1-channel)
            src = expected[f"source/img{i}.png"]
            got = datum_to_array(d)
            ref = src[None] if src.ndim == 2 else src[..., ::-1].transpose(2, 0, 1)
            np.testing.assert_array_equal(got, ref)
        else:
            np.testing.assert_array_equal(datum_to_array(d), want)
    r.close()


def test_gray_and_resize_match_opencv_bitwise(expected):
    for i in range(6):
        path = os.path.join(LMDB_DIR, "images", f"img{i}.png")
        np.testing.assert_array_equal(load_image(path, is_color=False),
                                      expected[f"gray_lmdb/{i:08d}_img{i}.png/data"])
        np.testing.assert_array_equal(resize_linear(load_image(path), 16, 16),
                                      expected[f"resized_lmdb/{i:08d}_img{i}.png/data"])


def test_mean_binaryproto(expected):
    m = read_mean_file(os.path.join(LMDB_DIR, "mean.binaryproto"))
    assert m.shape == (3, 16, 16)
    np.testing.assert_array_equal(m, expected["mean"])
    stack = np.stack([expected[f"resized_lmdb/{i:08d}_img{i}.png/data"] for i in range(6)]).astype(np.float64)
    np.testing.assert_allclose(m, stack.mean(0), rtol=1e-6)


def test_datum_roundtrip_raw_and_encoded():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 7, 5), dtype=np.uint8)
    d = parse_datum(array_to_datum(a, label=3).SerializeToString())
    assert (d.channels, d.height, d.width, d.label, d.encoded) == (3, 7, 5, 3, False)
    np.testing.assert_array_equal(datum_to_array(d), a)
    e = array_to_datum(None, 1, encoded_bytes=encode_image(a))
    np.testing.assert_array_equal(datum_to_array(e), a)
    np.testing.assert_array_equal(decode_image(encode_image(a[:1])), a[:1])
    assert decode_image(encode_image(a[:1]), force_color=True).shape == (3, 7, 5)


def test_bad_datum_names_source():
    with pytest.raises(FileFormatError, match="somewhere"):
        parse_datum(b"\xff\xff\xff", "somewhere")
    d = caffe_pb2.Datum(channels=3, height=2, width=2, data=b"123")
    with pytest.raises(FileFormatError, match="expected 3x2x2"):
        datum_to_array(d, source="db")


def _tp(**kw):
    tp = caffe_pb2.TransformationParameter()
    for k, v in kw.items():
        if k == "mean_value":
            tp.mean_value.extend(v)
        else:
            setattr(tp, k, v)
    return tp


def test_transformer_formula_crop_mirror_mean():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 9, 11), dtype=np.uint8)
    t = DataTransformer(_tp(scale=0.5, crop_size=4, mirror=True, mean_value=[10, 20, 30]), phase=0)
    draws = np.array([[1, 7, 100]], dtype=np.uint32)  # mirror, rows 7 % 6 = 1, cols 100 % 8 = 4
    out = t.apply(a, draws[0])
    ref = (a[:, 1:5, 4:8].astype(np.float32) - np.float32([10, 20, 30])[:, None, None]) * np.float32(0.5)
    np.testing.assert_array_equal(out, ref[:, :, ::-1])
    # TEST: centre crop, a mirror draw of 0 keeps the orientation
    t2 = DataTransformer(_tp(crop_size=4, mirror=True), phase=1)
    np.testing.assert_array_equal(t2.apply(a, np.array([0, 5, 5])), a[:, 2:6, 3:7].astype(np.float32))


def test_transformer_mean_file_is_cropped_with_the_record(tmp_path):
    mean = np.arange(3 * 6 * 6, dtype=np.float32).reshape(3, 6, 6)
    bp = caffe_pb2.BlobProto(num=1, channels=3, height=6, width=6)
    bp.data.extend(mean.ravel().tolist())
    p = tmp_path / "m.binaryproto"
    p.write_bytes(bp.SerializeToString())
    a = np.full((3, 6, 6), 200, np.uint8)
    t = DataTransformer(_tp(mean_file=str(p), crop_size=2), phase=1)
    np.testing.assert_array_equal(t.apply(a, np.zeros(3)), 200 - mean[:, 2:4, 2:4])
    with pytest.raises(CaffeliteError, match="mean_file shape"):
        t.apply(np.zeros((3, 5, 5), np.uint8), np.zeros(3))


def test_transformer_rejects_unsupported():
    tp = _tp()
    tp.resize_param.height = 3
    with pytest.raises(CaffeliteError, match="resize_param"):
        DataTransformer(tp, 0)


def test_nearest_resize_matches_pil():
    from PIL import Image

    a = np.random.default_rng(2).integers(0, 5, (13, 17), dtype=np.uint8)
    for oh, ow in [(26, 34), (7, 9), (13, 40)]:
        ref = np.asarray(Image.fromarray(a).resize((ow, oh), Image.NEAREST))
        np.testing.assert_array_equal(resize_nearest_pil(a, oh, ow), ref)


@pytest.mark.parametrize("db,kw", [("resized_lmdb", dict(resize_height=16, resize_width=16)),
                                   ("gray_lmdb", dict(gray=True)), ("encoded_lmdb", dict(encoded=True))])
def test_convert_imageset_reproduces_caffe(tmp_path, db, kw):
    out = tmp_path / db
    n = convert_imageset(LMDB_DIR + "/images/", os.path.join(LMDB_DIR, "list.txt"), str(out), **kw)
    assert n == 6
    ours, theirs = LMDBReader(out), LMDBReader(os.path.join(LMDB_DIR, db))
    assert ours.keys == theirs.keys
    for i in range(6):
        assert ours.get(i) == theirs.get(i)  # byte-identical serialized Datums
    ours.close()
    theirs.close()


def test_convert_imageset_cli(tmp_path):
    from caffelite.cli import main

    rc = main(["data", "convert-imageset", LMDB_DIR + "/images/", os.path.join(LMDB_DIR, "list.txt"),
               str(tmp_path / "db"), "--resize_height", "8", "--resize_width", "8", "--shuffle"])
    assert rc == 0
    r = LMDBReader(tmp_path / "db")
    assert len(r) == 6 and all(r.datum(i).height == 8 for i in range(6))
    assert sorted(k.decode()[9:] for k in r.keys) == [f"img{i}.png" for i in range(6)]


def test_solver_fixture_lmdb_equals_npz():
    z = load_npz(os.path.join(SOLVER_DATA, "data.npz"))
    for split in ("train", "test"):
        r = LMDBReader(os.path.join(SOLVER_DATA, f"{split}_lmdb"))
        assert len(r) == len(z[f"{split}/label"])
        for i in range(len(r)):
            d = r.datum(i)
            np.testing.assert_array_equal(datum_to_array(d), z[f"{split}/data"][i])
            assert d.label == z[f"{split}/label"][i]


def test_prefetcher_keeps_plan_order_and_reraises():
    import random
    import time

    from caffelite.data.prefetch import Prefetcher

    counter = {"n": 0}

    def plan():
        counter["n"] += 1
        return counter["n"], {"after": counter["n"]}

    def work(k):
        time.sleep(random.random() * 0.003)  # workers finish out of order
        if k == 9:
            raise FileFormatError("rec9", "broken")
        return k * 10

    p = Prefetcher(plan, work, depth=4, workers=3)
    got = [p.next() for _ in range(8)]
    assert [g[0] for g in got] == [10 * k for k in range(1, 9)]
    assert [g[1]["after"] for g in got] == list(range(1, 9))
    with pytest.raises(FileFormatError, match="rec9"):
        p.next()
    p.reset()
    counter["n"] = 0  # the caller rewinds its planning state after a reset
    assert p.next()[0] == 10
    p.close()


def test_rewritten_lmdb_at_same_path_is_reread(tmp_path):
    import shutil

    from caffelite.data.lmdb_io import LMDBWriter

    p = tmp_path / "db"
    for value in (1, 2):
        if p.exists():
            shutil.rmtree(p)
        with LMDBWriter(p) as w:
            w.put("k", array_to_datum(np.full((1, 2, 2), value, np.uint8)).SerializeToString())
        keep = LMDBReader(p)  # still open while the next one is written
        assert datum_to_array(keep.datum(0))[0, 0, 0] == value
    keep.close()


def test_fast_datum_view_equals_protobuf():
    from caffelite.data.datum import raw_datum_view

    rng = np.random.default_rng(5)
    for label in (0, 7, -1, 2**31 - 1):
        a = rng.integers(0, 256, (2, 3, 4), dtype=np.uint8)
        buf = array_to_datum(a, label=label).SerializeToString()
        arr, lab = raw_datum_view(buf)
        np.testing.assert_array_equal(arr, a)
        assert lab == label == parse_datum(buf).label
    assert raw_datum_view(array_to_datum(None, 1, encoded_bytes=b"png").SerializeToString()) is None


def test_mean_value_count_checked_even_when_zero():
    t = DataTransformer(_tp(mean_value=[0, 0]), phase=1)
    with pytest.raises(CaffeliteError, match="mean_value has 2 values; specify 1 or 3"):
        t.apply(np.zeros((3, 2, 2), np.uint8), np.zeros(3))
    one = DataTransformer(_tp(mean_value=[5]), phase=1)
    np.testing.assert_array_equal(one.apply(np.full((3, 2, 2), 7, np.uint8), np.zeros(3)), np.full((3, 2, 2), 2.0))


def test_reader_finalizer_inside_the_shared_lock_does_not_block():
    """The garbage collector may finalize a reader while this thread holds the environments' lock (seen as a
    hang: GC fired inside lmdb.open); the finalizer must queue the release, not wait for the lock."""
    import threading

    from caffelite.data import lmdb_io
    path = os.path.join(os.path.dirname(__file__), "data", "fixtures", "lmdb", "gray_lmdb")
    r = lmdb_io.LMDBReader(path)
    entry = r._entry
    count = entry[1]
    with lmdb_io._ENVS_LOCK:
        t = threading.Thread(target=r.__del__)
        t.start()
        t.join(5)
        blocked = t.is_alive()
    t.join()
    assert not blocked
    assert entry in lmdb_io._PENDING and entry[1] == count  # queued, not yet released
    r2 = lmdb_io.LMDBReader(path)  # the next open settles the queue
    assert not lmdb_io._PENDING
    assert len(r2) > 0
    r2.close()
