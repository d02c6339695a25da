"""pycaffe's caffe.io helpers in caffelite.io: Transformer, load_image, resize_image, oversample, and the
BlobProto / Datum conversions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import caffelite
from caffelite import io as cio
from caffelite.proto import caffe_pb2


def _transformer():
    t = cio.Transformer({"data": (2, 3, 6, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_preprocess_applies_steps_in_pycaffe_order():
    rng = np.random.default_rng(0)
    img = rng.random((6, 5, 3)).astype(np.float32)
    out = _transformer().preprocess("data", img)
    assert out.shape == (3, 6, 5) and out.dtype == np.float32
    # transpose to C x H x W, RGB -> BGR, x255, minus the per-channel mean, x0.5
    expect = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255.0 - np.array([10.0, 20.0, 30.0])[:, None, None]) * 0.5
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-4)


def test_deprocess_inverts_preprocess():
    rng = np.random.default_rng(1)
    img = rng.random((6, 5, 3)).astype(np.float32)
    t = _transformer()
    back = t.deprocess("data", t.preprocess("data", img)[None])
    np.testing.assert_allclose(back, img, atol=1e-5)


def test_preprocess_resizes_to_the_input_size():
    t = cio.Transformer({"data": (1, 3, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    img = np.ones((9, 7, 3), np.float32) * 0.25
    out = t.preprocess("data", img)
    assert out.shape == (3, 4, 4)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_elementwise_mean_and_errors():
    t = cio.Transformer({"data": (1, 3, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    mean = np.arange(48, dtype=np.float32).reshape(3, 4, 4)
    t.set_mean("data", mean)
    out = t.preprocess("data", np.zeros((4, 4, 3), np.float32))
    np.testing.assert_allclose(out, -mean)
    with pytest.raises(ValueError, match="Mean channels incompatible"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="Mean shape incompatible"):
        t.set_mean("data", np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="Transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ValueError, match="Channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="not one of the net inputs"):
        t.set_raw_scale("image", 255)


def test_transformer_rejects_wrong_shapes_clearly():
    t = cio.Transformer({"data": (1, 3, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    with pytest.raises(ValueError, match=r"expected one H x W x K image, got an array of shape \(2, 4, 4, 3\)"):
        t.preprocess("data", np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="the image has 1 channels .* takes 3"):
        t.preprocess("data", np.zeros((4, 4, 1)))


def test_load_image_color_and_gray(tmp_path):
    rgb = np.zeros((5, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 51, 0
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    img = cio.load_image(str(path))
    assert img.shape == (5, 4, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[0, 0], [1.0, 0.2, 0.0], atol=1e-6)
    gray = cio.load_image(str(path), color=False)
    assert gray.shape == (5, 4, 1) and 0 < gray[0, 0, 0] < 1
    # a gray file loaded in colour is tiled to three equal channels
    Image.fromarray(np.full((3, 3), 128, np.uint8)).save(tmp_path / "g.png")
    g3 = cio.load_image(str(tmp_path / "g.png"))
    assert g3.shape == (3, 3, 3)
    np.testing.assert_allclose(g3, 128 / 255.0, atol=1e-6)


def test_resize_image_linear_and_nearest():
    im = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    up = caffelite.io.resize_image(im, (8, 8))
    assert up.shape == (8, 8, 1) and up.dtype == np.float32
    assert up.min() >= 0 and up.max() <= 15
    # linear interpolation of a linear ramp stays a ramp inside the image
    np.testing.assert_allclose(np.diff(up[2:6, 3, 0]), 2.0, atol=1e-5)
    near = caffelite.io.resize_image(im, (2, 2), interp_order=0)
    np.testing.assert_array_equal(near[..., 0], [[5, 7], [13, 15]])
    five = np.random.default_rng(0).random((3, 3, 5)).astype(np.float32)
    assert caffelite.io.resize_image(five, (6, 4)).shape == (6, 4, 5)


def test_oversample_crops_and_mirrors():
    im = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2)
    crops = cio.oversample([im, im + 1], (3, 4))
    assert crops.shape == (20, 3, 4, 2)
    np.testing.assert_array_equal(crops[0], im[0:3, 0:4])          # top-left
    np.testing.assert_array_equal(crops[3], im[2:5, 2:6])          # bottom-right
    np.testing.assert_array_equal(crops[4], im[1:4, 1:5])          # centre
    np.testing.assert_array_equal(crops[5], im[0:3, 0:4][:, ::-1])  # mirrored top-left
    np.testing.assert_array_equal(crops[10], im[0:3, 0:4] + 1)     # second image


def test_blobproto_round_trips():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    d = -a
    b = cio.array_to_blobproto(a, d)
    assert list(b.shape.dim) == [2, 3, 4] and len(b.data) == 24
    np.testing.assert_array_equal(cio.blobproto_to_array(b), a)
    np.testing.assert_array_equal(cio.blobproto_to_array(b, return_diff=True), d)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    assert cio.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    arrays = [a, np.ones((5,), np.float32)]
    s = cio.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(s, bytes)
    back = cio.blobprotovector_str_to_arraylist(s)
    assert len(back) == 2
    np.testing.assert_array_equal(back[0], a)
    np.testing.assert_array_equal(back[1], arrays[1])


def test_datum_round_trips():
    u8 = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    d = cio.array_to_datum(u8, label=7)
    assert (d.channels, d.height, d.width, d.label) == (2, 3, 4, 7) and len(d.data) == 24
    np.testing.assert_array_equal(cio.datum_to_array(d), u8)
    f = u8.astype(np.float64) / 3
    df = cio.array_to_datum(f)
    assert not df.data and len(df.float_data) == 24
    np.testing.assert_allclose(cio.datum_to_array(df), f, rtol=1e-6)
    with pytest.raises(ValueError, match="Incorrect array shape"):
        cio.array_to_datum(np.zeros((3, 4)))
