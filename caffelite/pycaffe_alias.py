"""Make ``import caffe`` load caffelite, so unmodified pycaffe scripts run (``caffelite pyrun`` does this
before running a script).

After :func:`alias_caffe`, ``caffe`` and pycaffe's submodule names (``caffe.io``, ``caffe.proto.caffe_pb2``,
``caffe.net_spec``, ``caffe.draw``...) are entries of ``sys.modules`` pointing at caffelite's modules.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["alias_caffe", "ALIASES"]

#: pycaffe module name -> caffelite module name
ALIASES = {
    "caffe": "caffelite",
    "caffe.io": "caffelite.io",
    "caffe.proto": "caffelite.proto",
    "caffe.proto.caffe_pb2": "caffelite.proto.caffe_pb2",
    "caffe.net_spec": "caffelite.net_spec",
    "caffe.coord_map": "caffelite.coord_map",
    "caffe.classifier": "caffelite.classifier",
    "caffe.detector": "caffelite.detector",
    "caffe.draw": "caffelite.draw",
    # pycaffe's Net/solvers module and its compiled core: both are caffelite's top level here
    "caffe.pycaffe": "caffelite",
    "caffe._caffe": "caffelite",
}


def alias_caffe(force: bool = False) -> None:
    """Register ``caffe`` (and its submodules) as caffelite in ``sys.modules``.

    An already-imported real ``caffe`` is left alone (a ValueError says so) unless ``force=True``.
    """
    current = sys.modules.get("caffe")
    if current is not None and not force and getattr(current, "__name__", "") != "caffelite":
        raise ValueError(f"a module 'caffe' is already imported ({getattr(current, '__file__', '?')}); "
                         f"call alias_caffe(force=True) to replace it")
    for alias, target in ALIASES.items():
        sys.modules[alias] = importlib.import_module(target)
