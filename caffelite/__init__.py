"""caffelite: a Caffe-compatible engine in Python, on NumPy (CPU) and CuPy (NVIDIA GPUs).

The public API mirrors pycaffe, so scripts port by changing one import::

    import caffelite as caffe
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    out = net.forward(data=image)
"""

from __future__ import annotations

from .backend import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from .errors import CaffeliteError, FileFormatError, NetError, SolverError, UnsupportedError
from .layer import TEST, TRAIN, Layer, register

__version__ = "0.1.0"

__all__ = [
    "TRAIN", "TEST", "Net", "Layer", "register", "set_mode_cpu", "set_mode_gpu", "set_device",
    "set_random_seed", "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
    "AdaDeltaSolver", "AdamSolver", "CaffeliteError", "FileFormatError", "NetError", "SolverError",
    "UnsupportedError", "io",
]

# Heavier parts load on first use, so `import caffelite` stays fast and a CLI command imports only what it needs.
_LAZY = {
    "Net": ("caffelite.net", "Net"),
    "get_solver": ("caffelite.solvers", "get_solver"),
    "SGDSolver": ("caffelite.solvers", "SGDSolver"),
    "NesterovSolver": ("caffelite.solvers", "NesterovSolver"),
    "AdaGradSolver": ("caffelite.solvers", "AdaGradSolver"),
    "RMSPropSolver": ("caffelite.solvers", "RMSPropSolver"),
    "AdaDeltaSolver": ("caffelite.solvers", "AdaDeltaSolver"),
    "AdamSolver": ("caffelite.solvers", "AdamSolver"),
    "io": ("caffelite.io", None),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        m = importlib.import_module(mod)
        return m if attr is None else getattr(m, attr)
    raise AttributeError(f"module 'caffelite' has no attribute {name!r}")
