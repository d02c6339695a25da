"""Cityscapes lists, the 34-id → 5-class table (§g.1), image/label LMDBs (§g.2) and their validation."""

import os

import numpy as np
import pytest
from PIL import Image

from caffelite.cli import main
from caffelite.segmentation.cityscapes import LABEL_MAP_5, DatasetError, create_lists, map_labels
from caffelite.data.datum import datum_to_array
from caffelite.data.lmdb_io import LMDBReader, LMDBWriter
from caffelite.segmentation.lmdbs import create_segmentation_lmdbs, validate_segmentation_lmdbs


def test_label_table_is_jacintos():
    ids = np.arange(34, dtype=np.uint8)
    got = map_labels(ids)
    want = np.full(34, 0, np.uint8)
    want[[0, 2, 3]] = 255
    want[7] = 1
    want[[24, 25, 32, 33]] = 2
    want[[19, 20]] = 3
    want[26:32] = 4
    np.testing.assert_array_equal(got, want)
    assert map_labels(np.array([255], np.uint8))[0] == 255
    assert len(LABEL_MAP_5) == 35


def test_label_outside_table_names_file():
    with pytest.raises(DatasetError, match="f.png: label id 40"):
        map_labels(np.array([[7, 40]], np.uint8), source="f.png")


def _mini_cityscapes(root, n=3, h=8, w=10, split="train"):
    rng = np.random.default_rng(0)
    for i in range(n):
        city = "aachen" if i % 2 == 0 else "bochum"
        stem = f"{city}_{i:06d}_000019"
        di = root / "leftImg8bit" / split / city
        dl = root / "gtFine" / split / city
        di.mkdir(parents=True, exist_ok=True)
        dl.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(di / f"{stem}_leftImg8bit.png")
        lab = rng.choice([0, 7, 8, 24, 26, 20], size=(h, w)).astype(np.uint8)
        Image.fromarray(lab).save(dl / f"{stem}_gtFine_labelIds.png")


def test_create_lists_and_lmdbs(tmp_path):
    root = tmp_path / "cs"
    _mini_cityscapes(root, 5)
    out = tmp_path / "data"
    assert main(["data", "cityscapes-lists", "--root", str(root), "--out", str(out), "--splits", "train"]) == 0
    imgs = (out / "train-image-list.txt").read_text().split()
    labs = (out / "train-label-list.txt").read_text().split()
    assert len(imgs) == len(labs) == 5 and imgs == sorted(imgs)
    for a, b in zip(imgs, labs, strict=True):
        frame = os.path.basename(a).replace("_leftImg8bit.png", "")
        assert os.path.basename(b) == frame + "_gtFine_labelIds.png"
        src = np.asarray(Image.open(str(root / "gtFine" / "train" / frame.split("_")[0] / os.path.basename(b))))
        np.testing.assert_array_equal(np.asarray(Image.open(b)), map_labels(src))
    rc = main(["data", "lmdb", "--image-list", str(out / "train-image-list.txt"), "--label-list",
               str(out / "train-label-list.txt"), "--image-lmdb", str(out / "img"), "--label-lmdb", str(out / "lab")])
    assert rc == 0
    ri, rl = LMDBReader(out / "img"), LMDBReader(out / "lab")
    assert [k.decode() for k in ri.keys] == [f"{i:010d}" for i in range(5)]
    perm = np.random.RandomState(1).permutation(5)  # jacinto: np.random.seed(1); np.random.shuffle(list)
    for k in range(5):
        d = ri.datum(k)
        assert (d.channels, d.height, d.width, d.encoded, d.HasField("label")) == (3, 8, 10, False, False)
        rgb = np.asarray(Image.open(imgs[perm[k]]))
        np.testing.assert_array_equal(datum_to_array(d), rgb[..., ::-1].transpose(2, 0, 1))
        np.testing.assert_array_equal(datum_to_array(rl.datum(k))[0], np.asarray(Image.open(labs[perm[k]])))
    ri.close()
    rl.close()
    assert main(["data", "validate", "--image-lmdb", str(out / "img"), "--label-lmdb", str(out / "lab"),
                 "--num-classes", "5"]) == 0
    s = validate_segmentation_lmdbs(out / "img", out / "lab", 5)
    assert s["records"] == 5 and set(s["label_counts"]) <= {0, 1, 2, 3, 4, 255}


