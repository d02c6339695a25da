"""The synthetic Cityscapes generator: layout, real label ids, determinism, variety, CLI."""

import os

import numpy as np
from PIL import Image

from caffelite.cli import main
from caffelite.segmentation.cityscapes import LABEL_MAP_5, create_lists, map_labels
from caffelite.segmentation.synthetic import render_scene


def test_scene_uses_real_label_ids_and_all_five_classes():
    ids, classes = set(), set()
    for i in range(12):
        img, lab = render_scene(256, 128, np.random.default_rng([0, 0, i]))
        assert img.shape == (128, 256, 3) and img.dtype == np.uint8 and lab.shape == (128, 256)
        ids |= set(np.unique(lab).tolist())
        classes |= set(np.unique(map_labels(lab)).tolist())
    assert ids <= set(LABEL_MAP_5)
    assert {7, 8, 11, 19, 20, 21, 23, 24, 25, 26, 27, 33} <= ids
    assert {0, 1, 2, 3, 4} <= classes


def test_deterministic_and_varied():
    a = render_scene(128, 64, np.random.default_rng([3, 0, 1]))
    b = render_scene(128, 64, np.random.default_rng([3, 0, 1]))
    c = render_scene(128, 64, np.random.default_rng([3, 0, 2]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])
    # not trivial: one colour does not decide the class (road and vehicle colours overlap across scenes)
    means = []
    for i in range(10):
        img, lab = render_scene(128, 64, np.random.default_rng([0, 0, i]))
        m = map_labels(lab)
        means.append([img[m == k].mean() if (m == k).any() else np.nan for k in (1, 4)])
    means = np.array(means)
    assert np.nanstd(means[:, 1]) > 20  # vehicle brightness varies a lot


def test_cli_layout_and_lists(tmp_path):
    out = tmp_path / "syn"
    assert main(["data", "synthetic-cityscapes", "--out", str(out), "--train", "4", "--val", "2",
                 "--size", "96x48", "--seed", "7"]) == 0
    imgs = sorted((out / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))
    assert len(imgs) == 4 and len(list((out / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))) == 2
    assert Image.open(imgs[0]).size == (96, 48)
    res = create_lists(str(out), str(tmp_path / "data"))
    assert all(len(open(p).read().split()) == n for (p, _), n in zip(res.values(), (4, 2), strict=True))
    # same seed, same bytes
    out2 = tmp_path / "syn2"
    main(["data", "synthetic-cityscapes", "--out", str(out2), "--train", "4", "--val", "0", "--size", "96x48",
          "--seed", "7"])
    rel = os.path.relpath(imgs[0], out)
    assert (out / rel).read_bytes() == (out2 / rel).read_bytes()


def test_synthetic_to_lmdb_to_image_label_data(tmp_path):
    """The whole data flow at toy size: generate, list, LMDBs, then the ImageLabelData layer feeds 5 classes."""
    import caffelite
    from caffelite.segmentation.lmdbs import create_segmentation_lmdbs

    out = tmp_path / "syn"
    main(["data", "synthetic-cityscapes", "--out", str(out), "--train", "6", "--val", "0", "--size", "64x32"])
    (il, ll), = create_lists(str(out), str(tmp_path / "d"), ["train"]).values()
    create_segmentation_lmdbs(il, ll, tmp_path / "i", tmp_path / "l")
    proto = tmp_path / "n.prototxt"
    proto.write_text(f'''layer {{ name: "data" type: "ImageLabelData" top: "data" top: "label"
      transform_param {{ mirror: true crop_size: 24 mean_value: 0 }}
      image_label_data_param {{ image_list_path: "{tmp_path / 'i'}" label_list_path: "{tmp_path / 'l'}"
        batch_size: 4 shuffle: true threads: 1 backend: LMDB }} }}''')
    net = caffelite.Net(str(proto), caffelite.TRAIN)
    seen = set()
    for _ in range(3):
        net.forward()
        assert net.blobs["data"].shape == (4, 3, 24, 24)
        assert 0 <= net.blobs["data"].data.min() and net.blobs["data"].data.max() <= 255
        seen |= set(np.unique(net.blobs["label"].data).tolist())
    assert seen <= {0, 1, 2, 3, 4, 255} and {0, 1} <= seen


def _stride8_upper_bound(lab5, stride=8):
    """Scores of the best a stride-8 net (jsegnet21v2's output stride) can do: per-class block averages,
    upsampled bilinearly, argmax. Objects narrower than a few cells cannot be segmented at all."""
    h, w = lab5.shape
    onehot = np.stack([(lab5 == c).astype(np.float32) for c in range(5)])
    small = onehot.reshape(5, h // stride, stride, w // stride, stride).mean(axis=(2, 4))
    up = np.stack([np.asarray(Image.fromarray(p, "F").resize((w, h), Image.BILINEAR)) for p in small])
    return up.argmax(0)


def test_objects_are_big_enough_to_learn_at_256x128():
    """At the quick run's 256x128, persons and signs/lights are several output cells wide: a stride-8 predictor
    can reach a high mean IoU, so the flagship's >= 70% target is about learning, not about resolution."""
    from caffelite.segmentation.metrics import ConfusionAccumulator

    acc = ConfusionAccumulator(5)
    widths = {2: [], 3: []}
    for i in range(16):
        _, lab = render_scene(256, 128, np.random.default_rng([1, 1, i]))
        m = map_labels(lab)
        acc.update(m, _stride8_upper_bound(m))
        for c in widths:
            b = np.pad((m == c).astype(np.int8), ((0, 0), (1, 1)))
            d = np.diff(b, axis=1)
            runs = np.flatnonzero(d.ravel() == -1) - np.flatnonzero(d.ravel() == 1)
            widths[c].extend(np.repeat(runs, runs).tolist())  # pixel-weighted horizontal run lengths
    s = acc.scores()["jacinto"]
    assert s["mean_iou"] > 0.82 and min(s["iou"]) > 0.7, s
    assert np.median(widths[2]) >= 10 and np.median(widths[3]) >= 10
    assert np.percentile(widths[2], 10) >= 5 and np.percentile(widths[3], 10) >= 6


def test_signs_and_lights_stand_out_by_colour():
    """Sign/light pixels are saturated (red, blue, yellow, lit lamps) or near-white/near-black, unlike most
    of the background they stand against."""
    sat_sign, sat_bg = [], []
    for i in range(8):
        img, lab = render_scene(256, 128, np.random.default_rng([2, 0, i]))
        m = map_labels(lab)
        f = img.astype(np.float32)
        sat = f.max(-1) - f.min(-1)
        extreme = (sat > 70) | (f.max(-1) > 215) | (f.max(-1) < 45)
        sat_sign.append(extreme[m == 3].mean())
        sat_bg.append(extreme[m == 0].mean())
    assert np.mean(sat_sign) > 0.6 and np.mean(sat_bg) < 0.3, (np.mean(sat_sign), np.mean(sat_bg))
