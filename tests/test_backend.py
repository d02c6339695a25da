"""The backend without a GPU: every GPU request fails with one clear DeviceError line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from caffelite import backend
from caffelite.errors import CaffeliteError, DeviceError

from conftest import FIXTURES

no_gpu = pytest.mark.skipif(backend.cupy_available(), reason="this machine has a GPU")
SOLVER = os.path.join(FIXTURES, "solvers", "sgd_step", "solver.prototxt")


def test_cpu_mode_is_numpy():
    backend.set_mode_cpu()
    assert backend.mode() == backend.CPU
    assert backend.current_xp() is np
    a = np.ones(3)
    assert backend.get_array_module(a) is np
    assert backend.to_numpy(a) is a or np.shares_memory(backend.to_numpy(a), a)


@no_gpu
def test_gpu_mode_without_cupy_raises_one_line_device_error():
    with pytest.raises(DeviceError) as e:
        backend.set_mode_gpu()
    msg = str(e.value)
    assert "\n" not in msg and "GPU" in msg and "cuda12x" in msg
    assert isinstance(e.value, CaffeliteError)
    assert backend.mode() == backend.CPU  # the failed request changed nothing
    assert backend.current_xp() is np


@no_gpu
def test_cupy_accessors_raise_device_error_without_cupy():
    if backend._cupy is not None:
        pytest.skip("CuPy is installed (without a device)")
    with pytest.raises(DeviceError):
        backend.cupy_module()
    with pytest.raises(DeviceError):
        backend.cupy_submodule("cuda.nccl")


@no_gpu
@pytest.mark.parametrize("gpus", ["0", "0,1", "all"])
def test_cli_gpu_flag_prints_one_line_and_fails(gpus, tmp_path):
    out = subprocess.run([sys.executable, "-m", "caffelite", "train", "--solver", SOLVER, "--gpu", gpus],
                         capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert out.returncode != 0
    err = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(err) == 1, out.stderr
    assert err[0].startswith("caffelite train: error:")
    assert "GPU" in err[0] or "gpu" in err[0]
    assert not os.listdir(tmp_path), "nothing was trained or written"


@no_gpu
def test_set_device_in_cpu_mode_only_records_the_id():
    backend.set_mode_cpu()
    backend.set_device(3)
    try:
        assert backend.mode() == backend.CPU
    finally:
        backend.set_device(0)
