"""SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss and Accuracy: real-Caffe fixtures, float64
gradient checks and closed-form checks of the options the fixtures do not pin down."""

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite.blob import Blob
from caffelite.errors import NetError
from caffelite.layer import TEST, create_layer
from caffelite.layers.loss import FLT_MIN
from caffelite.proto import caffe_pb2
from gradient_check import check_layer_gradient
from layer_case import assert_case_matches

FIXTURE_CASES = [
    "softmaxloss_batch_size", "softmaxloss_classify", "softmaxloss_full", "softmaxloss_loss_weight",
    "softmaxloss_none", "softmaxloss_valid", "sigmoid_xent", "sigmoid_xent_ignore_valid", "euclidean_loss",
    "accuracy_per_class", "accuracy_ties", "accuracy_top1_ignore", "accuracy_top5_ignore",
]


@pytest.mark.parametrize("name", FIXTURE_CASES)
def test_fixture_case(name):
    assert_case_matches(name)


def param(type_, extra="", tops=("loss",)):
    tt = " ".join(f'top: "{t}"' for t in tops)
    return text_format.Parse(f'name: "l" type: "{type_}" bottom: "x" bottom: "label" {tt} {extra}',
                             caffe_pb2.LayerParameter())


def run(p, x, label, top_diff=None, n_top=None):
    """Forward (and backward when ``top_diff`` is given); returns (layer, bottoms, tops)."""
    layer = create_layer(p, TEST)
    bottom = []
    for a in (x, label):
        b = Blob(a.shape, np.float64)
        b.data[...] = a
        bottom.append(b)
    top = [Blob((), np.float64) for _ in range(n_top or len(p.top))]
    layer.check_blob_counts(bottom, top)
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    if top_diff is not None:
        top[0].diff[...] = top_diff
        layer.backward(top, [True, False], bottom)
    return layer, bottom, top


RS = np.random.default_rng(99)
SCORES = RS.standard_normal((2, 5, 3, 4)) * 2
LABELS = RS.integers(0, 5, (2, 1, 3, 4)).astype(np.float64)
LABELS[0, 0, 1, 2] = LABELS[1, 0, 0, 0] = 255


def softmax_ref(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---------------------------------------------------------------- gradient checks (float64)
@pytest.mark.parametrize("extra", [
    f"loss_param {{ ignore_label: 255 {opt} }}"
    for opt in ("normalization: VALID", "normalization: FULL", "normalization: BATCH_SIZE", "normalization: NONE",
                "normalize: false")
])
def test_softmax_loss_gradient(extra):
    assert check_layer_gradient(param("SoftmaxWithLoss", extra), [SCORES, LABELS], check_bottoms=[0]) > 0


def test_softmax_loss_gradient_axis2():
    x = RS.standard_normal((2, 3, 4))
    lbl = RS.integers(0, 4, (2, 3)).astype(np.float64)
    assert check_layer_gradient(param("SoftmaxWithLoss", "softmax_param { axis: 2 }"), [x, lbl],
                                check_bottoms=[0]) > 0


@pytest.mark.parametrize("extra", ["", "loss_param { ignore_label: -1 normalization: VALID }"])
def test_sigmoid_xent_gradient(extra):
    x = RS.standard_normal((2, 3, 4)) * 3
    t = RS.integers(0, 2, x.shape).astype(np.float64)
    t[0, 1, :2] = -1
    if not extra:
        t[0, 1, :2] = RS.uniform(0, 1, 2)  # soft targets are fine without ignore_label
    assert check_layer_gradient(param("SigmoidCrossEntropyLoss", extra), [x, t], check_bottoms=[0]) > 0


def test_euclidean_gradient_both_bottoms():
    a, b = RS.standard_normal((3, 4, 2)), RS.standard_normal((3, 8))
    assert check_layer_gradient(param("EuclideanLoss"), [a, b]) == 48


# ---------------------------------------------------------------- SoftmaxWithLoss closed forms
def test_softmax_loss_value_and_second_top():
    p = param("SoftmaxWithLoss", "loss_param { ignore_label: 255 }", tops=("loss", "prob"))
    layer, _, top = run(p, SCORES, LABELS)
    prob = softmax_ref(SCORES)
    valid = LABELS[:, 0] != 255
    lbl = np.where(valid, LABELS[:, 0], 0).astype(int)
    pl = np.take_along_axis(prob, lbl[:, None], axis=1)[:, 0]
    want = -np.log(pl[valid]).sum() / valid.sum()
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-12)
    np.testing.assert_allclose(top[1].data, prob, rtol=1e-12)


