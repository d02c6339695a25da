"""The real caffe-jacinto prototxts of ``tests/data/reference`` (NVCaffe BatchNorm with scale_bias, the
``quantize`` line, ImageLabelData / Data layers) build and run, at their own and at changed resolutions.

Data layers are replaced by Input layers of the shape they would produce (crop_size, batch 1) so the test
does not need the LMDBs; labels are zeros (a valid class).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

import caffelite
from caffelite.layer import registered_types

from conftest import REFERENCE

FILES = sorted(glob.glob(os.path.join(REFERENCE, "*", "*", "deploy.prototxt"))
               + glob.glob(os.path.join(REFERENCE, "*", "*", "test.prototxt"))
               + glob.glob(os.path.join(REFERENCE, "*", "*", "train.prototxt")))
IDS = [os.path.relpath(f, REFERENCE) for f in FILES]


def with_inputs(path, size=None, batch=1):
    """The net of ``path`` with data layers replaced by Input layers (and the deploy input resized)."""
    param = caffelite.io.read_net(path)
    seg = "jsegnet" in path
    for i, lp in enumerate(param.layer):
        if lp.type == "Input":
            shape = lp.input_param.shape[0]
            shape.dim[0] = batch
            if size:
                shape.dim[2], shape.dim[3] = size
        elif "Data" in lp.type:
            crop = lp.transform_param.crop_size
            h, w = size or (crop, crop)
            new = type(lp)(name=lp.name, type="Input")
            new.top.extend(lp.top)
            new.input_param.shape.add().dim.extend([batch, 3, h, w])
            if len(lp.top) > 1:
                new.input_param.shape.add().dim.extend([batch, 1, h, w] if seg else [batch])
            param.layer[i].CopyFrom(new)
    return param


def _require(param):
    missing = {lp.type for lp in param.layer} - set(registered_types())
    if missing:
        pytest.xfail(f"layer not implemented yet: {', '.join(sorted(missing))}")


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_reference_builds(path):
    param = with_inputs(path)
    _require(param)
    phase = caffelite.TRAIN if path.endswith("train.prototxt") else caffelite.TEST
    net = caffelite.Net(param, phase)
    if phase == caffelite.TRAIN:
        assert any(layer.is_loss for layer in net.layers) and net.learnable_params
    bns = [layer for layer in net.layers if layer.type == "BatchNorm"]
    assert bns and all(len(layer.blobs) == 5 for layer in bns)  # NVCaffe BatchNorm with scale_bias
    assert net.outputs


def _sizes(path):
    """Own resolution (None: the prototxt's input_shape / crop_size) and a changed one."""
    if "jsegnet" in path:
        return [None, (96, 160)]
    if "imagenet" in path:
        return [None, (160, 192)]
    return [None, (48, 40)]


RUN = [f for f in FILES if os.path.basename(os.path.dirname(f)) in ("test", "test_quantize")
       and not f.endswith("train.prototxt")]


@pytest.mark.parametrize("path", RUN, ids=[os.path.relpath(f, REFERENCE) for f in RUN])
def test_reference_runs_at_two_resolutions(path):
    caffelite.set_random_seed(5)
    for size in _sizes(path):
        param = with_inputs(path, size)
        _require(param)
        net = caffelite.Net(param, caffelite.TEST)
        feed = {name: np.random.default_rng(0).uniform(0, 255, net.blobs[name].shape) if name == "data"
                else np.zeros(net.blobs[name].shape) for name in net.inputs}
        out = net.forward(**feed)
        for name, arr in out.items():
            assert np.isfinite(arr).all(), f"{name} at {size}"
        if size is not None:
            assert net.blobs["data"].shape[2:] == size
        if "jsegnet" in path and "argMaxOut" in out:
            assert out["argMaxOut"].shape == (1, 1) + net.blobs["data"].shape[2:]
        if "imagenet" in path and "prob" in out:
            assert out["prob"].shape[:2] == (1, 1000)
