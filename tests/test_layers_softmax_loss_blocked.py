"""SoftmaxWithLoss's blocked passes (caffelite/layers/loss.py) against the plain whole-array form, bitwise.

The blocked forward writes the softmax block by block into a kept buffer and gathers each pixel's
probability with one flat index; the blocked backward builds the one-hot and the difference per block. The
plain form below is the previous implementation's float operations in order, so the loss, the probabilities
and the bottom diff must match it bitwise in float32, however the blocks fall (one column per block, where
NumPy would sum the C values pairwise, is the trap the blocking avoids). float64 results are also checked
against an independent log-softmax.
"""

import numpy as np
import pytest
from google.protobuf import text_format

import caffelite.layers.loss as loss_mod
from caffelite.blob import Blob
from caffelite.layer import TRAIN, create_layer
from caffelite.proto import caffe_pb2
from helpers import bits_equal

FLT_MIN = loss_mod.FLT_MIN
JSEG = "loss_param { ignore_label: 255 normalization: VALID }"  # the jsegnet21v2 train prototxt
WEIGHTS = "label_weights: [" + ", ".join(["1", "2", "0.5", "3"] + ["1.25"] * 36) + "]"


def _layer(extra, x, lbl, dtype, tops=("loss",)):
    tt = " ".join(f'top: "{t}"' for t in tops)
    p = text_format.Parse(f'name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" {tt} {extra}',
                          caffe_pb2.LayerParameter())
    layer = create_layer(p, TRAIN)
    bottom = [Blob(x.shape, dtype), Blob(lbl.shape, dtype)]
    top = [Blob((), dtype) for _ in tops]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    return layer, bottom, top


def _run(layer, bottom, top, x, lbl, weight):
    bottom[0].data[...] = x
    bottom[1].data[...] = lbl
    layer.forward(bottom, top)
    top[0].diff[...] = weight
    layer.backward(top, [True, False], bottom)
    return [t.data.copy() for t in top], bottom[0].diff.copy()