def test_softmax_loss_clamped_at_flt_min():
    x = np.array([[0.0, 200.0], [0.0, 0.0]])  # p(label 0) of row 0 underflows to 0 in float32 and float64
    layer, _, top = run(param("SoftmaxWithLoss"), x, np.array([0.0, 1.0]))
    np.testing.assert_allclose(float(top[0].data), (-np.log(FLT_MIN) + np.log(2)) / 2, rtol=1e-12)
    assert abs(-np.log(FLT_MIN) - 87.3365) < 1e-4


@pytest.mark.parametrize("extra,norm", [
    ("loss_param { ignore_label: 255 normalize: true }", "valid"),
    ("loss_param { ignore_label: 255 normalize: false }", "batch"),
    ("loss_param { ignore_label: 255 normalize: false normalization: FULL }", "full"),  # normalization wins
    ("loss_param { ignore_label: 255 }", "valid"),
])
def test_softmax_loss_normalizers(extra, norm):
    _, _, none = run(param("SoftmaxWithLoss", "loss_param { ignore_label: 255 normalization: NONE }"),
                     SCORES, LABELS)
    _, _, top = run(param("SoftmaxWithLoss", extra), SCORES, LABELS)
    n = {"valid": 22, "batch": 2, "full": 24}[norm]
    np.testing.assert_allclose(float(top[0].data), float(none[0].data) / n, rtol=1e-12)


def test_softmax_loss_gradient_scaled_by_top_diff_and_ignored_zero():
    p = param("SoftmaxWithLoss", "loss_param { ignore_label: 255 }")
    _, b1, _ = run(p, SCORES, LABELS, top_diff=1.0)
    _, b2, _ = run(p, SCORES, LABELS, top_diff=2.5)
    np.testing.assert_allclose(b2[0].diff, 2.5 * b1[0].diff, rtol=1e-12)
    assert np.all(b1[0].diff[0, :, 1, 2] == 0) and np.all(b1[0].diff[1, :, 0, 0] == 0)
    assert np.all(b1[1].diff == 0)  # never a gradient into the label


def test_softmax_loss_all_ignored_is_zero():
    lbl = np.full_like(LABELS, 255)
    _, b, top = run(param("SoftmaxWithLoss", "loss_param { ignore_label: 255 }"), SCORES, lbl, top_diff=1.0)
    assert float(top[0].data) == 0 and np.all(b[0].diff == 0)


def test_label_weights_weight_the_forward_only():
    w = [0.5, 1, 2, 3, 0.25]
    text = "loss_param { ignore_label: 255 normalization: NONE " + " ".join(f"label_weights: {v}" for v in w) + " }"
    _, b_w, top_w = run(param("SoftmaxWithLoss", text), SCORES, LABELS, top_diff=1.0)
    _, b_1, _ = run(param("SoftmaxWithLoss", "loss_param { ignore_label: 255 normalization: NONE }"),
                    SCORES, LABELS, top_diff=1.0)
    prob = softmax_ref(SCORES)
    valid = LABELS[:, 0] != 255
    lbl = np.where(valid, LABELS[:, 0], 0).astype(int)
    pl = np.take_along_axis(prob, lbl[:, None], axis=1)[:, 0]
    want = (-np.log(pl) * np.asarray(w, dtype=np.float32)[lbl])[valid].sum()
    np.testing.assert_allclose(float(top_w[0].data), want, rtol=1e-6)
    np.testing.assert_array_equal(b_w[0].diff, b_1[0].diff)


