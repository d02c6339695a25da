"""Loading net definitions and weights for a :class:`~caffelite.net.Net`, and copying weights by layer name.

File reading goes through :mod:`caffelite.io` (dialect detection, legacy upgrades, BlobProto forms).
Copying follows Caffe's ``Net::CopyTrainedLayersFrom``: source layers are matched to the net's layers by
name (type is not checked), unmatched ones are logged as ignored, blob counts must agree (BatchNorm may
convert between its BVLC 3-blob and jacinto 5-blob layouts through the layer class's ``convert_blobs``),
and shapes must agree — a legacy 4-D blob (num/channels/height/width) matches when the target shape,
padded on the left with 1s to four axes, equals it (spec jacinto.md §h).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from . import backend
from .errors import FileFormatError, NetError
from .proto import caffe_pb2

log = logging.getLogger("caffelite")


def load_net_param(model):
    """(NetParameter in the jacinto-0.17 form, {layer name: BVLC LayerParameter extras}) for ``model``:
    a prototxt path or a NetParameter of any dialect (legacy forms are upgraded)."""
    from . import io
    if not isinstance(model, (str, bytes, os.PathLike)) and not hasattr(model, "layer"):
        raise TypeError(f"Net expects a prototxt path or a NetParameter, got {type(model).__name__}")
    if isinstance(model, bytes):
        model = os.fsdecode(model)
    param, report = io.read_net_ex(model)
    return param, dict(getattr(report, "extras", None) or {})


def read_weights_param(weights):
    """(NetParameter with blobs, dialect name or None) from a caffemodel path (``.xz`` too) or a NetParameter."""
    if hasattr(weights, "layer"):
        if not isinstance(weights, caffe_pb2.NetParameter):  # another dialect's class: same wire format
            weights = caffe_pb2.NetParameter.FromString(weights.SerializeToString())
        return weights, None
    from . import io
    path = os.fsdecode(weights)
    if not os.path.exists(path):
        raise FileFormatError(path, "no such weights file")
    param, report = io.read_weights_ex(path)
    return param, getattr(report, "dialect", None)


def _blob_array(bp, where):
    from .io_blob import blob_to_array
    return blob_to_array(bp, where=where)


def _legacy_dims(bp):
    if bp.HasField("num") or bp.HasField("channels") or bp.HasField("height") or bp.HasField("width"):
        return (bp.num, bp.channels, bp.height, bp.width)
    return None


def _shape_equals(target_shape, arr, legacy):
    """Caffe's Blob::ShapeEquals: legacy 4-D dims are compared right-aligned (target padded with 1s)."""
    if legacy is not None:
        if len(target_shape) > 4:
            return False
        return (1,) * (4 - len(target_shape)) + tuple(target_shape) == tuple(legacy)
    return tuple(target_shape) == tuple(arr.shape)


def _convert(conv, arrays, legacy, layer, sl, param, net, dialect_name=None):
    """Let the layer class convert between blob layouts (BatchNorm: BVLC 3 blobs vs jacinto 5).

    Called when the counts differ, or for a jacinto-semantics layer reading 3 blobs from a BVLC file (or
    whose third value is neither 1, jacinto's reserved blob, nor 0: BVLC's scale factor s; jacinto.md §d.5).
    A BVLC Scale layer that follows the BatchNorm in the file and has no namesake in the net gives γ, β.
    """
    source = "bvlc" if dialect_name == "bvlc" and len(arrays) == 3 else None
    if len(arrays) == len(layer.blobs):
        if getattr(layer, "semantics", None) != "jacinto" or len(arrays) != 3:
            return arrays, legacy
        third = np.asarray(arrays[2]).reshape(-1)
        if source is None and (third.size != 1 or float(third[0]) in (0.0, 1.0)):
            return arrays, legacy  # jacinto's reserved blob (or indistinguishable): copied raw, as jacinto does
        source = "bvlc"
    scale = None
    if len(arrays) == 3 and len(layer.blobs) == 5 and len(sl.top):
        for other in param.layer:
            if other.type == "Scale" and len(other.bottom) and other.bottom[0] == sl.top[0] \
                    and other.name not in net.layer_dict and len(other.blobs):
                scale = [_blob_array(bp, f"layer '{other.name}'") for bp in other.blobs]
                log.info("Taking the scale and bias of BatchNorm %s from source layer %s", sl.name, other.name)
                break
    out = conv(arrays, layer.param, source=source, scale=scale)
    return list(out), [None] * len(out)


