"""The caffe-jacinto 0.17 message classes as a module, so ``from caffelite.proto import caffe_pb2`` and
``import caffelite.proto.caffe_pb2`` work as with a generated ``caffe_pb2`` (pycaffe's ``caffe.proto.caffe_pb2``).

The classes are those of :func:`caffelite.proto.dialect` for the default dialect: one set, shared with
the rest of caffelite.
"""

from __future__ import annotations

from . import DEFAULT, dialect

globals().update(vars(dialect(DEFAULT)))
