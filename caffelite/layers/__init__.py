"""Built-in layers, one module per family. Importing this package registers them all.

Attribute access by a Caffe type name (``caffelite.layers.Convolution``) returns NetSpec's layer factory,
so pycaffe's ``from caffe import layers as L`` works unchanged (see :mod:`caffelite.net_spec`).
"""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")


def __getattr__(name):
    # ``from caffelite import layers as L`` (pycaffe's NetSpec idiom) yields this package, so Caffe type
    # names (CamelCase, never a module name here) resolve to NetSpec's layer factory: L.Convolution(...)
    if name[:1].isupper():
        from ..net_spec import layers as _netspec_layers

        return getattr(_netspec_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