def copy_trained_layers(net, param, path=None, dialect_name=None):
    """Copy blobs of ``param``'s layers into the same-named layers of ``net`` (Caffe's wording in logs)."""
    src_name = path or "weights"
    matched = 0
    src_with_blobs = 0
    for sl in param.layer:
        if len(sl.blobs):
            src_with_blobs += 1
        layer = net.layer_dict.get(sl.name)
        if layer is None:
            log.info("Ignoring source layer %s", sl.name, extra={"src": "net.cpp:761"})
            continue
        log.info("Copying source layer %s Type:%s #blobs=%d", sl.name, sl.type, len(sl.blobs),
                 extra={"src": "net.cpp:769"})
        arrays = [_blob_array(bp, f"{src_name}: layer '{sl.name}' blob {i}") for i, bp in enumerate(sl.blobs)]
        legacy = [_legacy_dims(bp) for bp in sl.blobs]
        conv = getattr(type(layer), "convert_blobs", None)
        if conv is not None and arrays:
            arrays, legacy = _convert(conv, arrays, legacy, layer, sl, param, net, dialect_name)
        if len(arrays) != len(layer.blobs):
            raise layer.error(f"Incompatible number of blobs for layer {sl.name}: the weights have "
                              f"{len(arrays)}, the net has {len(layer.blobs)}")
        for j, (blob, arr, leg) in enumerate(zip(layer.blobs, arrays, legacy, strict=True)):
            if not _shape_equals(blob.shape, arr, leg):
                src_shape = list(leg) if leg is not None else list(arr.shape)
                raise layer.error(f"Cannot copy param {j} weights from layer '{sl.name}'; shape mismatch. "
                                  f"Source param shape is {src_shape}; target param shape is "
                                  f"{list(blob.shape)}. To learn this layer's parameters from scratch "
                                  f"rather than copying from a saved net, rename the layer.")
            blob.data[...] = blob.xp.asarray(np.asarray(arr).reshape(blob.shape), dtype=blob.dtype)
        if arrays:
            matched += 1
    has_params = any(len(l.blobs) for l in net.layers)
    if has_params and src_with_blobs and not matched:
        raise NetError(f"the weights in {src_name} are for another net: none of its "
                       f"{src_with_blobs} layers with blobs matches a layer of net '{net.name}'")
    return matched


def _array_to_blob(arr, form):
    from .io_blob import array_to_blob
    return array_to_blob(arr, form=form)


def to_proto(net, form="jacinto", write_diff=False):
    """The net's NetParameter (layers as built, Split layers included) with every layer's blobs."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net._param)
    del out.layer[:]
    for layer in net.layers:
        lp = out.layer.add()
        lp.CopyFrom(layer.param)
        del lp.blobs[:]
        for b in layer.blobs:
            bp = _array_to_blob(backend.to_numpy(b.data).astype(np.float32), form)
            if write_diff:
                _set_diff(bp, backend.to_numpy(b.diff), form)
            lp.blobs.add().CopyFrom(bp)
    return out


def _set_diff(bp, diff, form):
    d = np.ascontiguousarray(diff, dtype="<f4")
    if form == "jacinto":
        bp.raw_diff_type = caffe_pb2.FLOAT
        bp.raw_diff = d.tobytes()
    else:
        bp.diff.extend(d.reshape(-1).tolist())


def write_weights_param(param, path, form="jacinto"):
    """Write NetParameter ``param`` (blobs already in ``form``) to ``path``, atomically."""
    from . import io
    io.write_weights(param, path, form=form)
