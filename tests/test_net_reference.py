"""The real caffe-jacinto prototxts of ``tests/data/reference`` (NVCaffe BatchNorm with scale_bias, the
``quantize`` line, ImageLabelData / Data layers) build and run, at their own and at changed resolutions.

Data layers are replaced by Input layers of the shape they would produce (crop_size, batch 1) so the test
does not need the LMDBs; labels are zeros (a valid class).
"""

from __future__ import annotations

import glob
import os
import re

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


def _edited_deploy(tmp_path):
    """The real deploy.prototxt with its input_shape edited from 1x3x512x1024 to 1x3x1024x2048, as a file."""
    src = os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", "test", "deploy.prototxt")
    edited, n = re.subn(r"dim:\s*512\s+dim:\s*1024", "dim: 1024\n  dim: 2048", open(src).read(), count=1)
    assert n == 1
    path = tmp_path / "deploy.prototxt"
    path.write_text(edited)
    caffelite.set_random_seed(3)
    return caffelite.Net(str(path), caffelite.TEST)


def test_edited_deploy_input_shape_reshapes_the_whole_net(tmp_path):
    """Editing ``input_shape`` to 1x3x1024x2048 just works: every blob follows the input (build only)."""
    net = _edited_deploy(tmp_path)
    assert net.blobs["data"].shape == (1, 3, 1024, 2048)
    assert net.blobs[net.top_names["conv1a"][0]].shape[2:] == (512, 1024)  # stride 2
    assert net.blobs[net.bottom_names["argMaxOut"][0]].shape == (1, 8, 1024, 2048)  # 8 channels, upsampled x8
    assert net.blobs["argMaxOut"].shape == (1, 1, 1024, 2048)


@pytest.mark.slow  # one full-resolution forward: ~10 s on an idle 2-core machine, more under load
def test_edited_deploy_input_shape_runs_at_full_cityscapes_resolution(tmp_path):
    net = _edited_deploy(tmp_path)
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 1024, 2048)).astype(np.float32)
    out = net.forward(data=x)["argMaxOut"]
    assert out.shape == (1, 1, 1024, 2048)
    scores = net.blobs[net.bottom_names["argMaxOut"][0]].data
    assert np.isfinite(scores).all()
    assert set(np.unique(out).tolist()) <= set(range(8))


TRAIN_FILES = [f for f in FILES if f.endswith("train.prototxt")]


@pytest.mark.parametrize("path", TRAIN_FILES, ids=[os.path.relpath(f, REFERENCE) for f in TRAIN_FILES])
def test_reference_train_nets_run_forward_backward(path, request):
    """Each stage's train.prototxt runs a TRAIN forward/backward at a changed resolution, and with --runslow at
    its own crop size too (its test.prototxt already runs there, in TEST)."""
    sizes = _sizes(path)
    if not request.config.getoption("--runslow"):
        sizes = sizes[1:]
    for size in sizes:
        param = with_inputs(path, size)
        _require(param)
        caffelite.set_random_seed(2)
        net = caffelite.Net(param, caffelite.TRAIN)
        net.blobs["data"].data[...] = np.random.default_rng(1).uniform(0, 255, net.blobs["data"].shape)
        for name in net.inputs[1:]:
            net.blobs[name].data[...] = 0
        loss = net.forward_backward()
        assert np.isfinite(loss) and loss > 0, size
        diffs = [p.diff for p in net.learnable_params]
        assert all(np.isfinite(d).all() for d in diffs) and sum(bool(d.any()) for d in diffs) > len(diffs) // 2
