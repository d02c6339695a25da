"""Caffe's solvers: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam, with Caffe's loop and snapshots.

Usage (pycaffe-like)::

    import caffelite
    solver = caffelite.get_solver("solver.prototxt")
    solver.net.copy_from("init.caffemodel")
    solver.solve()            # or solver.step(1)
"""

from __future__ import annotations

import os

from ..errors import SolverError
from . import adaptive, sgd  # noqa: F401  (register the solver classes)
from .adaptive import AdaDeltaSolver, AdaGradSolver, AdamSolver, RMSPropSolver
from .base import HOOK_EVENTS, NonFiniteLossError, Solver, register_solver, solver_class
from .sgd import NesterovSolver, SGDSolver

__all__ = [
    "get_solver", "read_solver_param", "Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
    "AdaDeltaSolver", "AdamSolver", "register_solver", "solver_class", "HOOK_EVENTS", "NonFiniteLossError",
]


def read_solver_param(path):
    """Read a solver prototxt (upgraded) and apply Caffe's snapshot_prefix default.

    As BVLC's ``ReadSolverParamsFromTextFileOrDie``: an empty ``snapshot_prefix`` becomes the solver file's
    path without its extension; a prefix that is a directory (ends in ``/``) gets the file's stem appended.
    """
    from .. import io
    param = io.read_solver(path)
    stem = os.path.splitext(path)[0]
    if not param.snapshot_prefix:
        param.snapshot_prefix = stem
    elif param.snapshot_prefix.endswith(("/", os.sep)):
        param.snapshot_prefix = param.snapshot_prefix + os.path.basename(stem)
    return param


def get_solver(solver_param_or_path, net=None, test_nets=None, *, level=0, stages=(), solver_type=None,
               flavor="bvlc"):
    """Build the solver a SolverParameter (or a solver prototxt path) describes (pycaffe's ``get_solver``).

    ``solver_type`` overrides the ``type`` field; ``net``/``test_nets`` may be given pre-built; ``flavor``
    ("bvlc", "jacinto", "jacinto016") picks the log dialect and initial-test rule (solvers/display.py).
    """
    base_dir = None
    if isinstance(solver_param_or_path, (str, os.PathLike)):
        path = os.fspath(solver_param_or_path)
        param = read_solver_param(path)
        base_dir = os.path.dirname(os.path.abspath(path))
    else:
        param = solver_param_or_path
    if solver_type is not None:
        param.type = solver_type
    cls = solver_class(param)
    if cls is None:  # pragma: no cover
        raise SolverError(f"Unknown solver type: {param.type}")
    return cls(param, net, test_nets, level=level, stages=stages, base_dir=base_dir, flavor=flavor)
