"""Loading net definitions and weights for a :class:`~caffelite.net.Net`, and copying weights by layer name.

File reading goes through :mod:`caffelite.io` (dialect detection, legacy upgrades, BlobProto forms).
Copying follows Caffe's ``Net::CopyTrainedLayersFrom``: source layers are matched to the net's layers by
name (type is not checked), unmatched ones are logged as ignored, blob counts must agree (BatchNorm may
convert between its BVLC 3-blob and jacinto 5-blob layouts through the layer class's ``convert_blobs``),
and shapes must agree — a legacy 4-D blob (num/channels/height/width) matches when the target shape,
padded on the left with 1s to four axes, equals it (spec docs/jacinto-spec.md §h).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from .. import backend
from ..errors import FileFormatError, NetError
from ..proto import caffe_pb2

log = logging.getLogger("caffelite")


def load_net_param(model):
    """(NetParameter in the jacinto-0.17 form, {layer name: BVLC LayerParameter extras}) for ``model``:
    a prototxt path or a NetParameter of any dialect (legacy forms are upgraded)."""
    from .. import io
    if not isinstance(model, (str, bytes, os.PathLike)) and not hasattr(model, "layer"):
        raise TypeError(f"Net expects a prototxt path or a NetParameter, got {type(model).__name__}")
    if isinstance(model, bytes):
        model = os.fsdecode(model)
    from ..proto import dialect
    if hasattr(model, "layer") and model.DESCRIPTOR.file.pool is dialect("bvlc").POOL:
        # a BVLC message: convert here so BVLC-only options (clip_param...) reach the layers as extras
        from .dialects import NetReport, bvlc_net_to_jacinto
        report = NetReport("bvlc", "<NetParameter>")
        model = bvlc_net_to_jacinto(model, report)
        param, _ = io.read_net_ex(model)
        return param, dict(report.extras)
    param, report = io.read_net_ex(model)
    return param, dict(getattr(report, "extras", None) or {})


def read_weights_param(weights, lazy=False):
    """``(NetParameter, {layer name: [arrays]} or None, dialect name or None)`` from a caffemodel path (``.xz``
    too) or a NetParameter with blobs.

    A path is streamed by :func:`caffelite.io.load_weights` (the message keeps shapes only, the values are in
    the arrays; ``lazy``: :class:`~caffelite.io.weights.LazyBlob` s still in the file). A NetParameter keeps
    its values in its blobs (arrays None).
    """
    if hasattr(weights, "layer"):
        if not isinstance(weights, caffe_pb2.NetParameter):  # another dialect's class: same wire format
            weights = caffe_pb2.NetParameter.FromString(weights.SerializeToString())
        return weights, None, None
    from .. import io
    path = os.fsdecode(weights)
    if not os.path.exists(path):
        raise FileFormatError(path, "no such weights file")
    param, report, arrays = io.load_weights(path, lazy=lazy)
    return param, arrays, getattr(report, "dialect", None)


def copy_from(net, weights):
    """Net.copy_from: stream ``weights`` (a path or a NetParameter) into ``net``'s same-named layers.

    From a file, each value is read once, straight into the net's own blob memory (NumPy float32): loading
    needs about the net plus a few KiB, not the net plus a copy of the file.
    """
    param, arrays, dialect_name = read_weights_param(weights, lazy=True)
    return copy_trained_layers(net, param, None if hasattr(weights, "layer") else str(weights), dialect_name,
                               arrays)


def append_params(self):
    """Caffe's AppendParam for every layer of Net ``self``: owners, sharing by ParamSpec.name (with Caffe's shape
    checks), and the learnable params' lr/decay multipliers."""
    self.learnable_params, self.params_lr, self.params_weight_decay = [], [], []
    self.learnable_param_names, self._param_owner = [], []
    has_lr, has_decay, by_name, owned_at = [], [], {}, {}
    for li, layer in enumerate(self.layers):
        specs = layer.param.param
        for pi, blob in enumerate(layer.blobs):
            spec = specs[pi] if pi < len(specs) else None
            pname = spec.name if spec is not None else ""
            if not pname or pname not in by_name:
                if pname:
                    by_name[pname] = (li, pi)
                owned_at[(li, pi)] = len(self.learnable_params)
                self.learnable_params.append(blob)
                self.learnable_param_names.append(f"{layer.name}/{pi}")
                has_lr.append(spec is not None and spec.HasField("lr_mult"))
                has_decay.append(spec is not None and spec.HasField("decay_mult"))
                self.params_lr.append(float(spec.lr_mult) if spec is not None else 1.0)
                self.params_weight_decay.append(float(spec.decay_mult) if spec is not None else 1.0)
                self._param_owner.append(None)
                continue
            oli, opi = by_name[pname]
            owner = self.layers[oli].blobs[opi]
            what = f"Cannot share param '{pname}' owned by layer '{self.layers[oli].name}' with layer " \
                   f"'{layer.name}'"
            if spec.share_mode == 1:  # PERMISSIVE: counts must agree
                if owner.count != blob.count:
                    raise layer.error(f"{what}; count mismatch. Owner layer param shape is "
                                      f"{list(owner.shape)}; sharing layer shape is {list(blob.shape)}")
            elif owner.shape != blob.shape:
                raise layer.error(f"{what}; shape mismatch. Owner layer param shape is "
                                  f"{list(owner.shape)}; sharing layer shape is {list(blob.shape)}")
            k = owned_at[(oli, opi)]
            for has, vals, field, label in ((has_lr, self.params_lr, "lr_mult", "lr_mult"),
                                            (has_decay, self.params_weight_decay, "decay_mult", "decay_mult")):
                if spec.HasField(field):
                    v = float(getattr(spec, field))
                    if has[k] and v != vals[k]:
                        raise layer.error(f"Shared param '{pname}' has mismatched {label}.")
                    has[k], vals[k] = True, v
            log.info("Sharing parameters '%s' owned by layer '%s', param index %d",
                     pname, self.layers[oli].name, opi)
            shape = blob.shape
            blob.set_data_array(owner.data.reshape(shape))
            blob.set_diff_array(owner.diff.reshape(shape))
            self._param_owner.append((oli, opi))


