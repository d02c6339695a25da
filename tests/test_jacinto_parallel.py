"""Data-parallel runs (issues 5 and 7): sparsity masks and quantization ranges are decided once, by the root,
and broadcast through ``caffelite.parallel.broadcast_state``; on one device that is a no-op.

Two replicas are simulated in one process, stepped in lockstep: a fake active replica records what the root
broadcasts and hands it to the other replica, which therefore must end with the root's state even though its
own data (gradients, activations) differ. test_parallel_mpi.py runs the real thing with MPI.
"""

from collections import deque

import numpy as np
import pytest
from google.protobuf import text_format

from caffelite.jacinto import sparsity as sp
from caffelite.jacinto import sparsity_stats as st
from caffelite.parallel import replica as replica_mod
from caffelite.proto import caffe_pb2

from test_jacinto_quantization import SMALL
from test_jacinto_sparsity import FakeSolver, make_net, solver_param


class FakeReplica:
    """``current()`` for one simulated replica: rank 0 queues copies of what it broadcasts, rank 1 takes them."""

    def __init__(self, rank, queue):
        self.rank, self.queue, self.names = rank, queue, []

    def broadcast_state(self, name, arrays):
        arrays = list(arrays)
        self.names.append(name)
        if self.rank == 0:
            self.queue.append((name, [np.array(a, copy=True) for a in arrays]))
        else:
            root_name, values = self.queue.popleft()
            assert root_name == name and len(values) == len(arrays)
            for a, v in zip(arrays, values, strict=True):
                a[...] = v
        return arrays


@pytest.fixture
def replicas(monkeypatch):
    """``(activate(rank), [rank 0 replica, rank 1 replica])``; deactivated at the end."""
    q = deque()
    reps = [FakeReplica(0, q), FakeReplica(1, q)]

    def activate(rank):
        monkeypatch.setitem(replica_mod._ACTIVE, "replica", reps[rank] if rank is not None else None)

    yield activate, reps
    activate(None)


@pytest.mark.parametrize("version", ["0.16", "0.17"])
def test_sparsity_masks_are_the_roots(replicas, version):
    activate, reps = replicas
    nets = [make_net(0), make_net(0)]
    solvers = [FakeSolver(solver_param(max_iter=30), n) for n in nets]
    hooks = [sp.attach_sparsity(s, version=version) for s in solvers]
    rngs = [np.random.default_rng(1), np.random.default_rng(2)]  # each replica's own (different) updates
    for _ in range(30):
        for r in (0, 1):
            activate(r)
            solvers[r].step(1, rngs[r])
    assert "sparsity masks" in reps[1].names and reps[0].names == reps[1].names
    assert hooks[1].factor == hooks[0].factor
    for i, m in hooks[0].masks.items():
        np.testing.assert_array_equal(hooks[1].masks[i], m)
    assert st.sparsity(nets[1], hooks[1].masks) > 0.5
    # without the broadcast the replica would decide its own masks: check the test can tell
    alone = make_net(0)
    s = FakeSolver(solver_param(max_iter=30), alone)
    h = sp.attach_sparsity(s, version=version)
    activate(None)
    s.step(30, np.random.default_rng(2))
    assert any(not np.array_equal(h.masks[i], m) for i, m in hooks[0].masks.items())


def test_single_device_broadcasts_nothing(replicas):
    activate, reps = replicas
    activate(None)
    net = make_net(0)
    s = FakeSolver(solver_param(max_iter=12), net)
    sp.attach_sparsity(s)
    s.step(12, np.random.default_rng(0))
    assert reps[0].names == [] and reps[1].names == []


def _qnet(phase, version):
    from caffelite import backend, jacinto
    from caffelite.net import Net
    backend.set_random_seed(5)
    net = Net(text_format.Parse(SMALL, caffe_pb2.NetParameter()), phase)
    return net, jacinto.attach_quantization(net, version=version)


@pytest.mark.parametrize("version", ["0.16", "0.17"])
@pytest.mark.parametrize("phase", [0, 1], ids=["TRAIN", "TEST"])
def test_quantization_ranges_and_weights_are_the_roots(replicas, version, phase):
    activate, reps = replicas
    pairs = [_qnet(phase, version) for _ in range(2)]
    rng = np.random.default_rng(0)
    for _ in range(4):
        for r, (net, _) in enumerate(pairs):
            activate(r)
            scale = 1.0 if r == 0 else 3.0  # replica 1 sees other activations
            net.forward(data=(rng.standard_normal((2, 3, 6, 6)) * scale).astype(np.float32))
    hooks = [h for _, h in pairs]
    assert reps[0].names == reps[1].names and "quantization ranges" in reps[1].names
    for a, b in zip(hooks[0].range_tables(), hooks[1].range_tables(), strict=True):
        np.testing.assert_array_equal(a, b)
    # the quantized weights (random rounding in TRAIN with 0.17) are the root's too
    if phase == 0 and version == "0.17":
        assert "quantized weights" in reps[1].names
    for ly0, ly1 in zip(pairs[0][0].layers, pairs[1][0].layers, strict=True):
        for b0, b1 in zip(ly0.blobs, ly1.blobs, strict=True):
            np.testing.assert_array_equal(b0.data, b1.data)
    q0 = pairs[0][0].layer_dict["conv1"].param.quantization_param
    q1 = pairs[1][0].layer_dict["conv1"].param.quantization_param
    assert q0 == q1  # every scale and offset decided from the root's ranges
