"""Net and solver extensions: features that live outside the core but that every Net / Solver gets when built.

A package registers a function under a name; :class:`caffelite.net.Net` calls each net extension as ``fn(net)``
at the end of its construction, and a solver calls each solver extension as ``fn(solver)`` once its nets are
built (the nets a solver builds itself skip the net extensions, so a solver extension sees them bare and
installs what they need once). ``Net(..., extensions=False)`` and ``get_solver(..., extensions=False)`` build
without any. Registering the same name again replaces the function, so a re-imported module does not
install twice; extensions must themselves be idempotent (calling one twice on an object installs once).
"""

from __future__ import annotations

__all__ = ["register_net_extension", "register_solver_extension", "apply_net_extensions",
           "apply_solver_extensions", "net_extensions", "solver_extensions"]

_NET: dict = {}
_SOLVER: dict = {}


def _check(name, fn):
    if not isinstance(name, str) or not name:
        raise ValueError(f"extension name must be a non-empty string, not {name!r}")
    if not callable(fn):
        raise TypeError(f"extension '{name}' is not callable: {fn!r}")


def register_net_extension(name: str, fn) -> None:
    """Call ``fn(net)`` at the end of every Net's construction (unless built with ``extensions=False``)."""
    _check(name, fn)
    _NET[name] = fn


def register_solver_extension(name: str, fn) -> None:
    """Call ``fn(solver)`` at the end of every solver's construction (unless built with ``extensions=False``)."""
    _check(name, fn)
    _SOLVER[name] = fn


def net_extensions() -> list[str]:
    """Names of the registered net extensions, in registration order."""
    return list(_NET)


def solver_extensions() -> list[str]:
    """Names of the registered solver extensions, in registration order."""
    return list(_SOLVER)


def apply_net_extensions(net) -> None:
    """Run every registered net extension on ``net``."""
    for fn in list(_NET.values()):
        fn(net)


def apply_solver_extensions(solver) -> None:
    """Run every registered solver extension on ``solver``."""
    for fn in list(_SOLVER.values()):
        fn(solver)
