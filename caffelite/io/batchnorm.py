"""BatchNorm layout conversion between BVLC (BatchNorm 3 blobs + Scale) and caffe-jacinto (5 blobs).

Spec docs/jacinto-spec.md §d.2/§d.5:
- BVLC ``BatchNorm`` blobs ``[mean_sum, var_sum, s]`` (statistics multiplied by the scale factor ``s``) and a
  separate ``Scale`` layer ``[gamma, beta]``;
- jacinto ``BatchNorm`` with ``scale_bias: true``: ``[mean, var, correction=[1], gamma, beta]``; legacy
  NVCaffe/DIGITS order ``[gamma, beta, mean, var, reserved]`` is recognised by ``blobs[4].count == 1``.
BVLC -> jacinto: ``mean = mean_sum*k``, ``var = var_sum*k``, ``k = 0 if s == 0 else 1/s``; beta is 0 when
the Scale has no bias. jacinto -> BVLC: ``mean, var, s=[1]`` and a Scale named ``<bn name>/scale`` (the
naming used by the jsegnet fixture conversion) with ``bias_term: true``. Both work on nets with or without
blobs (prototxt or caffemodel) and keep each blob's encoding form (``form``).
"""

from __future__ import annotations

import numpy as np

from ..proto import caffe_pb2
from .blobs import array_to_blob, blob_to_array


def _arrays(layer):
    return [blob_to_array(b, where=f"layer '{layer.name}' blob {i}") for i, b in enumerate(layer.blobs)]


def _set_blobs(layer, arrays, form):
    del layer.blobs[:]
    for a in arrays:
        layer.blobs.add().CopyFrom(array_to_blob(a, form))


def _blob_form(layer, default="jacinto"):
    for b in layer.blobs:
        return "jacinto" if b.HasField("raw_data") else "bvlc"
    return default


def _consumers(net, blob, skip):
    return sum(blob in l.bottom for i, l in enumerate(net.layer) if i not in skip)


def bvlc_bn_to_jacinto(net, report=None) -> int:
    """Merge BVLC BatchNorm (+ following Scale) layers of a jacinto-class ``net`` into jacinto BatchNorm,
    in place. Returns the number of BatchNorm layers converted."""
    out, n, i = [], 0, 0
    layers = list(net.layer)
    while i < len(layers):
        l = layers[i]
        if l.type != "BatchNorm" or l.batch_norm_param.scale_bias or len(l.blobs) not in (0, 3):
            out.append(l)
            i += 1
            continue
        scale = layers[i + 1] if i + 1 < len(layers) else None
        if not (scale is not None and scale.type == "Scale" and list(scale.bottom) == [l.top[0]]
                and scale.scale_param.axis == 1 and scale.scale_param.num_axes == 1
                and (scale.top[0] == l.top[0] or _consumers(net, l.top[0], {i, i + 1}) == 0)):
            scale = None
        bn = caffe_pb2.LayerParameter()
        bn.CopyFrom(l)
        form = _blob_form(l, _blob_form(scale) if scale is not None else "jacinto")
        arrays = None
        if len(l.blobs) == 3:
            mean, var, s = _arrays(l)
            k = 0.0 if s.reshape(-1)[0] == 0 else 1.0 / s.reshape(-1)[0]
            arrays = [(mean * np.float32(k)).reshape(-1), (var * np.float32(k)).reshape(-1),
                      np.ones(1, np.float32)]
        if scale is not None:
            bn.ClearField("top")
            bn.top.extend(scale.top)
            bp = bn.batch_norm_param
            bp.scale_bias = True
            if scale.scale_param.HasField("filler"):
                bp.scale_filler.CopyFrom(scale.scale_param.filler)
            if scale.scale_param.HasField("bias_filler"):
                bp.bias_filler.CopyFrom(scale.scale_param.bias_filler)
            if len(scale.param):
                while len(bn.param) < 3:
                    bn.param.add(lr_mult=0, decay_mult=0)
                bn.param.extend(scale.param)
            if arrays is not None and len(scale.blobs):
                sarr = _arrays(scale)
                gamma = sarr[0].reshape(-1)
                beta = sarr[1].reshape(-1) if len(sarr) > 1 else np.zeros_like(gamma)
                arrays += [gamma, beta]
            if not scale.scale_param.bias_term and report is not None:
                report.drop(f"layer '{scale.name}': Scale without bias merged into BatchNorm (beta = 0)")
            i += 2
        else:
            i += 1
        if arrays is not None:
            _set_blobs(bn, arrays, form)
        out.append(bn)
        n += 1
    del net.layer[:]
    net.layer.extend(out)
    return n


def jacinto_bn_to_bvlc(net) -> int:
    """Split jacinto BatchNorm layers (5 blobs / ``scale_bias``) of ``net`` into BVLC BatchNorm + Scale,
    in place (still jacinto classes; write them with the BVLC dialect). Returns the number converted."""
    out, n = [], 0
    for l in net.layer:
        bp = l.batch_norm_param
        has_sb = bp.scale_bias or bp.HasField("scale_filler") or bp.HasField("bias_filler") or len(l.blobs) == 5
        if l.type != "BatchNorm":
            out.append(l)
            continue
        form = _blob_form(l)
        arrays = _arrays(l) if len(l.blobs) else None
        if arrays is not None and len(arrays) == 5 and arrays[4].size == 1:  # legacy DIGITS order
            arrays = [arrays[2], arrays[3], arrays[4], arrays[0], arrays[1]]
        bn = caffe_pb2.LayerParameter()
        bn.CopyFrom(l)
        for f in ("scale_bias", "scale_filler", "bias_filler", "engine"):
            bn.batch_norm_param.ClearField(f)
        if not len(bn.batch_norm_param.ListFields()):
            bn.ClearField("batch_norm_param")
        scale_params = list(bn.param[3:])
        del bn.param[3:]
        for p in bn.param:
            p.lr_mult, p.decay_mult = 0.0, 0.0
        if arrays is not None:
            _set_blobs(bn, [arrays[0].reshape(-1), arrays[1].reshape(-1), np.ones(1, np.float32)], form)
        out.append(bn)
        n += 1
        if has_sb:
            sc = caffe_pb2.LayerParameter(name=f"{l.name}/scale", type="Scale")
            sc.bottom.append(l.top[0])
            sc.top.append(l.top[0])
            sc.include.extend(l.include)
            sc.exclude.extend(l.exclude)
            sc.param.extend(scale_params)
            sc.scale_param.bias_term = True
            if bp.HasField("scale_filler"):
                sc.scale_param.filler.CopyFrom(bp.scale_filler)
            if bp.HasField("bias_filler"):
                sc.scale_param.bias_filler.CopyFrom(bp.bias_filler)
            if arrays is not None and len(arrays) == 5:
                _set_blobs(sc, [arrays[3].reshape(-1), arrays[4].reshape(-1)], form)
            out.append(sc)
    del net.layer[:]
    net.layer.extend(out)
    return n

