"""The Python layer (``type: "Python"``): a layer written in Python by the user, as pycaffe's.

``python_param { module: "my_layers" layer: "MyLayer" param_str: "..." }`` imports ``my_layers`` (from
``sys.path``, which includes ``PYTHONPATH``) and instantiates ``MyLayer``, a subclass of
:class:`caffelite.Layer` implementing ``setup``/``reshape``/``forward``/``backward`` on Caffe's contract.
The instance sees ``self.param_str``, ``self.phase`` and ``self.blobs`` (with pycaffe's
``self.blobs.add_blob(*shape)``); its blobs are saved and loaded with the net's weights like any layer's.

Importing a module runs its code, so the library allows it by default (a Python script already runs the
user's code) while the ``caffelite`` command line enables it only with ``--allow-python-layers``
(:func:`set_python_layers_allowed`).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from ..blob import Blob
from ..errors import CaffeliteError, NetError
from ..layer import TEST, Layer, register

__all__ = ["PythonLayer", "PythonLayerError", "BlobVec", "set_python_layers_allowed", "python_layers_allowed"]


class PythonLayerError(NetError, RuntimeError):
    """The user's Python layer code failed (import, setup, forward...): also a RuntimeError, the type pycaffe
    raises there, so scripts catching it keep working."""

#: environment variable the ``caffelite`` command sets to "0" (inherited by its worker processes) unless it
#: was given --allow-python-layers; any other value, or none, allows Python layers
ENV = "CAFFELITE_PYTHON_LAYERS"
_HINT = "Python layers import and run code: the caffelite command runs them only with --allow-python-layers"


def set_python_layers_allowed(allowed: bool) -> None:
    """Allow (the library's default) or refuse nets with Python layers, in this process and its children."""
    os.environ[ENV] = "1" if allowed else "0"


def python_layers_allowed() -> bool:
    return os.environ.get(ENV, "1") != "0"


class BlobVec(list):
    """A layer's param blobs: a list of Blobs with pycaffe's ``add_blob(*shape)``."""

    def __init__(self, dtype, xp):
        super().__init__()
        self._dtype, self._xp = dtype, xp

    def add_blob(self, *shape):
        """Append a zero-filled blob of ``shape`` (pycaffe's ``BlobVec.add_blob``)."""
        self.append(Blob(tuple(int(s) for s in shape), self._dtype, self._xp))


def _user_traceback(e: BaseException) -> str:
    """The traceback of ``e`` from the first frame of user code on (our wrapper frames dropped)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb)).rstrip()


@register("Python")
class PythonLayer(Layer):
    """Runs the user's layer class (``python_param.module`` / ``python_param.layer``) in place of itself.

    ``net.layers[i]`` is this wrapper; attributes it does not have are looked up on the user's instance
    (``impl``), so scripts reading their own layer's attributes keep working. An exception raised by the
    user's code becomes a NetError naming the layer, with the user's traceback.
    """

    param_fields = {"python_param": ("module", "layer", "param_str", "share_in_parallel")}

    def __init__(self, param, phase=TEST, extra=None):
        super().__init__(param, phase, extra)
        p = param.python_param
        if not python_layers_allowed():
            raise NetError(f"not importing python_param.module '{p.module}': {_HINT}",
                           param.name, "Python")
        if not p.module or not p.layer:
            raise NetError("python_param needs both 'module' and 'layer'", param.name, "Python")
        try:
            mod = importlib.import_module(p.module)
        except ModuleNotFoundError as e:
            if e.name == p.module or p.module.startswith(f"{e.name}."):
                raise NetError(f"python_param.module '{p.module}' not found on the Python path "
                               f"(sys.path, PYTHONPATH; current directory: {'' in sys.path})",
                               param.name, "Python") from None
            raise PythonLayerError(f"importing python_param.module '{p.module}' failed:\n{_user_traceback(e)}",
                                   param.name, "Python") from None
        except Exception as e:
            raise PythonLayerError(f"importing python_param.module '{p.module}' failed:\n{_user_traceback(e)}",
                                   param.name, "Python") from None
        cls = getattr(mod, p.layer, None)
        if cls is None:
            raise NetError(f"module '{p.module}' ({getattr(mod, '__file__', '?')}) has no python_param.layer "
                           f"'{p.layer}'", param.name, "Python")
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise NetError(f"python_param.layer '{p.module}.{p.layer}' must be a subclass of caffelite.Layer "
                           f"(caffe.Layer)", param.name, "Python")
        impl = cls.__new__(cls)
        Layer.__init__(impl, param, phase, extra)
        impl.param_str = p.param_str
        impl.type = "Python"
        self.impl = impl

    def __getattr__(self, name):
        # only reached for attributes the wrapper lacks; 'impl' itself must exist first
        if name == "impl":
            raise AttributeError(name)
        return getattr(self.impl, name)

    @property
    def param_str(self):
        return self.impl.param_str

    @property
    def blobs(self):
        return self.impl.blobs

    @blobs.setter
    def blobs(self, value):
        if "impl" in self.__dict__:
            self.impl.blobs = value

    def _call(self, what, fn, *args):
        p = self.param.python_param
        try:
            return fn(*args)
        except CaffeliteError:
            raise
        except Exception as e:
            raise PythonLayerError(f"{p.module}.{p.layer}.{what} raised {type(e).__name__}: {e}\n"
                                   f"{_user_traceback(e)}", self.name, "Python") from e

    def setup(self, bottom, top):
        xp = top[0].xp if top else (bottom[0].xp if bottom else self.xp)
        dtype = top[0].dtype if top else (bottom[0].dtype if bottom else None)
        self.impl.blobs = BlobVec(dtype if dtype is not None else "float32", xp)
        self._call("setup", self.impl.setup, bottom, top)

    def reshape(self, bottom, top):
        self._call("reshape", self.impl.reshape, bottom, top)

    def forward(self, bottom, top):
        self._call("forward", self.impl.forward, bottom, top)

    def backward(self, top, propagate_down, bottom):
        self._call("backward", self.impl.backward, top, propagate_down, bottom)
