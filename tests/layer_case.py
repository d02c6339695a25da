"""Run one ``fixtures/layers/<case>`` directly on its layer, without a Net (test helper).

The case's net is an Input layer per fed blob followed by the layer under test (always the last). We
build that last layer from the registry, feed the recorded bottoms and params, run forward, set the
recorded top diffs, run backward, and return ours next to Caffe's, so a test can compare them with the
tolerances in the case's meta.json.
"""

from __future__ import annotations

import json
import os

import numpy as np
from google.protobuf import text_format

from caffelite.blob import Blob
from caffelite.layer import TEST, TRAIN, create_layer
from caffelite.proto import dialect

from conftest import FIXTURES

LAYERS = os.path.join(FIXTURES, "layers")


def case_names():
    with open(os.path.join(LAYERS, "index.json")) as f:
        return sorted(json.load(f))


def load_case(name):
    d = os.path.join(LAYERS, name)
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    with np.load(os.path.join(d, "io.npz")) as npz:
        io = dict(npz)
    return d, meta, io


def parse_last_layer(path):
    """The tested LayerParameter in the jacinto form, plus the BVLC original when it needs BVLC-only fields."""
    text = open(path).read()
    jac = dialect("jacinto017")
    try:
        net = text_format.Parse(text, jac.NetParameter())
        return net, net.layer[-1], None
    except text_format.ParseError:
        bv = text_format.Parse(text, dialect("bvlc").NetParameter())
        last = bv.layer[-1]
        # Same wire bytes, jacinto classes: BVLC-only fields become unknown fields; keep the original as `extra`.
        return bv, jac.LayerParameter.FromString(last.SerializeToString()), last


def run_case(name, dtype=np.float32):
    """Return (meta, caffe_io, ours) where ours has keys like caffe's io.npz."""
    d, meta, io = load_case(name)
    net, lp, extra = parse_last_layer(os.path.join(d, "net.prototxt"))
    phase = TRAIN if meta.get("phase") == "TRAIN" else TEST
    layer = create_layer(lp, phase, extra)
    bottom_names = list(lp.bottom)
    bottoms = []
    for b in bottom_names:
        arr = io[f"bottom/{b}"].astype(dtype)
        blob = Blob(arr.shape, dtype)
        blob.data[...] = arr
        bottoms.append(blob)
    top_names = list(lp.top)
    tops = [bottoms[bottom_names.index(t)] if t in bottom_names else Blob((), dtype) for t in top_names]
    layer.check_blob_counts(bottoms, tops)
    layer.setup(bottoms, tops)
    for i, blob in enumerate(layer.blobs):
        key = f"param/{lp.name}/{i}"
        if key in io:
            blob.data[...] = io[key].astype(dtype).reshape(blob.shape)
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    ours = {}
    for t, blob in zip(top_names, tops, strict=True):
        ours[f"top/{t}"] = np.array(blob.data)
    for i, blob in enumerate(layer.blobs):
        ours[f"param_after/{lp.name}/{i}"] = np.array(blob.data)
    if not meta.get("backward", False):
        return meta, io, ours
    for t, blob in zip(top_names, tops, strict=True):
        key = f"top_diff/{t}"
        if key in io:
            blob.diff[...] = io[key].astype(dtype)
        else:
            blob.diff[...] = 0
    for blob in layer.blobs:
        blob.diff[...] = 0
    wanted = set(meta.get("bottom_diffs", []))
    propagate = [b in wanted for b in bottom_names]
    layer.backward(tops, propagate, bottoms)
    for b, blob, p in zip(bottom_names, bottoms, propagate, strict=True):
        if p:
            ours[f"bottom_diff/{b}"] = np.array(blob.diff)
    for i, blob in enumerate(layer.blobs):
        ours[f"param_diff/{lp.name}/{i}"] = np.array(blob.diff)
    return meta, io, ours


def tolerance(meta, kind):
    tol = meta.get("tolerance", {}).get(kind, {})
    return tol.get("rtol", 1e-5 if kind == "forward" else 1e-4), tol.get("atol", 1e-6 if kind == "forward" else 1e-5)


def compare_with_caffe(name, meta, io, ours):
    """Assert that ``ours`` matches every recorded top, bottom diff, param diff (and param_after where the
    case records it) of Caffe's ``io`` within the case's tolerances."""
    checked = 0
    for key, want in io.items():
        kind = key.split("/")[0]
        if kind in ("bottom", "param", "top_diff"):
            continue
        if kind == "param_after" and not meta.get("param_after"):
            continue
        assert key in ours, f"{name}: we produced no {key}"
        got = ours[key]
        rtol, atol = tolerance(meta, "forward" if kind in ("top", "param_after") else "backward")
        assert got.size == want.size, f"{name}: {key} shape {got.shape} != {want.shape}"
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=rtol, atol=atol, err_msg=f"{name}: {key}")
        checked += 1
    assert checked > 0


def assert_case_matches(name):
    """Run case ``name`` on its layer alone and compare with Caffe (:func:`compare_with_caffe`)."""
    compare_with_caffe(name, *run_case(name))