def _blob_array(bp, where):
    from .blobs import blob_to_array
    return blob_to_array(bp, where=where)


def _source_arrays(sl, arrays, where):
    """The blob values of source layer ``sl``: from ``arrays`` (streamed load) or decoded from its blobs."""
    if arrays is not None and sl.name in arrays:
        return list(arrays[sl.name])
    return [_blob_array(bp, f"{where}: layer '{sl.name}' blob {i}") for i, bp in enumerate(sl.blobs)]


def _materialize(a):
    return a.read() if hasattr(a, "read") else a


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


def _convert(conv, arrays, legacy, layer, sl, param, net, dialect_name=None, source_arrays=None):
    """Let the layer class convert between blob layouts (BatchNorm: BVLC 3 blobs vs jacinto 5).

    Called when the counts differ, or for a jacinto-semantics layer reading 3 blobs from a BVLC file (or
    whose third value is neither 1, jacinto's reserved blob, nor 0: BVLC's scale factor s; docs/jacinto-spec.md §d.5).
    A BVLC Scale layer that follows the BatchNorm in the file and has no namesake in the net gives γ, β.
    """
    source = "bvlc" if dialect_name == "bvlc" and len(arrays) == 3 else None
    arrays = [_materialize(a) for a in arrays]  # BatchNorm statistics: small
    if len(arrays) == len(layer.blobs):
        sizes = [np.asarray(a).size for a in arrays]
        if len(arrays) == 5 and sizes[4] == 1 and sizes[0] != 1:
            out = conv(arrays, layer.param, source="jacinto")  # legacy NVCaffe/DIGITS order, permuted
            return list(out), [None] * len(out)
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
                scale = [_materialize(a) for a in _source_arrays(other, source_arrays, "weights")]
                log.info("Taking the scale and bias of BatchNorm %s from source layer %s", sl.name, other.name)
                break
    out = conv(arrays, layer.param, source=source, scale=scale)
    return list(out), [None] * len(out)


