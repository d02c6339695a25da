"""Every net shipped in caffelite/models/prototxt builds and runs a forward (deploy) or parses (train/test/solver)."""

import glob
import os

import numpy as np
import pytest

import caffelite
from caffelite import io as cio
from caffelite.models import prototxt_dir

MODELS = prototxt_dir()
DEPLOYS = sorted(glob.glob(os.path.join(MODELS, "*", "deploy.prototxt")))


def test_models_exist():
    assert {os.path.basename(os.path.dirname(p)) for p in DEPLOYS} >= {
        "cityscapes5_jsegnet21v2", "imagenet_jacintonet11v2", "cifar10_jacintonet11v2", "lenet", "cifar10_quick"}


@pytest.mark.parametrize("path", DEPLOYS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_deploy_builds_and_runs(path):
    net = caffelite.Net(path, caffelite.TEST)
    name = net.inputs[0]
    shape = list(net.blobs[name].shape)
    if shape[2] * shape[3] > 256 * 512:  # keep the suite fast: the net reshapes to any input size
        shape[2], shape[3] = shape[2] // 4, shape[3] // 4
        net.blobs[name].reshape(*shape)
        net.reshape()
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    out = net.forward(**{name: x})
    for v in out.values():
        assert np.all(np.isfinite(v))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(MODELS, "*", "*.prototxt"))),
                         ids=lambda p: "/".join(p.split(os.sep)[-2:]))
def test_every_prototxt_parses(path):
    if os.path.basename(path).startswith("solver"):
        assert cio.read_solver(path).base_lr > 0
    else:
        assert len(cio.read_net(path).layer) > 0
