"""The array backend: NumPy on the CPU, CuPy on NVIDIA GPUs.

This is the only module that imports CuPy. Layers write one body against ``xp`` (Chainer's idiom): they
take the array module from :func:`get_array_module` of their inputs, or :data:`xp` for the current mode.
"""

from __future__ import annotations

import numpy as np

from .errors import DeviceError

try:  # guarded: CuPy is an optional extra
    import cupy as _cupy  # noqa: F401
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None

CPU, GPU = "CPU", "GPU"

_state = {"mode": CPU, "device": 0, "seed": None}
_rng = {"np": np.random.default_rng()}


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover
        return False


def cupy_module():
    """The ``cupy`` module, for code that needs CuPy itself (named kernels, NCCL); DeviceError without it."""
    if _cupy is None:
        raise DeviceError("CuPy is not installed: GPU features need caffelite[cuda12x] or caffelite[cuda13x]")
    return _cupy


def cupy_submodule(name: str):
    """``cupy.<name>`` (e.g. ``"cuda.nccl"``), imported on first use; DeviceError when unavailable."""
    import importlib
    cupy_module()
    try:
        return importlib.import_module("cupy." + name)
    except Exception as e:  # e.g. CuPy built without NCCL
        raise DeviceError(f"cupy.{name} is not available: {e}") from None


def device_count() -> int:
    """Number of CUDA devices CuPy sees (0 without CuPy or a GPU)."""
    if not cupy_available():
        return 0
    return int(_cupy.cuda.runtime.getDeviceCount())


def mode() -> str:
    """The current mode, ``"CPU"`` or ``"GPU"``."""
    return _state["mode"]


def set_mode_cpu() -> None:
    """Run nets created from now on with NumPy."""
    _state["mode"] = CPU


def set_mode_gpu() -> None:
    """Run nets created from now on with CuPy on the current device; fails clearly without one."""
    if not cupy_available():
        raise DeviceError("GPU mode requested but CuPy or an NVIDIA GPU is not available "
                          "(install caffelite[cuda12x] or caffelite[cuda13x] on a machine with a GPU)")
    _state["mode"] = GPU
    _cupy.cuda.Device(_state["device"]).use()


def set_device(device_id: int) -> None:
    """Select the GPU used in GPU mode."""
    _state["device"] = int(device_id)
    if _state["mode"] == GPU:
        _cupy.cuda.Device(int(device_id)).use()


def current_xp():
    """The array module of the current mode."""
    return _cupy if _state["mode"] == GPU else np


def get_array_module(*arrays):
    """The array module (numpy or cupy) that owns ``arrays``."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def to_numpy(a):
    """A host NumPy array for ``a`` (a copy only when it lives on a GPU)."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def asarray(a, xp=None, dtype=None):
    """``a`` as an array of module ``xp`` (default: the current mode's)."""
    xp = xp or current_xp()
    return xp.asarray(a, dtype=dtype)


def set_random_seed(seed: int) -> None:
    """Seed caffelite's random generators (fillers, dropout, data shuffles), as ``caffe.set_random_seed``."""
    _state["seed"] = int(seed)
    _rng["np"] = np.random.default_rng(int(seed))
    if _cupy is not None and cupy_available():
        _cupy.random.seed(int(seed))


def rng() -> np.random.Generator:
    """The host random generator (fillers and data augmentation draw from it)."""
    return _rng["np"]


def rng_state():
    """A picklable snapshot of the random state (stored in solverstates so resume is exact)."""
    return _rng["np"].bit_generator.state


def set_rng_state(state) -> None:
    """Restore a state from :func:`rng_state`."""
    g = np.random.default_rng()
    g.bit_generator.state = state
    _rng["np"] = g
