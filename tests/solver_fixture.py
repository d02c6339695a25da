"""Helpers for the ``fixtures/solvers`` cases: solver params, learnable-param layout and a Net stand-in.

The stand-in (:class:`TrajectoryNet`) holds the learnable blobs of ``tiny_bn_net`` in Caffe's
``learnable_params`` order with the lr/decay multipliers Caffe used, so a solver's update can be checked one
step at a time against ``trajectory.npz`` without a real Net or the Data layer.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from google.protobuf import text_format

from caffelite.blob import Blob
from caffelite.proto import caffe_pb2

from conftest import FIXTURES
from helpers import load_npz

SOLVERS = os.path.join(FIXTURES, "solvers")
CASES = sorted(d for d in os.listdir(SOLVERS) if not d.startswith("_") and d != "sgd_step_resume")


def case_dir(case):
    return os.path.join(SOLVERS, case)


def copy_case(tmp_path, case, files=("solver.prototxt", "train_val.prototxt", "init.caffemodel")):
    """Copy ``files`` of a case into ``tmp_path/<case>`` (and the shared ``_data`` LMDBs beside it, since the
    prototxts name ``../_data/...``); training writes its snapshots there. Returns the folder."""
    if not (tmp_path / "_data").exists():
        shutil.copytree(os.path.join(SOLVERS, "_data"), tmp_path / "_data")
    d = tmp_path / case
    d.mkdir()
    for f in files:
        shutil.copy(os.path.join(case_dir(case), f), d / f)
    return d


def solver_param(case):
    with open(os.path.join(case_dir(case), "solver.prototxt")) as f:
        return text_format.Parse(f.read(), caffe_pb2.SolverParameter())


def trajectory(case):
    return dict(load_npz(os.path.join(case_dir(case), "trajectory.npz")))


def learnable_layout(case):
    """[(key 'layer/i', lr_mult, decay_mult)] in learnable_params order, from the case's TRAIN net prototxt.

    BVLC's BatchNorm statistics are learnable params with lr_mult 0 / decay_mult 0 (fixtures README)."""
    with open(os.path.join(case_dir(case), "train_val.prototxt")) as f:
        net = text_format.Parse(f.read(), caffe_pb2.NetParameter())
    traj_keys = set(k[len("param/"):] for k in trajectory(case) if k.startswith("param/"))
    out = []
    for layer in net.layer:
        i = 0
        while f"{layer.name}/{i}" in traj_keys:
            if layer.type == "BatchNorm":
                lr, decay = 0.0, 0.0
            elif i < len(layer.param):
                lr, decay = layer.param[i].lr_mult, layer.param[i].decay_mult
            else:
                lr, decay = 1.0, 1.0
            out.append((f"{layer.name}/{i}", lr, decay))
            i += 1
    return out


class TrajectoryNet:
    """The minimum of the Net API a solver's update needs, holding the case's learnable blobs."""

    name = "tiny_bn_net"
    layers = ()
    outputs = ()

    def __init__(self, case):
        self.layout = learnable_layout(case)
        traj = trajectory(case)
        self.learnable_params = []
        for key, _, _ in self.layout:
            b = Blob(traj[f"param/{key}"].shape[1:], np.float32)
            self.learnable_params.append(b)
        self.params_lr = [lr for _, lr, _ in self.layout]
        self.params_weight_decay = [d for _, _, d in self.layout]
        self.learnable_param_names = [k for k, _, _ in self.layout]

    def update(self):
        for b in self.learnable_params:
            b.data -= b.diff

    def clear_param_diffs(self):
        for b in self.learnable_params:
            b.diff[...] = 0
