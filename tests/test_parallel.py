"""Data-parallel pieces that need no second process: batch division, data sharding, communicators, launcher."""

from __future__ import annotations

import os

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite import parallel
from caffelite.data.reader import Cursor
from caffelite.errors import CaffeliteError, DeviceError
from caffelite.parallel import comm as comm_mod
from caffelite.parallel.launch import worker_config
from caffelite.parallel.shard import InterleavedCursor, batch_per_device, divide_batch_sizes
from caffelite.proto import caffe_pb2


@pytest.mark.parametrize("batch, n, expected", [(16, 3, 6), (4, 3, 2), (8, 2, 4), (7, 2, 4), (5, 1, 5), (1, 4, 1)])
def test_batch_per_device_is_nvcaffes_ceil_to_multiple(batch, n, expected):
    # docs/jacinto-spec.md §c.3: 16 → 6 per GPU on 3 GPUs (effective 18); test 4 → 2
    assert batch_per_device(batch, n) == expected


NET = """
layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "x" batch_size: 16 backend: LMDB } }
layer { name: "il" type: "ImageLabelData" top: "a" top: "b"
        image_label_data_param { image_list_path: "i" label_list_path: "l" batch_size: 6 } }
layer { name: "in" type: "Input" top: "z" input_param { shape { dim: 5 dim: 3 } } }
"""


def test_divide_batch_sizes_changes_readers_only_and_warns(caplog):
    net = text_format.Parse(NET, caffe_pb2.NetParameter())
    changed = divide_batch_sizes(net, 3, "train")
    assert changed == [("d", 16, 6), ("il", 6, 2)]
    assert net.layer[0].data_param.batch_size == 6
    assert net.layer[1].image_label_data_param.batch_size == 2
    assert list(net.layer[2].input_param.shape[0].dim) == [5, 3]  # Input is the caller's batch: untouched
    untouched = text_format.Parse(NET, caffe_pb2.NetParameter())
    assert divide_batch_sizes(untouched, 1) == []
    assert untouched.layer[0].data_param.batch_size == 16


def test_interleaved_cursors_are_disjoint_and_cover_the_doubled_batch():
    n_rec, k, size = 10, 3, 2
    single = Cursor(n_rec)
    shards = [InterleavedCursor(Cursor(n_rec), r, size) for r in range(size)]
    for _ in range(5):  # wraps around the 10 records several times
        whole = single.take(k * size)
        parts = [c.take(k) for c in shards]
        assert parts[0] + parts[1] == whole
        assert shards[0].state() == shards[1].state() == single.state()
    st = shards[0].state()
    shards[1].set_state(st)
    assert shards[1].inner.pos == st["pos"]


def test_local_communicator_is_the_identity():
    c = parallel.LocalCommunicator()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert c.is_root and c.size == 1
    c.allreduce_mean([a])
    c.broadcast([a])
    np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert c.broadcast_scalar(3.5) == 3.5


class _TwoCopies(comm_mod.Communicator):
    """A stand-in for 2 replicas that both hold this replica's values (exercises grouping and the mean)."""

    size = 2

    def __init__(self):
        self.calls = []

    def _allreduce_flat(self, flat):
        self.calls.append(("sum", flat.dtype, flat.size))
        flat *= 2

    def _broadcast_flat(self, flat, root):
        self.calls.append(("bcast", flat.dtype, flat.size))


def test_mean_is_sum_then_divide_with_one_message_per_dtype():
    c = _TwoCopies()
    a = np.full((2, 3), 1.5, np.float32)
    b = np.full(4, 0.25, np.float32)
    d = np.full(2, 3.0, np.float64)
    c.allreduce_mean([a, b, d, np.zeros(0, np.float32)])
    np.testing.assert_array_equal(a, np.full((2, 3), 1.5, np.float32))
    np.testing.assert_array_equal(d, [3.0, 3.0])
    assert sorted(c.calls, key=str) == sorted([("sum", np.float32, 10), ("sum", np.float64, 2)], key=str)
    c.calls.clear()
    c.allreduce_sum([b])
    np.testing.assert_array_equal(b, np.full(4, 0.5, np.float32))


def test_flatten_roundtrip():
    arrs = [np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.float32) + 10]
    flat = comm_mod.flatten(arrs)
    assert flat.shape == (10,)
    outs = [np.zeros_like(a) for a in arrs]
    comm_mod.unflatten(flat, outs)
    for a, o in zip(arrs, outs, strict=True):
        np.testing.assert_array_equal(a, o)


def test_broadcast_state_without_a_run_is_a_no_op():
    assert parallel.current() is None
    a = np.ones(3, np.float32)
    out = parallel.broadcast_state("masks", [a])
    assert out[0] is a


def test_worker_config_makes_paths_absolute(tmp_path):
    cfg = worker_config("s.prototxt", snapshot="x.solverstate", devices=[0, 1], backend="nccl", nccl_id="1,2")
    assert os.path.isabs(cfg["solver"]) and os.path.isabs(cfg["snapshot"])
    assert cfg["devices"] == [0, 1] and cfg["nccl_id"] == "1,2"