def test_resize_option(tmp_path):
    root = tmp_path / "cs"
    _mini_cityscapes(root, 2, h=16, w=32)
    out = tmp_path / "data"
    create_lists(str(root), str(out), ["train"])
    create_segmentation_lmdbs(out / "train-image-list.txt", out / "train-label-list.txt", out / "i", out / "l",
                              size=(16, 8))
    s = validate_segmentation_lmdbs(out / "i", out / "l")
    assert s["shapes"] == [(3, 8, 16)]


def test_bad_inputs_name_the_file(tmp_path, capsys):
    root = tmp_path / "cs"
    (root / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="gtFine: missing"):
        create_lists(str(root), str(tmp_path / "o"), ["train"])
    assert main(["data", "cityscapes-lists", "--root", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "gtFine" in capsys.readouterr().err
    root2 = tmp_path / "cs2"
    _mini_cityscapes(root2, 2)
    os.remove(root2 / "gtFine" / "train" / "bochum" / "bochum_000001_000019_gtFine_labelIds.png")
    with pytest.raises(DatasetError, match="bochum_000001_000019_gtFine_labelIds.png: label file missing"):
        create_lists(str(root2), str(tmp_path / "o2"), ["train"])
    # a label id outside the table
    root3 = tmp_path / "cs3"
    _mini_cityscapes(root3, 1)
    bad = root3 / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((8, 10), 50, np.uint8)).save(bad)
    with pytest.raises(DatasetError, match="aachen_000000_000019_gtFine_labelIds.png: label id 50"):
        create_lists(str(root3), str(tmp_path / "o3"), ["train"])
    # lists of different lengths / mismatched names
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("x/f1_leftImg8bit.png\nx/f2_leftImg8bit.png\n")
    b.write_text("y/f1_gtFine_labelIds.png\n")
    with pytest.raises(DatasetError, match="a.txt has 2 lines but .*b.txt has 1"):
        create_segmentation_lmdbs(a, b, tmp_path / "i", tmp_path / "l")
    b.write_text("y/f1_gtFine_labelIds.png\ny/f3_gtFine_labelIds.png\n")
    with pytest.raises(DatasetError, match="b.txt:2: label .*f3_gtFine_labelIds.png does not match"):
        create_segmentation_lmdbs(a, b, tmp_path / "i", tmp_path / "l")


def test_validator_catches_size_mismatch(tmp_path):
    from caffelite.data.datum import array_to_datum

    with LMDBWriter(tmp_path / "i") as w:
        w.put("0000000000", array_to_datum(np.zeros((3, 4, 5), np.uint8)).SerializeToString())
    with LMDBWriter(tmp_path / "l") as w:
        w.put("0000000000", array_to_datum(np.zeros((1, 4, 6), np.uint8)).SerializeToString())
    with pytest.raises(DatasetError, match="record 0000000000 is 4x6 but the image record"):
        validate_segmentation_lmdbs(tmp_path / "i", tmp_path / "l")


def test_string_keys_in_a_label_dict():
    """jacinto's scripts pass the table as text ('{"7": "1", ...}' via exec); string keys and values work here."""
    got = map_labels(np.array([[7, 26], [24, 3]], np.uint8), {"7": "1", "26": "4", "24": "2", "3": "255"})
    np.testing.assert_array_equal(got, [[1, 4], [2, 255]])
    with pytest.raises(DatasetError, match="label id 8 is not in the label table"):
        map_labels(np.array([8], np.uint8), {"7": "1"}, source="x.png")
