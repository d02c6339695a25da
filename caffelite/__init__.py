"""caffelite: a Caffe-compatible engine in Python, on NumPy (CPU) and CuPy (NVIDIA GPUs).

The public API mirrors pycaffe, so scripts port by changing one import::

    import caffelite as caffe
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    out = net.forward(data=image)

As in caffe-jacinto, a net with ``quantize: true`` quantizes and a solver with ``sparse_mode`` prunes;
``Net(..., extensions=False)`` / ``get_solver(..., extensions=False)`` build them bare.
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
    "UnsupportedError", "io", "NetSpec", "layers", "params", "to_proto", "Classifier", "Detector", "Timer",
    "init_log", "layer_type_list", "has_nccl", "NCCL", "alias_caffe", "set_log_level", "__version__",
    "export_onnx",
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
    "export_onnx": ("caffelite.export", "export_onnx"),
    # pycaffe's names (see README "pycaffe compatibility")
    "layers": ("caffelite.layers", None),
    "params": ("caffelite.net_spec", "params"),
    "NetSpec": ("caffelite.net_spec", "NetSpec"),
    "to_proto": ("caffelite.net_spec", "to_proto"),
    "net_spec": ("caffelite.net_spec", None),
    "coord_map": ("caffelite.coord_map", None),
    "classifier": ("caffelite.classifier", None),
    "detector": ("caffelite.detector", None),
    "draw": ("caffelite.draw", None),
    "proto": ("caffelite.proto", None),
    "Classifier": ("caffelite.classifier", "Classifier"),
    "Detector": ("caffelite.detector", "Detector"),
    "alias_caffe": ("caffelite.pycaffe_alias", "alias_caffe"),
    "set_log_level": ("caffelite.log", "set_log_level"),
    **{n: ("caffelite.pycaffe_misc", n) for n in (
        "Timer", "init_log", "layer_type_list", "solver_count", "set_solver_count", "solver_rank",
        "set_solver_rank", "set_multiprocess", "has_nccl", "NCCL")},
}


#: entry points whose nets/solvers get the registered extensions: caffe-jacinto's quantization and sparsity
#: (caffelite.jacinto registers them on import), so a Python script behaves as ``caffelite train/test`` does
_EXTENDED = {"Net", "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
             "AdaDeltaSolver", "AdamSolver"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        if name in _EXTENDED:
            importlib.import_module("caffelite.jacinto")
        mod, attr = _LAZY[name]
        m = importlib.import_module(mod)
        return m if attr is None else getattr(m, attr)
    raise AttributeError(f"module 'caffelite' has no attribute {name!r}")
