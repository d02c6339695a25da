"""Message classes of every Caffe dialect, built at import from the shipped descriptor sets.

Each dialect lives in its own descriptor pool, because the dialects reuse the package name ``caffe`` and
collide on field numbers (see ``caffelite.io`` for detection). Usage::

    from caffelite.proto import caffe_pb2          # caffe-jacinto 0.17, the default dialect
    from caffelite.proto import dialect
    bvlc = dialect("bvlc"); bvlc.NetParameter()
"""

from __future__ import annotations

import os
import types

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_HERE = os.path.dirname(os.path.abspath(__file__))

#: dialect names, in detection preference order
DIALECTS = ("jacinto017", "jacinto016", "bvlc")
DEFAULT = "jacinto017"

_cache: dict[str, types.SimpleNamespace] = {}


def _build(name: str) -> types.SimpleNamespace:
    with open(os.path.join(_HERE, f"{name}.desc"), "rb") as f:
        fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    ns = types.SimpleNamespace(DIALECT=name, POOL=pool)
    fdesc = pool.FindFileByName("caffe.proto")
    for mname, mdesc in fdesc.message_types_by_name.items():
        setattr(ns, mname, message_factory.GetMessageClass(mdesc))
    for ename, edesc in fdesc.enum_types_by_name.items():
        setattr(ns, ename, edesc)
        for v in edesc.values:  # module-level enum constants, as in a generated caffe_pb2
            setattr(ns, v.name, v.number)
    return ns


def dialect(name: str = DEFAULT) -> types.SimpleNamespace:
    """Return the namespace of message classes of dialect ``name`` (one of :data:`DIALECTS`)."""
    if name not in _cache:
        if name not in DIALECTS:
            raise ValueError(f"unknown Caffe dialect {name!r}; known: {', '.join(DIALECTS)}")
        _cache[name] = _build(name)
    return _cache[name]


#: the default (caffe-jacinto 0.17) dialect, usable like a generated ``caffe_pb2`` module
caffe_pb2 = dialect(DEFAULT)
