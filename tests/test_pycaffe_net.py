"""pycaffe's Net and Solver extras on caffelite: forward_all / forward_backward_all, the forward input check,
set_input_arrays (MemoryData), share_with, HDF5 weights, layer_type_list, solver callbacks, and the
module-level names (Timer, init_log, solver counters, has_nccl/NCCL, __version__, caffe_pb2)."""

from __future__ import annotations

import logging

import os

import numpy as np
import pytest

import caffelite
from caffelite.errors import DeviceError, NetError

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
"""

MEMNET = """
name: "mem"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 1 height: 5 width: 5 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _net(tmp_path, text=NET, phase=caffelite.TEST, name="net.prototxt"):
    p = tmp_path / name
    p.write_text(text)
    caffelite.set_random_seed(3)
    return caffelite.Net(str(p), phase)


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 5, 5)).astype(np.float32)


def test_forward_all_batches_and_pads(tmp_path):
    net = _net(tmp_path)
    x = _x(5)
    out = net.forward_all(data=x, blobs=["conv"])
    assert out["ip"].shape == (5, 4) and out["conv"].shape == (5, 3, 3, 3)
    for i in range(5):
        one = net.forward(data=np.stack([x[i], x[i]]))
        np.testing.assert_allclose(out["ip"][i], one["ip"][0], rtol=1e-5, atol=1e-6)


def test_forward_backward_all(tmp_path):
    net = _net(tmp_path, "force_backward: true\n" + NET)
    x = _x(3, 1)
    g = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    fwd, bwd = net.forward_backward_all(data=x, ip=g)
    assert fwd["ip"].shape == (3, 4) and bwd["data"].shape == (3, 1, 5, 5)
    net.forward(data=x[1:3])
    d = net.backward(ip=g[1:3])["data"]
    np.testing.assert_allclose(bwd["data"][1:3], d, rtol=1e-5, atol=1e-6)


def test_forward_rejects_names_that_are_not_inputs(tmp_path):
    net = _net(tmp_path)
    with pytest.raises(NetError, match="Input blob arguments do not match net inputs: 'conv' is not an input"):
        net.forward(conv=np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(NetError, match="no blob named 'image'"):
        net.forward_all(image=_x(2))


def test_set_input_arrays_memory_data(tmp_path):
    net = _net(tmp_path, MEMNET, caffelite.TRAIN)
    x = _x(4, 3)
    y = np.array([0, 1, 2, 1], np.float32)
    with pytest.raises(NetError, match="initialized by calling Net.set_input_arrays"):
        net.forward()
    net.set_input_arrays(x, y)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, x[:2])
    np.testing.assert_array_equal(net.blobs["label"].data, y[:2])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, x[2:])
    net.forward()  # wraps around
    np.testing.assert_array_equal(net.blobs["label"].data, y[:2])
    with pytest.raises(NetError, match="multiple of the batch size"):
        net.set_input_arrays(x[:3], y[:3])
    plain = _net(tmp_path, NET)
    with pytest.raises(NetError, match="needs a MemoryData layer"):
        plain.set_input_arrays(x, y)


def test_share_with(tmp_path):
    a = _net(tmp_path)
    caffelite.set_random_seed(99)
    b = caffelite.Net(str(tmp_path / "net.prototxt"), caffelite.TEST)
    assert not np.array_equal(a.params["ip"][0].data, b.params["ip"][0].data)
    b.share_with(a)
    a.params["ip"][0].data[...] = 0.25
    np.testing.assert_array_equal(b.params["ip"][0].data, 0.25)


def test_hdf5_round_trip(tmp_path):
    pytest.importorskip("h5py")
    a = _net(tmp_path)
    a.save_hdf5(str(tmp_path / "w.h5"))
    caffelite.set_random_seed(7)
    b = caffelite.Net(str(tmp_path / "net.prototxt"), caffelite.TEST)
    b.load_hdf5(str(tmp_path / "w.h5"))
    for name in ("conv", "ip"):
        for pa, pb in zip(a.params[name], b.params[name], strict=True):
            np.testing.assert_array_equal(pa.data, pb.data)
    import h5py
    with h5py.File(tmp_path / "w.h5") as f:  # Caffe's layout: /data/<layer>/<param index>
        assert sorted(f["data"]["conv"]) == ["0", "1"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "w.h5").stat().st_mode & 0o777 == 0o666 & ~umask  # written like every caffelite file
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".tmp")] == []


def test_layer_type_list():
    types = caffelite.layer_type_list()
    assert types == sorted(types)
    for t in ("Convolution", "Pooling", "InnerProduct", "Python", "MemoryData", "SoftmaxWithLoss"):
        assert t in types


SOLVER = """
net: "{net}"
base_lr: 0.1
lr_policy: "fixed"
max_iter: 10
display: 0
snapshot: 0
random_seed: 1
"""


