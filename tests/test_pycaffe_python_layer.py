"""The Python layer (type "Python", python_param): user layers subclassing caffelite.Layer, param_str,
blobs.add_blob, backward, training, saving/loading, error reporting, and the command line's opt-in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import caffelite
from caffelite.errors import NetError

MODULE = '''
import numpy as np
import caffelite as caffe


class TimesK(caffe.Layer):
    """top = k * bottom, k from param_str (default 10)."""

    def setup(self, bottom, top):
        self.k = float(self.param_str) if self.param_str else 10.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.k * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.k * top[0].diff


class Scalar(caffe.Layer):
    """top = w * bottom with one learnable scalar w (pycaffe's add_blob)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class BadSetup(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("the user's setup failed")

    def reshape(self, bottom, top):
        pass


class NotALayer:
    pass


class Phase(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[...] = self.phase
'''


def _net_text(layer, param_str="", extra=""):
    ps = f' param_str: "{param_str}"' if param_str else ""
    return textwrap.dedent(f"""
    name: "pynet"
    force_backward: true
    layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 4 dim: 5 }} }} }}
    layer {{ name: "py" type: "Python" bottom: "data" top: "out"
             python_param {{ module: "pyc_user_layers" layer: "{layer}"{ps} }} }}
    {extra}
    """)


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "pyc_user_layers.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CAFFELITE_PYTHON_LAYERS", raising=False)
    sys.modules.pop("pyc_user_layers", None)
    yield tmp_path
    sys.modules.pop("pyc_user_layers", None)


def _build(tmp_path, text, phase=caffelite.TEST):
    p = tmp_path / "net.prototxt"
    p.write_text(text)
    return caffelite.Net(str(p), phase)


def test_forward_backward_and_param_str(user_module):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    net = _build(user_module, _net_text("TimesK"))
    np.testing.assert_allclose(net.forward(data=x)["out"], 10 * x, rtol=1e-6)
    g = np.ones_like(x)
    np.testing.assert_allclose(net.backward(out=g)["data"], 10 * g)
    net3 = _build(user_module, _net_text("TimesK", param_str="3"))
    np.testing.assert_allclose(net3.forward(data=x)["out"], 3 * x, rtol=1e-6)
    layer = net3.layer_dict["py"]
    assert layer.type == "Python" and layer.param_str == "3" and layer.k == 3.0  # the user's attribute


def test_reshape_follows_the_input(user_module):
    net = _build(user_module, _net_text("TimesK"))
    net.blobs["data"].reshape(1, 2, 3, 3)
    net.reshape()
    assert net.blobs["out"].shape == (1, 2, 3, 3)


def test_learnable_blob_trains_saves_and_loads(user_module):
    loss = 'layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "target" top: "loss" }'
    text = _net_text("Scalar", extra=loss).replace(
        'top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } }',
        'top: "data" top: "target" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } }')
    net = _build(user_module, text, caffelite.TRAIN)
    assert net.params["py"][0].data.shape == (1,)
    x = np.ones((2, 3, 4, 5), np.float32)
    for _ in range(20):
        net.clear_param_diffs()
        net.forward(data=x, target=3 * x)
        net.backward()
        net.params["py"][0].data[...] -= 0.01 * net.params["py"][0].diff
    w = float(net.params["py"][0].data[0])
    assert 2.5 < w < 3.5  # moved from 1 toward 3
    net.save(str(user_module / "w.caffemodel"))
    other = _build(user_module, text, caffelite.TRAIN)
    assert float(other.params["py"][0].data[0]) == 1.0
    other.copy_from(str(user_module / "w.caffemodel"))
    assert float(other.params["py"][0].data[0]) == pytest.approx(w)


def test_missing_module_names_the_layer(user_module):
    text = _net_text("TimesK").replace("pyc_user_layers", "pyc_no_such_module")
    with pytest.raises(NetError, match=r"layer 'py' \(type Python\): python_param.module 'pyc_no_such_module' "
                                       r"not found on the Python path"):
        _build(user_module, text)


def test_phase_is_the_nets(user_module):
    for phase in (caffelite.TRAIN, caffelite.TEST):
        net = _build(user_module, _net_text("Phase"), phase)
        assert float(net.forward(data=np.zeros((2, 3, 4, 5), np.float32))["out"][0]) == phase


def test_module_failing_at_import_shows_its_traceback(user_module):
    (user_module / "pyc_broken_mod.py").write_text("x = 1\nraise ImportError('needs a thing')\n")
    text = _net_text("TimesK").replace("pyc_user_layers", "pyc_broken_mod")
    with pytest.raises(RuntimeError, match=r"(?s)layer 'py' .*importing python_param.module 'pyc_broken_mod' "
                                           r"failed:.*pyc_broken_mod.py\", line 2.*needs a thing"):
        _build(user_module, text)


def test_setup_error_shows_the_user_traceback(user_module):
    with pytest.raises(RuntimeError) as ei:  # a NetError that is also pycaffe's RuntimeError
        _build(user_module, _net_text("BadSetup"))
    assert isinstance(ei.value, NetError)
    msg = str(ei.value)
    assert msg.startswith("layer 'py' (type Python): pyc_user_layers.BadSetup.setup raised RuntimeError")
    assert "pyc_user_layers.py" in msg and 'raise RuntimeError("the user\'s setup failed")' in msg
    assert "python_layer.py" not in msg  # our wrapper frames are not shown


def test_wrong_class_and_missing_class(user_module):
    with pytest.raises(NetError, match="must be a subclass of caffelite.Layer"):
        _build(user_module, _net_text("NotALayer"))
    with pytest.raises(NetError, match="has no python_param.layer 'Nope'"):
        _build(user_module, _net_text("Nope"))


def _cli(args, cwd, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(cwd), **(env_extra or {}))
    env.pop("CAFFELITE_PYTHON_LAYERS", None)
    return subprocess.run([sys.executable, "-m", "caffelite", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_command_line_needs_the_opt_in(user_module):
    (user_module / "net.prototxt").write_text(_net_text("TimesK"))
    r = _cli(["time", "--model", "net.prototxt", "--iterations", "1"], user_module)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "--allow-python-layers" in lines[0] and "layer 'py'" in lines[0]
    ok = _cli(["time", "--allow-python-layers", "--model", "net.prototxt", "--iterations", "1"], user_module)
    assert ok.returncode == 0, ok.stderr[-2000:]
    ok2 = _cli(["--allow-python-layers", "time", "--model", "net.prototxt", "--iterations", "1"], user_module)
    assert ok2.returncode == 0, ok2.stderr[-2000:]


def test_solver_updates_the_python_layers_blob(user_module):
    text = textwrap.dedent("""
    name: "p"
    layer { name: "data" type: "DummyData" top: "data"
            dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 1 } } }
    layer { name: "py" type: "Python" bottom: "data" top: "out"
            python_param { module: "pyc_user_layers" layer: "Scalar" } }
    layer { name: "loss" type: "Reduction" bottom: "out" top: "loss" loss_weight: 1 }
    """)
    (user_module / "net.prototxt").write_text(text)
    (user_module / "solver.prototxt").write_text(f'net: "{user_module / "net.prototxt"}"\nbase_lr: 0.1\n'
                                                 'lr_policy: "fixed"\nmax_iter: 10\ndisplay: 0\n')
    solver = caffelite.SGDSolver(str(user_module / "solver.prototxt"))
    assert float(solver.net.params["py"][0].data[0]) == 1.0
    solver.step(1)
    # d(sum(w * x))/dw = sum(x) = 6 with x = 1: w = 1 - 0.1 * 6
    assert float(solver.net.params["py"][0].data[0]) == pytest.approx(0.4)