def plain(layer, x, lbl, weight):
    """(loss, prob, dx) by the straightforward whole-array code."""
    o, c, i = layer.outer, layer.channels, layer.inner
    x3 = x.reshape(o, c, i)
    e = np.exp(x3 - x3.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    lab = lbl.reshape(o, i).astype(np.int64)
    valid = np.ones(lab.shape, bool) if layer.ignore is None else lab != layer.ignore
    idx = np.where(valid, lab, 0)
    p = np.take_along_axis(e, idx[:, None, :], axis=1)[:, 0, :]
    pix = -np.log(np.maximum(p, FLT_MIN))
    if layer.label_weights.size:
        pix = pix * np.asarray(layer.label_weights, dtype=pix.dtype)[idx]
    count = int(valid.sum())
    norm = layer.normalizer(o, i, count)
    loss = np.where(valid, pix, 0).sum(dtype=np.float64) / norm
    onehot = np.arange(c)[None, :, None] == idx[:, None, :]
    w = float(np.asarray(weight, dtype=x.dtype))  # as read back from the top diff
    dx = (e - onehot) * (valid[:, None, :] * (w / norm))
    return loss, e, dx


CASES = [
    ((2, 8, 12, 17), JSEG),
    ((2, 8, 12, 17), "loss_param { ignore_label: 255 normalization: FULL }"),
    ((2, 8, 12, 17), ""),  # no ignore_label, VALID
    ((3, 19, 5, 3), "loss_param { ignore_label: 255 normalization: BATCH_SIZE }"),
    ((3, 19, 5, 3), f"loss_param {{ ignore_label: 255 normalization: NONE {WEIGHTS} }}"),
    ((40, 21), JSEG),  # classification: inner 1, the sums over C are pairwise in both forms
    ((4, 40, 3), JSEG),  # inner 3 with many classes: a block must never be one column wide
    ((2, 5, 2, 9), "softmax_param { axis: 2 } loss_param { ignore_label: 255 }"),
    ((2, 3, 4, 10), "softmax_param { axis: -1 } loss_param { ignore_label: 255 normalization: FULL }"),
]


@pytest.mark.parametrize("block_bytes", [None, 1, 64, 100, 700])
@pytest.mark.parametrize("shape,extra", CASES)
@pytest.mark.parametrize("tops", [("loss",), ("loss", "prob")])
def test_softmax_loss_bitwise_equals_plain_form(monkeypatch, block_bytes, shape, extra, tops):
    if block_bytes is not None:
        monkeypatch.setattr(loss_mod, "BLOCK_BYTES", block_bytes)
    rs = np.random.default_rng(len(shape) * 31 + shape[1])
    axis = 2 if "axis: 2" in extra else (len(shape) - 1 if "axis: -1" in extra else 1)
    lshape = list(shape)
    lshape[axis] = 1
    dtype = np.float32
    layer, bottom, top = _layer(extra, np.zeros(shape), np.zeros(lshape), dtype, tops)
    for it, weight in enumerate((1.0, 0.37, 2.0)):
        x = (rs.standard_normal(shape) * (3 + 20 * it)).astype(dtype)
        lbl = rs.integers(0, shape[axis], lshape).astype(dtype)
        if "ignore_label" in extra:
            lbl.reshape(-1)[it::5] = 255
        outs, dx = _run(layer, bottom, top, x, lbl, weight)
        loss, prob, want_dx = plain(layer, x, lbl, weight)
        assert bits_equal(outs[0], np.asarray(loss, dtype=dtype))
        if len(tops) > 1:
            assert bits_equal(outs[1], prob.reshape(shape))
        assert bits_equal(dx, want_dx.astype(dtype).reshape(shape))


def test_float64_against_log_softmax_with_ignored_pixels():
    rs = np.random.default_rng(11)
    x = rs.standard_normal((2, 6, 5, 4)) * 4
    lbl = rs.integers(0, 6, (2, 1, 5, 4)).astype(np.float64)
    lbl[0, 0, 1, :] = 255
    layer, bottom, top = _layer(JSEG, x, lbl, np.float64)
    (loss,), dx = _run(layer, bottom, top, x, lbl, 0.5)
    logp = x - x.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    valid = lbl[:, 0] != 255
    idx = np.where(valid, lbl[:, 0], 0).astype(int)
    pick = np.take_along_axis(logp, idx[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(float(loss), -pick[valid].sum() / valid.sum(), rtol=1e-12)
    onehot = np.arange(6)[None, :, None, None] == idx[:, None]
    want = (np.exp(logp) - onehot) * valid[:, None] * 0.5 / valid.sum()
    np.testing.assert_allclose(dx, want, rtol=1e-10, atol=1e-15)
    assert not dx[0, :, 1, :].any()  # ignored pixels get no gradient


@pytest.mark.parametrize("bad", [-1.0, 6.0, 254.0])
def test_bad_labels_still_raise(bad):
    x = np.zeros((2, 6, 3, 3), np.float32)
    lbl = np.zeros((2, 1, 3, 3), np.float32)
    lbl[1, 0, 2, 1] = bad
    lbl[0, 0, 0, 0] = 255  # an ignored label is fine
    layer, bottom, top = _layer(JSEG, x, lbl, np.float32)
    bottom[0].data[...] = x
    bottom[1].data[...] = lbl
    with pytest.raises(Exception, match="label values must lie in"):
        layer.forward(bottom, top)


@pytest.mark.parametrize("outer,c,inner,bb", [(2, 8, 1000, 64), (3, 19, 17, 100), (1, 4, 5, 1), (5, 3, 1, 1),
                                              (2, 8, 409600, 1 << 18), (2, 4, 0, 64)])
def test_blocks_cover_the_array_and_are_never_one_column_wide(monkeypatch, outer, c, inner, bb):
    monkeypatch.setattr(loss_mod, "BLOCK_BYTES", bb)
    blocks = loss_mod._blocks(np, outer, c, inner, 4)
    seen = np.zeros((outer, inner), int)
    for so, si in blocks:
        seen[so, si] += 1
        assert len(range(*si.indices(inner))) >= min(2, inner)
    assert (seen == 1).all()


def test_non_contiguous_bottom_diff(monkeypatch):
    monkeypatch.setattr(loss_mod, "BLOCK_BYTES", 100)
    rs = np.random.default_rng(8)
    x = rs.standard_normal((2, 5, 3, 4)).astype(np.float32)
    lbl = rs.integers(0, 5, (2, 1, 3, 4)).astype(np.float32)
    layer, bottom, top = _layer(JSEG, x, lbl, np.float32)
    bottom[0].set_diff_array(np.zeros((2, 5, 3, 8), np.float32)[..., ::2])
    _, dx = _run(layer, bottom, top, x, lbl, 1.0)
    assert not bottom[0].diff.flags.c_contiguous
    assert bits_equal(dx, plain(layer, x, lbl, 1.0)[2].astype(np.float32).reshape(x.shape))