def test_launch_rejects_unknown_backend_and_empty_device_list():
    with pytest.raises(CaffeliteError):
        parallel.launch("s.prototxt", [0, 1], backend="gloo")
    with pytest.raises(CaffeliteError):
        parallel.launch("s.prototxt", [])


def test_nccl_launch_without_cupy_fails_with_one_line():
    from caffelite import backend
    if backend.cupy_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError) as e:
        parallel.launch("s.prototxt", [0, 1])
    assert "\n" not in str(e.value) and "CuPy" in str(e.value)


class _DevArray(np.ndarray):
    """A NumPy array posing as a CuPy one: ``.data.ptr`` is its address."""

    @property
    def data(self):
        return type("Mem", (), {"ptr": self.ctypes.data})()


class _FakeNccl:
    """cupy.cuda.nccl's surface, for 2 replicas that hold the same values (sum = 2x, bcast = identity)."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT32, NCCL_SUM = "f32", "f64", "i32", "sum"
    NCCL_FLOAT16 = NCCL_INT8 = NCCL_UINT8 = NCCL_INT64 = "other"
    available = True

    def __init__(self):
        self.log, self.arrays = [], {}
        fake = self

        class Comm:
            def __init__(self, n, uid, rank):
                fake.log.append(("init", n, uid, rank))

            def allReduce(self, send, recv, count, dtype, op, stream):
                assert send == recv, "in place"
                a = fake.arrays[send]
                assert a.size == count
                a *= 2
                fake.log.append(("allreduce", dtype, count))

            def bcast(self, buf, count, dtype, root, stream):
                fake.log.append(("bcast", dtype, count, root))

            def destroy(self):
                fake.log.append(("destroy",))

        self.NcclCommunicator = Comm

    def groupStart(self):
        self.log.append(("group",))

    def groupEnd(self):
        self.log.append(("end",))

    def get_unique_id(self):
        return (1, 2, 3)


def test_nccl_communicator_groups_in_place_calls(monkeypatch):
    from caffelite import backend
    from caffelite.parallel import nccl as nccl_mod
    fake = _FakeNccl()
    fake_cp = type("cp", (), {})()
    fake_cp.ndarray = _DevArray
    fake_cp.cuda = type("cuda", (), {})()
    fake_cp.cuda.Device = lambda i: type("D", (), {"use": lambda self: None})()
    fake_cp.cuda.get_current_stream = lambda: type("S", (), {"ptr": 0, "synchronize": lambda self: None})()
    fake_cp.asarray = lambda a: np.ascontiguousarray(a).view(_DevArray)
    fake_cp.zeros = lambda n, dtype: np.zeros(n, dtype).view(_DevArray)
    monkeypatch.setattr(backend, "cupy_module", lambda: fake_cp)
    monkeypatch.setattr(backend, "cupy_submodule", lambda name: fake)
    uid = nccl_mod.new_unique_id()
    assert nccl_mod.decode_unique_id(nccl_mod.encode_unique_id(uid)) == (1, 2, 3)
    c = nccl_mod.NcclCommunicator(2, 1, uid, device=1)
    assert (c.rank, c.size, c.is_root) == (1, 2, False)
    a = np.full((2, 3), 1.5, np.float32).view(_DevArray)
    b = np.full(4, 3.0, np.float64).view(_DevArray)
    for arr in (a, b):
        fake.arrays[arr.data.ptr] = arr
    c.allreduce_mean([a, b])
    np.testing.assert_array_equal(a, np.full((2, 3), 1.5, np.float32))  # (x + x) / 2
    assert fake.log[1:] == [("group",), ("allreduce", "f32", 6), ("allreduce", "f64", 4), ("end",)]
    fake.log.clear()
    c.broadcast([a], root=0)
    assert fake.log == [("group",), ("bcast", "f32", 6, 0), ("end",)]
    with pytest.raises(DeviceError):
        c.allreduce_sum([np.ones(3, np.float32)])  # host arrays are refused
    c.close()
    assert fake.log[-1] == ("destroy",)


def test_inline_nets_reads_net_files_and_divides_batches(tmp_path):
    from caffelite.parallel.worker import inline_nets
    (tmp_path / "train.prototxt").write_text(
        'name: "t" layer { name: "d" type: "Data" top: "data" data_param { source: "x" batch_size: 16 } }')
    (tmp_path / "test.prototxt").write_text(
        'name: "v" layer { name: "d" type: "Data" top: "data" data_param { source: "y" batch_size: 4 } }')
    sp = text_format.Parse('train_net: "train.prototxt" test_net: "test.prototxt" test_iter: 1',
                           caffe_pb2.SolverParameter())
    changed = inline_nets(sp, str(tmp_path), 3)
    assert changed == [("d", 16, 6)]
    assert not sp.HasField("train_net") and not sp.test_net
    assert sp.train_net_param.layer[0].data_param.batch_size == 6
    assert sp.test_net_param[0].layer[0].data_param.batch_size == 2  # 4 → 2 on 3 devices (§c.3: 4→2)
