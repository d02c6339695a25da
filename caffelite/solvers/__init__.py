"""Caffe's solvers: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam, with Caffe's loop and snapshots.

Usage (pycaffe-like)::

    import caffelite
    solver = caffelite.get_solver("solver.prototxt")
    solver.net.copy_from("init.caffemodel")
    solver.solve()            # or solver.step(1)
"""

from __future__ import annotations

import os

from . import adaptive, sgd  # noqa: F401  (register the solver classes)
from .adaptive import AdaDeltaSolver, AdaGradSolver, AdamSolver, RMSPropSolver
from .base import HOOK_EVENTS, NonFiniteLossError, Solver, register_solver, solver_class
from .netutil import read_solver_param
from .sgd import NesterovSolver, SGDSolver

__all__ = [
    "get_solver", "read_solver_param", "Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
    "AdaDeltaSolver", "AdamSolver", "register_solver", "solver_class", "HOOK_EVENTS", "NonFiniteLossError",
]


def get_solver(solver_param_or_path, net=None, test_nets=None, *, level=0, stages=(), solver_type=None,
               flavor="bvlc", extensions=True):
    """Build the solver a SolverParameter (or a solver prototxt path) describes (pycaffe's ``get_solver``).

    ``solver_type`` overrides the ``type`` field; ``net``/``test_nets`` may be given pre-built; ``flavor``
    ("bvlc", "jacinto", "jacinto016") picks the log dialect and initial-test rule (solvers/display.py);
    ``extensions=False`` skips the registered solver extensions (:mod:`caffelite.extensions`).
    """
    param, base_dir = solver_param_or_path, None
    if isinstance(param, (str, os.PathLike)):
        path = os.fspath(param)
        param = read_solver_param(path)
        base_dir = os.path.dirname(os.path.abspath(path))
    if solver_type is not None:
        param.type = solver_type
    return solver_class(param)(param, net, test_nets, level=level, stages=stages, base_dir=base_dir, flavor=flavor,
                               extensions=extensions)
