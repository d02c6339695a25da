"""BatchNorm folding (§b.8) and ``caffelite optimize``: the folded net computes what the original computes."""

import os

import numpy as np
import pytest

from caffelite.jacinto.bn_fold import fold_arrays

from conftest import FIXTURES
from helpers import load_npz

JSEG = os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy")
SIZE = (64, 128)


def test_fold_arrays_hand_case():
    w = np.array([[[[1.0, 2.0]]], [[[3.0, -1.0]]]], np.float32)  # 2 output channels
    b = np.array([0.5, -1.0])
    mean, var, eps = np.array([1.0, 2.0]), np.array([3.0, 0.0]), 1.0
    gamma, beta = np.array([2.0, 0.5]), np.array([0.1, -0.2])
    w2, b2 = fold_arrays(w, b, mean, var, eps, gamma, beta)
    # channel 0: s = 1/2, factor 1; channel 1: s = 1, factor 0.5
    np.testing.assert_allclose(w2, [[[[1.0, 2.0]]], [[[1.5, -0.5]]]])
    np.testing.assert_allclose(b2, [(0.5 - 1.0) * 1 + 0.1, (-1.0 - 2.0) * 0.5 - 0.2])
    # a conv without bias gets one
    _, b3 = fold_arrays(w, None, mean, var, eps, gamma, beta)
    np.testing.assert_allclose(b3, [-1 + 0.1, -1 - 0.2])


def _model(tmp_path, jacinto_bn):
    """The jsegnet21v2 fixture at a small size, in BVLC BN+Scale form or converted to jacinto's 5-blob BN."""
    from caffelite import io
    from caffelite.io.batchnorm import bvlc_bn_to_jacinto
    p = io.read_net(os.path.join(JSEG, "deploy.prototxt"))
    p.layer[0].input_param.shape[0].dim[:] = [1, 3, *SIZE]
    w = io.read_weights(os.path.join(JSEG, "weights.caffemodel.xz"))
    if jacinto_bn:
        assert bvlc_bn_to_jacinto(p) > 0 and bvlc_bn_to_jacinto(w) > 0
    mp, wp = str(tmp_path / "model.prototxt"), str(tmp_path / "model.caffemodel")
    io.write_text(p, mp)
    io.write_weights(w, wp)
    return mp, wp


def _forward(model, weights):
    from caffelite.layer import TEST
    from caffelite.net import Net
    net = Net(model, weights, TEST)
    x = load_npz(os.path.join(JSEG, "input.npz"))["data"][:, :, :SIZE[0], :SIZE[1]]
    net.forward(data=np.ascontiguousarray(x))
    return net, net.blobs["out_deconv_final_up8"].data.copy()


@pytest.mark.parametrize("jacinto_bn", [False, True], ids=["bvlc_bn_scale", "jacinto_5blob"])
@pytest.mark.parametrize("remove", [False, True], ids=["identity", "remove"])
def test_optimize_jsegnet(tmp_path, jacinto_bn, remove):
    from caffelite.cli import main
    mp, wp = _model(tmp_path, jacinto_bn)
    net0, ref = _forward(mp, wp)
    out = str(tmp_path / "out" / "folded")
    argv = ["optimize", "--model", mp, "--weights", wp, "--output_model", out] + (["--remove_bn"] if remove else [])
    assert main(argv) == 0
    net1, got = _forward(out + ".prototxt", out + ".caffemodel")
    # float32 rounding only: relative to the output's magnitude
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    types = [ly.param.type for ly in net1.layers]
    n_bn = types.count("BatchNorm")
    if remove:
        assert n_bn == 0 and "Scale" not in types
        assert len(net1.layers) < len(net0.layers)
    else:
        assert n_bn == [ly.param.type for ly in net0.layers].count("BatchNorm")
    conv1a = net1.layer_dict["conv1a"]
    assert conv1a.param.convolution_param.bias_term and len(conv1a.blobs) == 2


def test_optimize_writes_bvlc(tmp_path):
    from caffelite.commands.optimize import optimize
    from caffelite.proto import dialect
    from google.protobuf import text_format
    mp, wp = _model(tmp_path, jacinto_bn=True)
    _, ref = _forward(mp, wp)
    proto, weights, folded = optimize(mp, wp, str(tmp_path / "bvlc_out"), form="bvlc")
    assert len(folded) == 16
    with open(proto) as f:
        bvlc = text_format.Parse(f.read(), dialect("bvlc").NetParameter())  # parses with BVLC's schema
    assert any(lp.type == "Scale" for lp in bvlc.layer)
    _, got = _forward(proto, weights)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_optimize_bvlc_bn_scale_net(tmp_path):
    """A net trained by BVLC Caffe (solvers/sgd_step fixture): conv without bias -> BVLC BatchNorm (statistics
    times a scale factor) -> Scale with bias -> ReLU -> pool -> InnerProduct, on the fixture's test images."""
    from caffelite import io
    from caffelite.cli import main
    from caffelite.layer import TEST
    from caffelite.net import Net
    case = os.path.join(FIXTURES, "solvers", "sgd_step")
    p = io.read_net(os.path.join(case, "train_val.prototxt"))
    keep = [lp for lp in p.layer if lp.type not in ("Data", "SoftmaxWithLoss", "Accuracy")]
    del p.layer[:]
    inp = p.layer.add(name="data", type="Input", top=["data"])
    inp.input_param.shape.add(dim=[20, 3, 16, 16])
    p.layer.extend(keep)
    mp = str(tmp_path / "deploy.prototxt")
    io.write_text(p, mp)
    wp = os.path.join(case, "snapshot_iter_12.caffemodel")
    x = load_npz(os.path.join(FIXTURES, "solvers", "_data", "data.npz"))["test/data"].astype(np.float32) / 256

    def run(model, weights):
        net = Net(model, weights, TEST)
        net.forward(data=x)
        return net, net.blobs["ip1"].data.copy()

    net0, ref = run(mp, wp)
    assert float(np.abs(net0.layer_dict["conv1/bn"].blobs[2].data).max()) != 1  # a real BVLC scale factor
    out = str(tmp_path / "folded.caffemodel")
    assert main(["optimize", "--model", mp, "--weights", wp, "--output_model", out, "--remove_bn"]) == 0
    net1, got = run(str(tmp_path / "folded.prototxt"), out)
    assert [ly.param.type for ly in net1.layers] == ["Input", "Convolution", "ReLU", "Pooling", "InnerProduct"]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert not np.array_equal(got, np.zeros_like(got))


@pytest.mark.parametrize("what", ["model", "weights"])
def test_optimize_bad_input(tmp_path, what, capsys):
    from caffelite.cli import main
    mp, wp = _model(tmp_path, jacinto_bn=False)
    missing = str(tmp_path / "missing")
    argv = ["optimize", "--model", missing if what == "model" else mp, "--weights",
            missing if what == "weights" else wp, "--output_model", str(tmp_path / "o")]
    capsys.readouterr()
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "error" in ln.lower()]
    assert len(err) == 1 and "missing" in err[0]  # one clear line, no traceback
    assert not os.path.exists(tmp_path / "o.caffemodel")


def test_output_paths():
    from caffelite.commands.optimize import output_paths
    assert output_paths("a/b.caffemodel") == ("a/b.prototxt", "a/b.caffemodel")
    assert output_paths("x") == ("x.prototxt", "x.caffemodel")