def copy_trained_layers(net, param, path=None, dialect_name=None, arrays=None):
    """Copy blobs of ``param``'s layers into the same-named layers of ``net`` (Caffe's wording in logs).

    ``arrays``: {layer name: [arrays or LazyBlobs]} holding the values when ``param``'s blobs keep only their
    shapes (:func:`caffelite.io.load_weights`); None to decode them from ``param``'s blobs.
    """
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
        vals = _source_arrays(sl, arrays, src_name)
        legacy = [_legacy_dims(bp) for bp in sl.blobs]
        conv = getattr(type(layer), "convert_blobs", None)
        if conv is not None and vals:
            vals, legacy = _convert(conv, vals, legacy, layer, sl, param, net, dialect_name, arrays)
        if len(vals) != len(layer.blobs):
            raise layer.error(f"Incompatible number of blobs for layer {sl.name}: the weights have "
                              f"{len(vals)}, the net has {len(layer.blobs)}")
        for j, (blob, arr, leg) in enumerate(zip(layer.blobs, vals, legacy, strict=True)):
            if not _shape_equals(blob.shape, arr, leg):
                src_shape = list(leg) if leg is not None else list(arr.shape)
                raise layer.error(f"Cannot copy param {j} weights from layer '{sl.name}'; shape mismatch. "
                                  f"Source param shape is {src_shape}; target param shape is "
                                  f"{list(blob.shape)}. To learn this layer's parameters from scratch "
                                  f"rather than copying from a saved net, rename the layer.")
        for blob, arr in zip(layer.blobs, vals, strict=True):  # all checked first: no half-copied layer
            if hasattr(arr, "read") and isinstance(blob.data, np.ndarray):
                arr.read(out=blob.data)  # straight from the file into the blob
            else:
                blob.data[...] = blob.xp.asarray(np.asarray(_materialize(arr)).reshape(blob.shape),
                                                 dtype=blob.dtype)
        if vals:
            matched += 1
    has_params = any(len(l.blobs) for l in net.layers)
    if has_params and src_with_blobs and not matched:
        raise NetError(f"the weights in {src_name} are for another net: none of its "
                       f"{src_with_blobs} layers with blobs matches a layer of net '{net.name}'")
    return matched


def _skeleton(net):
    """The net's NetParameter (layers as built, Split layers included) without blob values."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net.net_param)
    del out.layer[:]
    # caffe-jacinto 0.17's file format (docs/jacinto-spec.md §h): a net with `quantize: true` is saved under the name
    # "<name>___QUANTIZED__SEE_END_OFTHE_FILE" (quantize and net_quantization_param are kept by the copy).
    suffix = "___QUANTIZED__SEE_END_OFTHE_FILE"
    if out.quantize and not out.name.endswith(suffix):
        out.name += suffix
    for layer in net.layers:
        lp = out.layer.add()
        lp.CopyFrom(layer.param)
        del lp.blobs[:]
    return out


def to_proto(net, form="jacinto", write_diff=False):
    """The net's NetParameter (layers as built, Split layers included) with every layer's blobs."""
    from .blobs import array_to_blob
    out = _skeleton(net)
    for lp, layer in zip(out.layer, net.layers, strict=True):
        for b in layer.blobs:
            diff = backend.to_numpy(b.diff) if write_diff else None
            lp.blobs.add().CopyFrom(array_to_blob(backend.to_numpy(b.data), form, diff=diff))
    return out


class _HostBlobs(dict):
    """{layer name: layer} whose ``get`` hands the layer's blobs as host arrays (``(data, diff)`` pairs with
    ``write_diff``), one layer at a time while the file is written: device nets are never copied whole."""

    def __init__(self, layers, write_diff):
        super().__init__((l.name, l) for l in layers)
        self.write_diff = write_diff

    def get(self, name, default=None):
        layer = super().get(name)
        if layer is None:
            return default
        if self.write_diff:
            return [(backend.to_numpy(b.data), backend.to_numpy(b.diff)) for b in layer.blobs]
        return [backend.to_numpy(b.data) for b in layer.blobs]


def save_net(net, path, form="jacinto", write_diff=False):
    """Write ``net``'s weights as a caffemodel (same bytes as ``to_proto(...).SerializeToString()``),
    streaming every blob from the net's own memory (no protobuf copy of the values)."""
    from .. import io
    names = [l.name for l in net.layers]
    if len(set(names)) != len(names):  # blobs are matched by layer name: duplicates need the message route
        return write_weights_param(to_proto(net, form, write_diff), path, form)
    io.write_weights(_skeleton(net), os.fspath(path), form=form, arrays=_HostBlobs(net.layers, write_diff))


def write_weights_param(param, path, form="jacinto"):
    """Write NetParameter ``param`` (blobs already in ``form``) to ``path``, atomically."""
    from .. import io
    io.write_weights(param, path, form=form)
