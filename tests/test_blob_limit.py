"""Absurd sizes are refused, not attempted: a blob whose bytes exceed the limit (the memory available, or
$CAFFELITE_MAX_BLOB_BYTES / caffelite.blob.MAX_BYTES) raises a NetError naming the layer and the size."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import caffelite
from caffelite import blob as blob_mod
from caffelite.errors import CaffeliteError, NetError

MVN = """
name: "mvn"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}
layer {{ name: "mvn" type: "MVN" bottom: "data" top: "mvn" }}
layer {{ name: "ip" type: "InnerProduct" bottom: "mvn" top: "ip"
  inner_product_param {{ num_output: {nout} weight_filler {{ type: "constant" value: 0.5 }} }} }}
"""


def _net(tmp_path, dims, nout=2):
    p = tmp_path / "net.prototxt"
    p.write_text(MVN.format(dims=" ".join(f"dim: {d}" for d in dims), nout=nout))
    return str(p)


def test_absurd_input_refused_with_default_limit(tmp_path):
    """1×3×10⁶×10⁶ floats (12 TB): more than any machine has; refused at the Input layer, naming the size."""
    with pytest.raises(NetError) as e:
        caffelite.Net(_net(tmp_path, [1, 3, 1000000, 1000000]), caffelite.TEST)
    msg = str(e.value)
    assert "'data'" in msg and "12000000000000 bytes" in msg and "memory available" in msg


def test_absurd_param_refused(tmp_path):
    """A weight blob (InnerProduct with a mutated num_output: 2³¹-1 × 192 floats, 1.6 TB) is checked too."""
    with pytest.raises(NetError) as e:
        caffelite.Net(_net(tmp_path, [1, 3, 8, 8], nout=2 ** 31 - 1), caffelite.TEST)
    assert "'ip'" in str(e.value) and "bytes" in str(e.value)


def test_env_and_attribute_override(tmp_path, monkeypatch):
    path = _net(tmp_path, [1, 3, 16, 16])   # 3 KiB blobs
    caffelite.Net(path, caffelite.TEST)
    monkeypatch.setenv(blob_mod.ENV_MAX_BYTES, "2048")
    with pytest.raises(NetError, match=r"3072 bytes .*of \$CAFFELITE_MAX_BLOB_BYTES"):
        caffelite.Net(path, caffelite.TEST)
    monkeypatch.delenv(blob_mod.ENV_MAX_BYTES)
    monkeypatch.setattr(blob_mod, "MAX_BYTES", 1000)
    with pytest.raises(NetError, match="caffelite.blob.MAX_BYTES"):
        caffelite.Net(path, caffelite.TEST)
    monkeypatch.setattr(blob_mod, "MAX_BYTES", None)
    net = caffelite.Net(path, caffelite.TEST)
    # a reshape from Python is checked as well, and the net stays usable at its old shape
    monkeypatch.setattr(blob_mod, "MAX_BYTES", 1 << 20)
    net.blobs["data"].reshape(1, 3, 16, 16)
    with pytest.raises(ValueError, match="bytes"):
        net.blobs["data"].reshape(1, 3, 1024, 1024)
    assert net.blobs["data"].shape == (1, 3, 16, 16)
    out = net.forward(data=np.ones((1, 3, 16, 16), np.float32))
    assert out["ip"].shape == (1, 2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(axis=st.integers(0, 3), value=st.integers(1, 1 << 62))
def test_fuzz_mutated_dimension_typed_errors(tmp_path, monkeypatch, axis, value):
    """A mutated dimension gives a working net or a caffelite error, never MemoryError/ValueError/OverflowError."""
    monkeypatch.setattr(blob_mod, "MAX_BYTES", 64 << 20)
    dims = [1, 3, 8, 8]
    dims[axis] = value
    try:
        net = caffelite.Net(_net(tmp_path, dims), caffelite.TEST)
        net.forward()
    except CaffeliteError:
        pass