def test_softmax_loss_bad_labels():
    with pytest.raises(NetError, match="label"):
        run(param("SoftmaxWithLoss"), SCORES, np.full_like(LABELS, 7))
    with pytest.raises(NetError, match="Number of labels"):
        run(param("SoftmaxWithLoss"), SCORES, np.zeros((2, 1, 3, 3)))
    layer, bottom, top = run(param("SoftmaxWithLoss", "loss_param { ignore_label: 255 }"), SCORES, LABELS)
    assert layer.is_loss and not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    with pytest.raises(NetError, match="label"):
        layer.backward(top, [True, True], bottom)


# ---------------------------------------------------------------- other losses
def test_sigmoid_xent_value_and_default_batch_size():
    x = RS.standard_normal((4, 6)) * 3
    t = RS.uniform(0, 1, x.shape)
    _, _, top = run(param("SigmoidCrossEntropyLoss"), x, t)
    p = 1 / (1 + np.exp(-x))
    want = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum() / 4
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-10)
    big = np.array([[1000.0, -1000.0]])  # the stable form never overflows
    _, _, top = run(param("SigmoidCrossEntropyLoss"), big, np.array([[0.0, 1.0]]))
    np.testing.assert_allclose(float(top[0].data), 2000.0, rtol=1e-12)


def test_euclidean_value():
    a, b = RS.standard_normal((3, 4)), RS.standard_normal((3, 4))
    layer, bottom, top = run(param("EuclideanLoss"), a, b)
    np.testing.assert_allclose(float(top[0].data), ((a - b) ** 2).sum() / 6, rtol=1e-12)
    assert layer.allow_force_backward(1)


# ---------------------------------------------------------------- Accuracy
def acc_param(extra="", tops=("acc",)):
    return param("Accuracy", extra, tops)


def test_accuracy_top_k_ties_and_per_class():
    x = np.array([[1.0, 2.0, 2.0, 0.0], [3.0, 1.0, 1.0, 1.0], [0.0, 5.0, 3.0, 2.0]])
    lbl = np.array([2.0, 0.0, 3.0])
    _, _, top = run(acc_param(tops=("acc", "per")), x, lbl)
    assert float(top[0].data) == pytest.approx(1 / 3)  # the tie with class 1 counts against label 2
    np.testing.assert_allclose(top[1].data, [1, 0, 0, 0])  # class 1: no sample → 0
    _, _, top = run(acc_param("accuracy_param { top_k: 2 }"), x, lbl)
    assert float(top[0].data) == pytest.approx(2 / 3)


def test_accuracy_axis_and_ignore():
    x = RS.standard_normal((2, 3, 5))  # classes on axis 2
    lbl = RS.integers(0, 5, (2, 3)).astype(np.float64)
    lbl[0, 0] = -1
    _, _, top = run(acc_param("accuracy_param { axis: 2 ignore_label: -1 }"), x, lbl)
    valid = lbl != -1
    want = (x.argmax(axis=2) == lbl)[valid].mean()
    assert float(top[0].data) == pytest.approx(want)
    _, _, top = run(acc_param("accuracy_param { ignore_label: -1 }"), x[:, :, :1], np.full((2, 1), -1.0))
    assert float(top[0].data) == 0  # nothing counted


def test_accuracy_errors_and_no_backward():
    with pytest.raises(NetError, match="top_k"):
        run(acc_param("accuracy_param { top_k: 5 }"), np.zeros((2, 3)), np.zeros(2))
    layer, bottom, top = run(acc_param(), np.zeros((2, 3)), np.zeros(2))
    assert not layer.has_backward() and not layer.allow_force_backward(0)
