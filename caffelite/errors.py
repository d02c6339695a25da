"""caffelite's exception types.

Every error a user can cause is one of these; each message names where the problem is (file and line of a
prototxt, layer name and type, or field), so the command line can print it as one line and exit 2.
They derive from the built-in type a Python caller would expect, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class CaffeliteError(Exception):
    """Base of every error caffelite raises on bad input."""


class FileFormatError(CaffeliteError, ValueError):
    """A model, weight, solver or state file is unreadable: syntax error, not a protobuf, truncated, bad blob."""

    def __init__(self, path, message, line=None, column=None):
        where = str(path) if path is not None else "<input>"
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.column, self.reason = path, line, column, message


class NetError(CaffeliteError, ValueError):
    """The net is ill-formed: missing bottom, duplicate top, unknown type, bad shapes, weights for another net."""

    def __init__(self, message, layer=None, layer_type=None):
        prefix = ""
        if layer is not None:
            prefix = f"layer '{layer}'" + (f" (type {layer_type})" if layer_type else "") + ": "
        super().__init__(prefix + message)
        self.layer, self.layer_type = layer, layer_type


class UnsupportedError(NetError, NotImplementedError):
    """A Caffe option that caffelite does not implement (never silently defaulted)."""


class SolverError(CaffeliteError, ValueError):
    """A solver definition or state that cannot be used (bad policy, state from another net)."""


class DeviceError(CaffeliteError, RuntimeError):
    """A GPU was requested but CuPy or a device is not available."""