def _solver(tmp_path):
    (tmp_path / "train.prototxt").write_text(MEMNET)
    sp = tmp_path / "solver.prototxt"
    sp.write_text(SOLVER.format(net=tmp_path / "train.prototxt"))
    s = caffelite.get_solver(str(sp))
    s.net.set_input_arrays(_x(4, 5), np.array([0, 1, 2, 0], np.float32))
    return s


def test_solver_add_callback_and_share_weights(tmp_path):
    s = _solver(tmp_path)
    events = []
    s.add_callback(lambda: events.append("start"), lambda: events.append("grad"))

    class Both:
        def on_start(self):
            events.append("obj-start")

        def on_gradients_ready(self):
            events.append("obj-grad")

    s.add_callback(Both())
    s.step(2)
    assert events == ["start", "obj-start", "grad", "obj-grad"] * 2
    other = caffelite.Net(str(tmp_path / "train.prototxt"), caffelite.TEST)
    s.share_weights(other)
    s.step(1)
    np.testing.assert_array_equal(other.params["ip"][0].data, s.net.params["ip"][0].data)


def test_module_level_names():
    assert caffelite.__version__ == caffelite.__dict__["__version__"]
    caffelite.set_solver_count(3)
    caffelite.set_solver_rank(2)
    assert (caffelite.solver_count(), caffelite.solver_rank()) == (3, 2)
    caffelite.set_solver_count(1)
    caffelite.set_solver_rank(0)
    caffelite.set_multiprocess(False)
    t = caffelite.Timer()
    t.start()
    t.stop()
    assert t.ms >= 0
    from caffelite import backend
    if not backend.cupy_available():
        assert caffelite.has_nccl() is False
        with pytest.raises(DeviceError, match="NCCL"):
            caffelite.NCCL(None, "0")
    from caffelite.proto import caffe_pb2
    import caffelite.proto.caffe_pb2 as pb_module
    assert caffe_pb2.NetParameter is pb_module.NetParameter
    assert pb_module.SolverParameter.GPU == 1


def test_init_log_sets_the_glog_level():
    lg = logging.getLogger("caffelite")
    old = lg.level
    try:
        caffelite.init_log(1)
        assert lg.level == logging.WARNING
        caffelite.init_log()
        assert lg.level == logging.INFO
    finally:
        lg.setLevel(old)


SIMPLE = """
name: "testnet" force_backward: true
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { num: 5 num: 5 channels: 2 channels: 1 height: 3 height: 1 width: 4 width: 1
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 11 kernel_size: 2 pad: 3 weight_filler { type: "gaussian" std: 1 }
                      bias_filler { type: "constant" value: 2 } }
  param { decay_mult: 1 } param { decay_mult: 0 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip_blob"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 2.5 } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip_blob" bottom: "label" top: "loss" }
"""


def test_simple_net_introspection_and_save_round_trip(tmp_path):
    net = _net(tmp_path, SIMPLE, caffelite.TRAIN, "simple.prototxt")
    assert net.inputs == [] and net.outputs == ["loss"]
    assert [layer.type for layer in net.layers] == ["DummyData", "Convolution", "InnerProduct", "SoftmaxWithLoss"]
    assert list(net.layer_dict) == ["data", "conv", "ip", "loss"]
    assert dict(net.top_names) == {"data": ["data", "label"], "conv": ["conv"], "ip": ["ip_blob"], "loss": ["loss"]}
    assert dict(net.bottom_names) == {"data": [], "conv": ["data"], "ip": ["conv"], "loss": ["ip_blob", "label"]}
    assert net.blob_loss_weights["loss"] == 1.0 and net.blob_loss_weights["conv"] == 0.0
    assert [p.data.shape for p in net.params["conv"]] == [(11, 2, 2, 2), (11,)]
    net.forward()
    net.backward()
    assert np.isfinite(float(net.blobs["loss"].data)) and net.blobs["data"].diff.any()
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    other = caffelite.Net(str(tmp_path / "simple.prototxt"), path, caffelite.TRAIN)
    for name in net.params:
        for a, b in zip(net.params[name], other.params[name], strict=True):
            np.testing.assert_array_equal(a.data, b.data)


def test_solver_solve_and_snapshot(tmp_path):
    (tmp_path / "simple.prototxt").write_text(SIMPLE)
    sp = tmp_path / "solver.prototxt"
    sp.write_text(f'train_net: "{tmp_path / "simple.prototxt"}"\ntest_net: "{tmp_path / "simple.prototxt"}"\n'
                  'test_interval: 10\ntest_iter: 2\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 20\n'
                  f'display: 0\nsnapshot_prefix: "{tmp_path / "model"}"\nrandom_seed: 1\n')
    solver = caffelite.SGDSolver(str(sp))
    assert len(solver.test_nets) == 1 and solver.iter == 0
    solver.solve()
    assert solver.iter == 20
    solver.snapshot()
    assert (tmp_path / "model_iter_20.caffemodel").exists() and (tmp_path / "model_iter_20.solverstate").exists()
