"""The Python API honours caffe-jacinto's fields as the CLI does: a ``quantize: true`` net quantizes and a
``sparse_mode`` solver prunes when built through ``caffelite.Net`` / ``caffelite.get_solver``; ``extensions=False``
builds them bare; attaching explicitly afterwards (or the CLI) never installs a second hook."""

import subprocess
import sys

import numpy as np
import pytest

import caffelite

from test_jacinto_integration import NET  # the tiny sparse net the CLI-side jacinto tests train

SOLVER = """
net: "train.prototxt"
base_lr: 0.0001 momentum: 0.9 lr_policy: "fixed" max_iter: 30 display: 0 random_seed: 7
weight_decay: 0.0001 regularization_type: "L1" snapshot_prefix: "{prefix}"
sparse_mode: SPARSE_UPDATE sparsity_target: 0.3 sparsity_step_factor: 0.1 sparsity_step_iter: 5
sparsity_start_iter: 5 sparsity_start_factor: 0.1 sparsity_threshold_maxratio: 0.9
"""

DEPLOY = """
name: "qdeploy"
quantize: true
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def _conv_zero_fraction(net):
    ws = [net.params[n][0].data for n in ("conv1", "conv2", "conv3")]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws)


def _write_solver(d, prefix):
    (d / "train.prototxt").write_text(NET)
    (d / "solver.prototxt").write_text(SOLVER.format(prefix=prefix))
    return str(d / "solver.prototxt")


def test_get_solver_prunes_like_the_cli(tmp_path, monkeypatch):
    """get_solver on a SPARSE_UPDATE solver reaches the target and ends on the CLI's very weights."""
    monkeypatch.chdir(tmp_path)
    path = _write_solver(tmp_path, "api")
    solver = caffelite.get_solver(path)
    solver.solve()
    zeros = _conv_zero_fraction(solver.net)
    assert zeros >= 0.29, zeros

    bare = caffelite.get_solver(path, extensions=False)
    bare.step(30)
    assert _conv_zero_fraction(bare.net) == 0.0

    cli_solver = _write_solver(tmp_path, "cli")
    from caffelite import cli
    assert cli.main(["train", "--solver", cli_solver]) == 0
    a = (tmp_path / "api_iter_30.caffemodel").read_bytes()
    b = (tmp_path / "cli_iter_30.caffemodel").read_bytes()
    assert a == b


def test_sgd_solver_class_prunes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver = caffelite.SGDSolver(_write_solver(tmp_path, "cls"))
    solver.step(30)
    assert _conv_zero_fraction(solver.net) >= 0.29


def test_net_quantizes_deploy(tmp_path):
    """caffelite.Net on a quantize: true deploy net quantizes (from the second forward, quantization_start: 1),
    exactly as a bare net with the hook attached by hand; extensions=False runs in float."""
    from caffelite import jacinto
    p = tmp_path / "deploy.prototxt"
    p.write_text(DEPLOY)
    caffelite.set_random_seed(5)
    ref = caffelite.Net(str(p), caffelite.TEST, extensions=False)
    ref.save(str(tmp_path / "w.caffemodel"))
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)

    def run(net):
        outs = []
        for _ in range(3):
            outs.append(net.forward(data=x)["conv2"].copy())
        return outs

    quant = caffelite.Net(str(p), str(tmp_path / "w.caffemodel"), caffelite.TEST)
    bare = caffelite.Net(str(p), str(tmp_path / "w.caffemodel"), caffelite.TEST, extensions=False)
    byhand = caffelite.Net(str(p), str(tmp_path / "w.caffemodel"), caffelite.TEST, extensions=False)
    jacinto.attach_quantization(byhand)
    q, f, h = run(quant), run(bare), run(byhand)
    assert not np.array_equal(q[2], f[2])        # quantized: differs from the float forward
    assert np.array_equal(q[2], h[2])            # and equals the hand-attached hook's result
    np.testing.assert_allclose(q[2], f[2], atol=0.1 * np.abs(f[2]).max())
    assert all(np.array_equal(a, b) for a, b in zip(f, run(bare), strict=True))


def test_no_second_hook(tmp_path, monkeypatch):
    """Attaching explicitly after the extension did (what the CLI and old scripts do) installs nothing new."""
    from caffelite import jacinto
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.prototxt").write_text(NET.replace('name: "tiny_sparse"', 'name: "t" quantize: true'))
    (tmp_path / "solver.prototxt").write_text(SOLVER.format(prefix="x"))
    solver = caffelite.get_solver(str(tmp_path / "solver.prototxt"))
    counts = ({e: len(v) for e, v in solver.hooks.items()},
              {e: len(getattr(solver.net.hooks, e)) for e in ("forward_start", "after_forward", "forward_end")})
    assert counts[1]["forward_end"] == 1 and counts[0]["after_update"] >= 1
    hooks = jacinto.attach_from_proto(solver.net, solver)
    again = ({e: len(v) for e, v in solver.hooks.items()},
             {e: len(getattr(solver.net.hooks, e)) for e in ("forward_start", "after_forward", "forward_end")})
    assert again == counts
    assert hooks.sparsity is solver._sparsity_hook and hooks.quantization[0] is solver.net._quantization_hook
    # another version replaces the hooks instead of stacking a second set
    jacinto.attach_from_proto(solver.net, solver, version="0.16")
    assert solver.net._quantization_hook.version == "0.16" and solver._sparsity_hook.version == "0.16"
    assert {e: len(getattr(solver.net.hooks, e)) for e in ("forward_start", "forward_end")} == \
        {"forward_start": 1, "forward_end": 1}


@pytest.mark.parametrize("entry", ["Net", "get_solver"])
def test_entry_points_import_the_extensions(entry):
    """A fresh interpreter that only touches caffelite.<entry> has the extensions registered."""
    code = (f"import caffelite; caffelite.{entry}; from caffelite import extensions; "
            "print(extensions.net_extensions(), extensions.solver_extensions())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['jacinto'] ['jacinto']"
