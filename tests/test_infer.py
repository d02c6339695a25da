"""Inference and evaluation with a tiny deploy net whose prediction is known: class = argmax over B, G, R."""

import os

import numpy as np
import pytest
from PIL import Image

import caffelite
from caffelite.cli import main
from caffelite.segmentation.cityscapes import PALETTE_5
from caffelite.segmentation.infer import (InputError, Segmenter, chroma_blend, collect_inputs, evaluate_lists,
                                          run_inference)

DEPLOY = """name: "t"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 12 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "argMaxOut" type: "ArgMax" bottom: "score" top: "argMaxOut" argmax_param { axis: 1 } }
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    proto = d / "deploy.prototxt"
    proto.write_text(DEPLOY)
    net = caffelite.Net(str(proto), caffelite.TEST)
    net.params["conv"][0].data[...] = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    net.params["conv"][1].data[...] = 0
    weights = d / "w.caffemodel"
    net.save(str(weights))
    return str(proto), str(weights)


def _blocky_image(path, h=16, w=24):
    """Left third red, middle green, right blue (RGB file), so BGR argmax gives 2, 1, 0."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 3] = (200, 30, 30)
    rgb[:, w // 3: 2 * w // 3] = (30, 200, 30)
    rgb[:, 2 * w // 3:] = (30, 30, 200)
    Image.fromarray(rgb).save(path)
    pred = np.zeros((h, w), np.uint8)
    pred[:, : w // 3] = 2
    pred[:, w // 3: 2 * w // 3] = 1
    return pred


def test_predict_resizes_to_net_and_back(model, tmp_path):
    want = _blocky_image(tmp_path / "a.png")
    seg = Segmenter(*model)
    from caffelite.data.reader import load_image

    got = seg.predict(load_image(str(tmp_path / "a.png")))
    assert got.shape == (16, 24)
    np.testing.assert_array_equal(got, want)


def test_infer_cli_writes_ids_and_overlays(model, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    want = _blocky_image(imgs / "x.png")
    _blocky_image(imgs / "y.png", 8, 12)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{imgs / 'x.png'}\n")
    out = tmp_path / "out"
    assert main(["infer", "--model", model[0], "--weights", model[1], str(imgs), str(lst), "--out", str(out),
                 "--blend"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "x.png")), want)
    ov = np.asarray(Image.open(out / "overlay" / "x.png"))
    assert ov.shape == (16, 24, 3)
    assert len((out / "output_name_list.txt").read_text().split()) == 3


def test_chroma_blend_keeps_luma_takes_palette_chroma():
    gray = np.full((2, 2, 3), 128, np.uint8)
    pred = np.array([[0, 1], [2, 4]])
    out = chroma_blend(gray, pred).astype(np.float32)
    y = out[..., 2] * 0.299 + out[..., 1] * 0.587 + out[..., 0] * 0.114
    np.testing.assert_allclose(y, 128, atol=3)  # up to clipping of saturated chroma
    np.testing.assert_array_equal(out[0, 0], [128, 128, 128])  # class 0 is black: no chroma
    pal = PALETTE_5[1].astype(np.float32)  # road is purple-ish: R and B above G
    assert out[0, 1, 2] > out[0, 1, 1] and out[0, 1, 0] > out[0, 1, 1] and pal[0] > pal[1]


def test_eval_conventions_and_cli(model, tmp_path, capsys):
    imgs, labs = [], []
    for i in range(2):
        want = _blocky_image(tmp_path / f"f{i}_leftImg8bit.png")
        lab = want.copy()
        lab[0, :] = 255
        lab[1, :4] = 4  # wrong on purpose: predicted 2, truth 4
        Image.fromarray(lab).save(tmp_path / f"f{i}_gtFine_labelIds.png")
        imgs.append(str(tmp_path / f"f{i}_leftImg8bit.png"))
        labs.append(str(tmp_path / f"f{i}_gtFine_labelIds.png"))
    (tmp_path / "i.txt").write_text("\n".join(imgs) + "\n")
    (tmp_path / "l.txt").write_text("\n".join(labs) + "\n")
    acc = evaluate_lists(Segmenter(*model), tmp_path / "i.txt", tmp_path / "l.txt", 5, progress=False)
    assert acc.matrix.sum() == 2 * 15 * 24 and acc.matrix[4, 2] == 8
    s = acc.scores()["jacinto"]
    assert s["pixel_accuracy"] == pytest.approx(1 - 8 / 720)
    assert main(["eval", "--model", model[0], "--weights", model[1], "--images", str(tmp_path / "i.txt"),
                 "--labels", str(tmp_path / "l.txt"), "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    assert "\nFinal: pixel_accuracy=0.988889, mean_iou=" in out and out.startswith("pixel_accuracy=")
    assert "road sign" in out and "nanmean:" in out


def test_bad_inputs(model, tmp_path, capsys):
    with pytest.raises(InputError, match="nothing.xyz: no such file"):
        collect_inputs([str(tmp_path / "nothing.xyz")])
    _blocky_image(tmp_path / "a.png")
    seg = Segmenter(*model, resize=(10, 10))
    with pytest.raises(InputError, match="a.png: image is 3x10x10 after resize but the deploy input is 3x8x12"):
        run_inference(seg, [str(tmp_path / "a.png")], str(tmp_path / "o"), progress=False)
    assert main(["infer", "--model", model[0], "--weights", model[1], str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "o"), "--resize", "10x10"]) == 2
    assert "deploy input is 3x8x12" in capsys.readouterr().err
    assert os.path.exists(model[0])


def test_video_path_with_a_stub_imageio(model, tmp_path, monkeypatch):
    """The video branch (frames RGB in, overlay frames out, fps rounded up) without the real extra."""
    import sys
    import types

    frames = [np.zeros((16, 24, 3), np.uint8) for _ in range(3)]
    for f in frames:
        f[:, :8] = (200, 30, 30)
    written = {}

    class Reader:
        def __iter__(self):
            return iter(frames)

        def get_meta_data(self):
            return {"fps": 24.5}

        def close(self):
            pass

    fail_at = []

    class Writer:
        def __init__(self, path, fps):
            written.update(path=path, fps=fps, frames=[])
            self.f = open(path, "wb")

        def append_data(self, fr):
            if fail_at and len(written["frames"]) == fail_at[0]:
                raise KeyboardInterrupt
            written["frames"].append(fr)
            self.f.write(b"frame")

        def close(self):
            self.f.close()

    v2 = types.SimpleNamespace(get_reader=lambda p: Reader(), get_writer=lambda p, fps: Writer(p, fps))
    pkg = types.ModuleType("imageio")
    pkg.v2 = v2
    monkeypatch.setitem(sys.modules, "imageio", pkg)
    monkeypatch.setitem(sys.modules, "imageio.v2", v2)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0")
    out = run_inference(Segmenter(*model), [str(video)], str(tmp_path / "o"), progress=False)
    dst = tmp_path / "o" / "clip_overlay.mp4"
    assert out == [str(dst)] and written["fps"] == 25
    assert len(written["frames"]) == 3 and written["frames"][0].shape == (16, 24, 3)
    # red input -> class 2 (person, palette crimson): the overlay's red channel dominates there
    assert written["frames"][0][:, :8, 0].mean() > written["frames"][0][:, :8, 2].mean()
    # the encoder wrote a temporary file with the same extension, renamed over the real name when complete
    assert written["path"] != str(dst) and written["path"].endswith(".mp4") and dst.read_bytes() == b"frame" * 3
    assert sorted(os.listdir(tmp_path / "o")) == ["clip_overlay.mp4", "output_name_list.txt", "overlay"]
    # interrupted mid-video: the previous complete video stays as it was, and no temporary file is left
    fail_at.append(1)
    with pytest.raises(KeyboardInterrupt):
        run_inference(Segmenter(*model), [str(video)], str(tmp_path / "o"), progress=False)
    assert dst.read_bytes() == b"frame" * 3
    assert sorted(os.listdir(tmp_path / "o")) == ["clip_overlay.mp4", "output_name_list.txt", "overlay"]


def _eval_lists(tmp_path, n=2):
    imgs, labs = [], []
    for i in range(n):
        want = _blocky_image(tmp_path / f"f{i}_leftImg8bit.png")
        want[2:4, :3] = 3  # a few road-sign pixels the net calls person
        Image.fromarray(want).save(tmp_path / f"f{i}_gtFine_labelIds.png")
        imgs.append(str(tmp_path / f"f{i}_leftImg8bit.png"))
        labs.append(str(tmp_path / f"f{i}_gtFine_labelIds.png"))
    (tmp_path / "i.txt").write_text("\n".join(imgs) + "\n")
    (tmp_path / "l.txt").write_text("\n".join(labs) + "\n")
    return str(tmp_path / "i.txt"), str(tmp_path / "l.txt")


def test_eval_writes_confusion_png(model, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    il, ll = _eval_lists(tmp_path)
    png = tmp_path / "plots" / "cm.png"
    assert main(["eval", "--model", model[0], "--weights", model[1], "--images", il, "--labels", ll,
                 "--num-classes", "5", "--resize", "12x8", "--confusion-png", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"confusion matrix written to {png}" in out
    # 12 of 768 pixels (road sign) predicted as person: class 3 is present but never hit (IoU 0), class 4 is
    # absent (left out of jacinto's mean, NaN in the nanmean convention)
    assert "Final: pixel_accuracy=0.984375, mean_iou=0.738281, iou=[1 1 0.953125 0 0]" in out
    assert "nanmean: pixel_accuracy=0.984375, mean_iou=0.738281" in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.std() > 10  # a drawn matrix, not a blank canvas


def test_eval_confusion_png_without_plot_extra(model, tmp_path, capsys, monkeypatch):
    """Without matplotlib the command fails before the long run with the install hint, naming the PNG."""
    import builtins
    import sys

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    il, ll = _eval_lists(tmp_path)
    png = tmp_path / "cm.png"
    rc = main(["eval", "--model", model[0], "--weights", model[1], "--images", il, "--labels", ll,
               "--confusion-png", str(png)])
    err = capsys.readouterr().err
    assert rc == 2 and "cm.png" in err and "pip install 'caffelite[plot]'" in err
    assert not png.exists()


def test_real_video_round_trip(model, tmp_path):
    """A real mp4 (video extra): every frame is segmented and the overlay video keeps frame count and size."""
    iio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    src = tmp_path / "clip.mp4"
    frame = np.zeros((32, 48, 3), np.uint8)
    frame[:, :16], frame[:, 16:32], frame[:, 32:] = (200, 30, 30), (30, 200, 30), (30, 30, 200)
    w = iio.get_writer(str(src), fps=10)
    for k in range(5):
        w.append_data(np.roll(frame, k, axis=1))
    w.close()
    out = tmp_path / "o"
    assert main(["infer", "--model", model[0], "--weights", model[1], str(src), "--out", str(out), "--blend"]) == 0
    dst = out / "clip_overlay.mp4"
    r = iio.get_reader(str(dst))
    frames = [np.asarray(f) for f in r]
    assert r.get_meta_data()["fps"] == 10
    r.close()
    assert len(frames) == 5 and frames[0].shape == (32, 48, 3)
    # red -> person (crimson, red chroma), blue -> background (no chroma: grey)
    f0 = frames[0].astype(np.int32)
    assert f0[:, 2:14, 0].mean() > f0[:, 2:14, 2].mean() + 40
    assert abs(f0[:, 36:46, 0].mean() - f0[:, 36:46, 2].mean()) < 15
    assert (out / "output_name_list.txt").read_text().split() == [str(dst)]


def test_video_without_the_video_extra(model, tmp_path, monkeypatch, capsys):
    """imageio missing: a clear message naming the video and the extra, from the library and the CLI."""
    import sys

    for mod in [m for m in sys.modules if m == "imageio" or m.startswith("imageio.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "imageio", None)  # makes `import imageio...` raise ImportError
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    with pytest.raises(InputError, match=r"v.mp4: video input/output needs the 'video' extra"):
        collect_inputs([str(video)])
    assert main(["infer", "--model", model[0], "--weights", model[1], str(video), "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'caffelite[video]'" in capsys.readouterr().err


def test_folder_inputs_include_videos(model, tmp_path, monkeypatch):
    """A folder's videos are segmented with its images (sorted, subfolders included); without the video
    extra, a video in a folder gives the extra's message naming that file."""
    iio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    _blocky_image(folder / "a.png")
    w = iio.get_writer(str(folder / "sub" / "clip.mp4"), fps=10)
    for _ in range(3):
        w.append_data(np.zeros((8, 12, 3), np.uint8))
    w.close()
    (folder / "notes.txt").write_text("not an input")
    assert collect_inputs([str(folder)]) == [("image", str(folder / "a.png")),
                                             ("video", str(folder / "sub" / "clip.mp4"))]
    out = run_inference(Segmenter(*model), [str(folder)], str(tmp_path / "o"), progress=False)
    assert out == [str(tmp_path / "o" / "a.png"), str(tmp_path / "o" / "clip_overlay.mp4")]
    import sys
    for mod in [m for m in sys.modules if m == "imageio" or m.startswith("imageio.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "imageio", None)
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    with pytest.raises(InputError, match=r"clip.mp4: video input/output needs the 'video' extra"):
        collect_inputs([str(folder)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="folder has no images or videos"):
        collect_inputs([str(empty)])
