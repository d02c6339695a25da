"""Stage files of TI's "Sparse, Quantized CNN training for segmentation" (docs/jacinto-spec.md §g.5).

Each stage gets ``train.prototxt``, ``test.prototxt``, ``deploy.prototxt`` and ``solver.prototxt`` written from the
jsegnet21v2 templates shipped in ``caffelite/models/prototxt/cityscapes5_jsegnet21v2/``: the data paths, batch
sizes, crop and the deploy input shape are the run's; the solver fields follow the generator's defaults and
per-stage overrides.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from google.protobuf import text_format

from ..io.files import atomic_write
from ..proto import caffe_pb2

TEMPLATE_NET = "cityscapes5_jsegnet21v2"  # package data: caffelite.models.prototxt_path(TEMPLATE_NET, ...)

#: the stages in order; "test" and "test_quantize" score the sparse weights (§g.5)
STAGES = ("initial", "l1reg", "sparse", "test", "test_quantize")
TRAIN_STAGES = ("initial", "l1reg", "sparse")


@dataclass
class StageConfig:
    """Everything that varies between a full Cityscapes run and a small synthetic one."""

    train_image_lmdb: str
    train_label_lmdb: str
    val_image_lmdb: str
    val_label_lmdb: str
    num_val_images: int
    batch_size: int = 16
    test_batch_size: int = 4
    crop: int = 640
    deploy_hw: tuple = (512, 1024)
    base_lr: float = 1e-2
    #: max_iter per training stage (the seed's: 120000, 60000, 60000)
    iters: dict = field(default_factory=lambda: {"initial": 120000, "l1reg": 60000, "sparse": 60000})
    display: int = 100
    snapshot: int = 10000
    test_interval: int = 2000
    sparsity_target: float = 0.8
    sparsity_start_iter: int = 1000
    sparsity_start_factor: float = 0.6
    sparsity_step_iter: int = 1000
    sparsity_step_factor: float = 0.01
    display_sparsity: int = 1000
    random_seed: int = 33
    gpus: str | None = None
    #: NVCaffe warm-up of the initial stage (§c.1); 0 = none (the seed starts from ImageNet weights instead)
    rampup_interval: int = 0
    rampup_lr: float = 0.0
    #: sparsity_threshold_maxratio of the sparse stage (§a.3 cap, jacinto default 0.2); None = leave unset
    sparsity_threshold_maxratio: float | None = None

    @property
    def test_iter(self) -> int:
        return max(1, math.ceil(self.num_val_images / self.test_batch_size))


def _load_template(name: str):
    from ..models import prototxt_path

    with open(prototxt_path(TEMPLATE_NET, f"{name}.prototxt")) as f:
        return text_format.Parse(f.read(), caffe_pb2.NetParameter())


def _set_data(net, image_lmdb, label_lmdb, batch, crop):
    for layer in net.layer:
        if layer.type == "ImageLabelData":
            layer.image_label_data_param.image_list_path = image_lmdb
            layer.image_label_data_param.label_list_path = label_lmdb
            layer.image_label_data_param.batch_size = batch
            layer.transform_param.crop_size = crop


def _text(msg, quantize=False) -> str:
    body = text_format.MessageToString(msg)
    if quantize:  # jacinto's scripts prepend the line (§g.5); keep it first, as they do
        body = "quantize: true\n" + body.replace("quantize: true\n", "")
    return body


def solver_for(stage: str, cfg: StageConfig) -> caffe_pb2.SolverParameter:
    """The stage's SolverParameter: generator defaults + the stage's overrides (§g.5)."""
    s = caffe_pb2.SolverParameter()
    s.train_net = "train.prototxt"
    s.test_net.append("test.prototxt")
    trained = "initial" if stage == "initial" else "l1reg"
    max_iter = cfg.iters["initial" if stage == "initial" else ("sparse" if stage != "l1reg" else "l1reg")]
    s.test_iter.append(cfg.test_iter)
    s.test_interval = cfg.test_interval
    s.base_lr = cfg.base_lr
    s.display = cfg.display
    s.max_iter = max_iter
    s.lr_policy = "multistep"
    s.gamma = 0.1
    s.power = 1
    s.momentum = 0.9
    s.weight_decay = 1e-4 if trained == "initial" else 1e-5
    s.snapshot = cfg.snapshot
    s.snapshot_prefix = "cityscapes5_jsegnet21v2"
    s.solver_mode = caffe_pb2.SolverParameter.SolverMode.Value("GPU" if cfg.gpus else "CPU")
    s.device_id = 0
    s.random_seed = cfg.random_seed
    s.debug_info = False
    s.snapshot_after_train = True
    if trained != "initial":
        s.regularization_type = "L1"
    s.test_initialization = False
    s.stepvalue.extend([max_iter // 2, (max_iter * 3) // 4])
    s.iter_size = 1
    s.type = "SGD"
    if stage in ("sparse", "test", "test_quantize"):
        s.display_sparsity = cfg.display_sparsity
        s.sparse_mode = caffe_pb2.SPARSE_UPDATE
    if stage == "initial" and cfg.rampup_interval:
        s.rampup_interval = cfg.rampup_interval
        s.rampup_lr = cfg.rampup_lr
    if stage == "sparse":
        if cfg.sparsity_threshold_maxratio is not None:
            s.sparsity_threshold_maxratio = cfg.sparsity_threshold_maxratio
        s.sparsity_target = cfg.sparsity_target
        s.sparsity_step_factor = cfg.sparsity_step_factor
        s.sparsity_step_iter = cfg.sparsity_step_iter
        s.sparsity_start_iter = cfg.sparsity_start_iter
        s.sparsity_start_factor = cfg.sparsity_start_factor
    return s


def write_stage(stage: str, stage_dir: str, cfg: StageConfig) -> None:
    """Write the four files of ``stage`` into ``stage_dir``."""
    os.makedirs(stage_dir, exist_ok=True)
    quantize = stage == "test_quantize"
    train = _load_template("train")
    train.name = "jsegnet21v2_train"
    _set_data(train, cfg.train_image_lmdb, cfg.train_label_lmdb, cfg.batch_size, cfg.crop)
    test = _load_template("test")
    test.name = "jsegnet21v2_test"
    _set_data(test, cfg.val_image_lmdb, cfg.val_label_lmdb, cfg.test_batch_size, cfg.crop)
    deploy = _load_template("deploy")
    deploy.name = "jsegnet21v2_deploy"
    del deploy.input_shape[0].dim[:]
    deploy.input_shape[0].dim.extend([1, 3, cfg.deploy_hw[0], cfg.deploy_hw[1]])
    files = {"train.prototxt": _text(train), "test.prototxt": _text(test, quantize),
             "deploy.prototxt": _text(deploy, quantize), "solver.prototxt": _text(solver_for(stage, cfg))}
    for name, body in files.items():
        atomic_write(os.path.join(stage_dir, name), body)
