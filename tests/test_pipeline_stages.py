"""The flagship's stage files: what docs/jacinto-spec.md §g.5 says each stage's nets and solver contain."""

import os

from google.protobuf import text_format

from caffelite.pipeline.stages import STAGES, StageConfig, write_stage
from caffelite.proto import caffe_pb2


def _cfg():
    return StageConfig("/d/train-image-lmdb", "/d/train-label-lmdb", "/d/val-image-lmdb", "/d/val-label-lmdb",
                       num_val_images=500, batch_size=6, test_batch_size=10, crop=320, deploy_hw=(256, 512),
                       iters={"initial": 1000, "l1reg": 400, "sparse": 600})


def _read(path, msg):
    with open(path) as f:
        return text_format.Parse(f.read(), msg)


def test_every_stage_writes_four_files(tmp_path):
    cfg = _cfg()
    for stage in STAGES:
        d = tmp_path / stage
        write_stage(stage, str(d), cfg)
        assert sorted(os.listdir(d)) == ["deploy.prototxt", "solver.prototxt", "test.prototxt", "train.prototxt"]


def test_data_paths_batch_crop_and_deploy_shape(tmp_path):
    write_stage("initial", str(tmp_path), _cfg())
    train = _read(tmp_path / "train.prototxt", caffe_pb2.NetParameter())
    test = _read(tmp_path / "test.prototxt", caffe_pb2.NetParameter())
    deploy = _read(tmp_path / "deploy.prototxt", caffe_pb2.NetParameter())
    tl = train.layer[0]
    assert tl.type == "ImageLabelData"
    assert tl.image_label_data_param.image_list_path == "/d/train-image-lmdb"
    assert tl.image_label_data_param.label_list_path == "/d/train-label-lmdb"
    assert tl.image_label_data_param.batch_size == 6 and tl.transform_param.crop_size == 320
    assert tl.transform_param.mirror is True
    vl = test.layer[0]
    assert vl.image_label_data_param.image_list_path == "/d/val-image-lmdb"
    assert vl.image_label_data_param.batch_size == 10 and vl.transform_param.mirror is False
    assert list(deploy.input_shape[0].dim) == [1, 3, 256, 512]
    assert deploy.layer[-1].type == "ArgMax" and deploy.layer[-1].name == "argMaxOut"
    assert not deploy.quantize


def test_solver_overrides_per_stage(tmp_path):
    cfg = _cfg()
    solvers = {}
    for stage in STAGES:
        write_stage(stage, str(tmp_path / stage), cfg)
        solvers[stage] = _read(tmp_path / stage / "solver.prototxt", caffe_pb2.SolverParameter())
    ini, l1, sp = solvers["initial"], solvers["l1reg"], solvers["sparse"]
    assert (ini.max_iter, list(ini.stepvalue), ini.regularization_type) == (1000, [500, 750], "L2")
    assert abs(ini.weight_decay - 1e-4) < 1e-10
    assert (l1.max_iter, list(l1.stepvalue), l1.regularization_type) == (400, [200, 300], "L1")
    assert abs(l1.weight_decay - 1e-5) < 1e-12
    assert sp.sparse_mode == caffe_pb2.SPARSE_UPDATE and abs(sp.sparsity_target - 0.8) < 1e-7
    assert sp.regularization_type == "L1"
    assert solvers["test"].sparse_mode == caffe_pb2.SPARSE_UPDATE and not solvers["test"].HasField("sparsity_target")
    for s in solvers.values():
        assert s.test_iter == [50] and s.lr_policy == "multistep" and s.random_seed == 33 and s.type == "SGD"


def test_quantize_line_first_in_test_quantize_only(tmp_path):
    cfg = _cfg()
    for stage in ("test", "test_quantize"):
        write_stage(stage, str(tmp_path / stage), cfg)
    for name in ("test.prototxt", "deploy.prototxt"):
        assert open(tmp_path / "test_quantize" / name).readline().strip() == "quantize: true"
        assert "quantize" not in open(tmp_path / "test" / name).read()
