"""Fuzz the binary readers with mutated fixture files: only caffelite's error types may escape.

A few hundred examples by default; a few thousand with --runslow.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caffelite import io
from caffelite.errors import CaffeliteError
from conftest import FIXTURES

SEEDS = [
    os.path.join(FIXTURES, "nets", "cifar10_quick", "weights.caffemodel"),
    os.path.join(FIXTURES, "solvers", "sgd_step", "init.caffemodel"),
    os.path.join(FIXTURES, "legacy", "tiny_v0", "net.caffemodel"),
    os.path.join(FIXTURES, "legacy", "tiny_v1_binary", "net.caffemodel"),
    os.path.join(FIXTURES, "layers", "conv_plain", "weights.caffemodel"),
    os.path.join(FIXTURES, "lmdb", "mean.binaryproto"),
    os.path.join(FIXTURES, "solvers", "adam", "snapshot_iter_6.solverstate"),
]
DATA = [open(p, "rb").read() for p in SEEDS]
KINDS = [io.file_kind(p) for p in SEEDS]


@st.composite
def mutated(draw):
    i = draw(st.integers(0, len(DATA) - 1))
    data = bytearray(DATA[i])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        else:
            del data[pos:pos + draw(st.integers(1, 16))]
    return KINDS[i], bytes(data)


def _read_weights(path):
    net = io.read_weights(path)
    for l in net.layer:
        for b in l.blobs:
            io.blob_to_array(b)


def _load_lazy(path):
    _, _, arrays = io.load_weights(path, lazy=True)  # what Net.copy_from uses
    for blobs in arrays.values():
        for b in blobs:
            if hasattr(b, "read"):
                b.read()


def _read_all(kind, path):
    if kind == "weights":
        for reader in (_read_weights, io.load_weights, _load_lazy):  # protobuf route, streaming, Net's route
            try:
                reader(path)
            except CaffeliteError:
                pass
    elif kind == "binaryproto":
        io.read_binaryproto(path)
    else:
        io.read_solverstate(path)


def _check(tmp_path_factory, case):
    kind, data = case
    ext = {"weights": ".caffemodel", "binaryproto": ".binaryproto", "solverstate": ".solverstate"}[kind]
    path = tmp_path_factory.mktemp("fuzz") / ("m" + ext)
    path.write_bytes(data)
    try:
        _read_all(kind, path)
    except CaffeliteError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=mutated())
def test_fuzz_binary_readers(tmp_path_factory, case):
    _check(tmp_path_factory, case)


@pytest.mark.slow
@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(case=mutated())
def test_fuzz_binary_readers_long(tmp_path_factory, case):
    _check(tmp_path_factory, case)


TEXTS = [open(os.path.join(FIXTURES, *p), "rb").read() for p in (
    ("legacy", "tiny_v0_text", "net.prototxt"), ("legacy", "lenet_v1_train_test", "net.prototxt"),
    ("layers", "clip", "net.prototxt"), ("solvers", "sgd_step", "train_val.prototxt"))]


@st.composite
def mutated_text(draw):
    data = bytearray(draw(st.sampled_from(TEXTS)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set":
            data[pos] = draw(st.sampled_from(b'{}:"# \\n0123456789abcXYZ_-.\xff'))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"{", b"}", b'"', b"layers {", b"input_dim: 3\n", b"\x00"]))
        else:
            del data[pos:pos + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=200, deadline=None)
@given(text=mutated_text())
def test_fuzz_text_reader(text):
    try:
        net, _ = io.parse_net_text(text, "fuzz.prototxt")
    except CaffeliteError:
        return
    io.serialize_weights(net)
