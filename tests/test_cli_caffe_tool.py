"""`caffelite train/test/time` as Caffe's tool: flag spellings, level/stage, signals, multi-GPU dispatch, the
jacinto flags (--optimize_net, --output_model, --quant-ranges), progress bar, NaN stop, resume with random
crops and mirrors, the iteration-0 test rule, and `caffe time`'s format (against the real Caffe logs)."""

from __future__ import annotations

import io
import json
import os
import re
import signal

import numpy as np
import pytest

from caffelite import cli
from caffelite import log as glog

from conftest import FIXTURES
from solver_fixture import case_dir, copy_case


@pytest.fixture
def case(tmp_path, monkeypatch, capfd):
    """A copy of the sgd_step case (and the shared LMDBs) as the CWD; returns its folder."""
    d = copy_case(tmp_path, "sgd_step", ("solver.prototxt", "train_val.prototxt", "init.caffemodel",
                                         "snapshot_iter_12.caffemodel"))
    monkeypatch.chdir(d)
    glog.setup_logging()  # a handler writing to whatever sys.stderr is (the capture, in the test's call)
    return d


def _edit(path, *pairs, append=""):
    text = path.read_text()
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text + append)


def _parse(argv):
    argv = cli._normalize_gflags(argv)
    return cli.build_parser(argv[0]).parse_args(argv)


# -- flags -------------------------------------------------------------------------------------------------
def test_every_gflags_spelling():
    for argv in (["train", "-solver", "s.prototxt"], ["train", "-solver=s.prototxt"],
                 ["train", "--solver=s.prototxt"], ["train", "--solver", "s.prototxt"]):
        assert _parse(argv).solver == "s.prototxt", argv
    a = _parse(["train", "-solver=s", "-weights=a.caffemodel,b.caffemodel", "-gpu", "0,1", "-level=2", "-stage",
                "x,y", "-sigint_effect=snapshot", "--sighup_effect", "none"])
    assert (a.weights, a.gpu, a.level, a.stage, a.sigint_effect, a.sighup_effect) == \
        ("a.caffemodel,b.caffemodel", "0,1", 2, "x,y", "snapshot", "none")
    base = ["test", "-model", "m", "-weights", "w"]
    assert _parse(base).display_sparsity is False
    for flag, want in (("--display_sparsity", True), ("-display_sparsity", True), ("--display_sparsity=false", False),
                       ("-display_sparsity=true", True), ("--display_sparsity=0", False), ("--nodisplay_sparsity",
                                                                                            False)):
        assert _parse(base + [flag]).display_sparsity is want, flag
    assert _parse(base + ["-optimize_net"]).optimize_net is True
    assert _parse(base + ["--quant-ranges", "save", "r.json"]).quant_ranges == ("save", "r.json")
    assert _parse(base + ["--quant_ranges", "freeze"]).quant_ranges == ("freeze", None)
    for bad in (["--quant-ranges", "load"], ["--quant-ranges", "freeze", "x"], ["--quant-ranges", "thaw"],
                ["--display_sparsity=maybe"]):
        with pytest.raises(SystemExit):
            _parse(base + bad)


def test_quant_ranges_is_documented(capsys):
    for cmd in ("train", "test"):
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--quant-ranges MODE [FILE" in out and "'freeze'" in out and "'load FILE'" in out, cmd


def test_level_and_stage_select_train_layers(case, capfd):
    _edit(case / "train_val.prototxt", append='layer { name: "extra" type: "Power" bottom: "ip1" top: "extra" '
                                             'include { phase: TRAIN stage: "more" min_level: 2 } }\n')
    _edit(case / "solver.prototxt", ("max_iter: 12", "max_iter: 1"), ("test_interval: 6", "test_interval: 0"))
    for extra, present in ((["--stage", "more"], False), (["-stage=a,more", "-level", "2"], True),
                           (["--level=2"], False)):
        assert cli.main(["train", "--solver=solver.prototxt", *extra]) == 0
        err = capfd.readouterr().err
        assert ("Train net output #0: extra = " in err) is present, extra


@pytest.mark.parametrize("effect, stops, snap3", [("stop", True, True), ("snapshot", False, True),
                                                  ("none", False, False)])
def test_sigint_effect_flag(case, monkeypatch, capfd, effect, stops, snap3):
    from caffelite import solvers
    real = solvers.get_solver

    def get_solver(*a, **kw):  # send ourselves SIGINT after the update of iteration 2
        s = real(*a, **kw)
        s.add_hook("after_update", lambda sv, **_: sv.iter == 2 and os.kill(os.getpid(), signal.SIGINT))
        return s

    monkeypatch.setattr(solvers, "get_solver", get_solver)
    _edit(case / "solver.prototxt", ("snapshot: 6", "snapshot: 100"))
    assert cli.main(["train", "-solver", "solver.prototxt", f"-sigint_effect={effect}"]) == 0
    err = capfd.readouterr().err
    assert ("Optimization stopped early." in err) is stops
    assert (case / "snapshot_iter_3.solverstate").exists() is snap3
    assert (case / "snapshot_iter_12.solverstate").exists() is not stops
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_several_gpus_go_to_the_parallel_launcher(case, monkeypatch, capfd):
    from caffelite import backend, parallel
    real_launch = parallel.launch
    calls = []
    monkeypatch.setattr(parallel, "launch", lambda *a, **kw: calls.append((a, kw)) or 0)
    assert cli.main(["train", "-solver", "solver.prototxt", "-gpu", "0,1", "-weights", "init.caffemodel",
                     "-stage", "s"]) == 0
    (solver, devices), kw = calls[0]
    assert (solver, devices, kw["weights"], kw["stages"], kw["backend"]) == ("solver.prototxt", [0, 1],
                                                                             "init.caffemodel", ["s"], "nccl")
    monkeypatch.setattr(parallel, "launch", lambda *a, **kw: 3)
    assert cli.main(["train", "-solver", "solver.prototxt", "-gpu", "0,1"]) == 2
    assert "exit status 3" in capfd.readouterr().err
    monkeypatch.setattr(parallel, "launch", real_launch)
    if not backend.cupy_available():
        for gpu in ("0,1", "all"):
            assert cli.main(["train", "-solver", "solver.prototxt", "-gpu", gpu]) == 2
            err = capfd.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "GPU" in err[0] and "caffelite train: error:" in err[0], err


# -- train loop behaviour ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flavor, setting, initial", [("bvlc", "", True), ("bvlc", "test_initialization: false\n",
                                                                           False),
                                                      ("bvlc", "test_initialization: true\n", True),
                                                      ("jacinto", "test_initialization: false\n", True)])
def test_initial_test_rule(case, capfd, flavor, setting, initial):
    _edit(case / "solver.prototxt", ("max_iter: 12", "max_iter: 2"), append=setting)
    assert cli.main(["train", "-solver", "solver.prototxt", "-flavor", flavor]) == 0
    assert ("Iteration 0, Testing net (#0)" in capfd.readouterr().err) is initial


def test_nan_stops_keeping_the_last_good_snapshot(case, capfd):
    _edit(case / "solver.prototxt", ("base_lr: 0.02", "base_lr: 1e12"), ("snapshot: 6", "snapshot: 2"))
    assert cli.main(["train", "-solver", "solver.prototxt", "-weights", "init.caffemodel"]) == 2
    err = capfd.readouterr().err
    last = err.strip().splitlines()[-1]
    assert re.match(r"caffelite train: error: training stopped at iteration (\d+): loss is (nan|inf); first "
                    r"non-finite output: layer '\w+' top '\w+'; the last good snapshot is snapshot_iter_2", last)
    assert "RuntimeWarning" not in err and "Traceback" not in err
    assert sorted(p.name for p in case.glob("snapshot_iter_*.solverstate")) == ["snapshot_iter_2.solverstate"]


def test_nan_names_the_in_place_layer_that_made_it(case):
    from caffelite.solvers import NonFiniteLossError, get_solver
    s = get_solver("solver.prototxt")
    s.param.test_interval = 0
    s.net.layer_dict["conv1/scale"].blobs[0].data[2] = np.inf  # in place on 'conv1', after conv1 and conv1/bn
    with pytest.raises(NonFiniteLossError, match=r"iteration 0: .*layer 'conv1/scale' top 'conv1'"):
        s.step(1)


def test_weights_that_became_non_finite_are_never_snapshotted(case):
    from caffelite.solvers import NonFiniteLossError, get_solver
    s = get_solver("solver.prototxt")
    s.param.test_interval = 0
    first = s.snapshot()
    s.net.layer_dict["ip1"].blobs[0].data[0, 0] = np.nan
    with pytest.raises(NonFiniteLossError, match=rf"param 'ip1/0' non-finite .*last good snapshot is {first}"):
        s.snapshot()


def test_resume_with_random_crop_mirror_and_test_readers_is_bitwise(case):
    """Random crops and mirrors (the data layers' generators) and the test nets' cursors resume exactly,
    from a snapshot taken between two tests."""
    from caffelite.solvers import get_solver
    _edit(case / "train_val.prototxt", ("scale: 0.00390625", "scale: 0.00390625 crop_size: 12 mirror: true"))
    _edit(case / "solver.prototxt", ("test_interval: 6", "test_interval: 4"))
    full = get_solver("solver.prototxt")
    full.solve()
    want = [p.data.copy() for p in full.net.learnable_params]
    assert (case / "snapshot_iter_6.solverstate").exists()
    resumed = get_solver("solver.prototxt")
    resumed.solve("snapshot_iter_6.solverstate")
    for name, a, b in zip(resumed.net.learnable_param_names, resumed.net.learnable_params, want, strict=True):
        assert np.array_equal(a.data, b), name


# -- test and time -----------------------------------------------------------------------------------------
def _batch_values(err):
    return [float(v) for v in re.findall(r"caffe\.cpp:\d+\] Batch \d+, \w+ = ([-\d.e+]+)", err)]


def test_optimize_net_and_output_model(case, capfd):
    base = ["test", "-model", "train_val.prototxt", "-weights", "snapshot_iter_12.caffemodel", "-iterations", "3"]
    assert cli.main(base) == 0
    plain = _batch_values(capfd.readouterr().err)
    assert cli.main(base + ["-optimize_net", "--output_model", "out/folded"]) == 0
    err = capfd.readouterr().err
    assert "folded BatchNorm into 1 convolution(s)" in err
    assert _batch_values(err) == pytest.approx(plain, rel=1e-5)
    assert (case / "out" / "folded.prototxt").exists() and (case / "out" / "folded.caffemodel").exists()
    assert cli.main(["test", "-model", "out/folded.prototxt", "-weights", "out/folded.caffemodel",
                     "-iterations", "3"]) == 0
    assert _batch_values(capfd.readouterr().err) == pytest.approx(plain, rel=1e-5)
    from caffelite import io
    conv = [lp for lp in io.read_net("out/folded.prototxt").layer if lp.name == "conv1"][0]
    assert conv.convolution_param.bias_term and not conv.blobs


def test_quant_ranges_on_the_test_command(case, capfd):
    _edit(case / "train_val.prototxt", ('name: "tiny_bn_net"', 'name: "tiny_bn_net"\nquantize: true'))
    base = ["test", "-model", "train_val.prototxt", "-weights", "snapshot_iter_12.caffemodel", "-iterations", "3"]
    runs = {}
    for key, extra in (("plain", []), ("save", ["--quant-ranges", "save", "r.json"]),
                       ("freeze", ["--quant-ranges", "freeze"]), ("load", ["--quant-ranges", "load", "r.json"]),
                       ("load2", ["--quant_ranges", "load", "r.json"])):
        assert cli.main(base + extra) == 0, key
        runs[key] = _batch_values(capfd.readouterr().err)
    saved = json.loads((case / "r.json").read_text())
    assert {"conv1", "ip1"} <= set(saved["ranges"])
    assert runs["save"] == runs["plain"]  # saving changes nothing
    assert runs["freeze"][:2] == runs["plain"][:2]  # batch 0 only measures the ranges (float forward, §b.2)
    assert runs["load"] == runs["load2"] and runs["load"][:2] != runs["plain"][:2]  # quantized from batch 0
    assert cli.main(base + ["--quant-ranges", "load", "missing.json"]) == 2
    assert "missing.json" in capfd.readouterr().err
    _edit(case / "train_val.prototxt", ("quantize: true", ""))
    assert cli.main(base + ["--quant-ranges", "freeze"]) == 2
    assert "does not quantize" in capfd.readouterr().err


def test_time_output_has_caffes_lines(case, capfd):
    assert cli.main(["time", "-model", "train_val.prototxt", "-iterations", "2"]) == 0
    ours = capfd.readouterr().err

    def shape(text):
        out = []
        for line in text.splitlines():
            m = re.search(r"caffe\.cpp:\d+\] (.*)$", line)
            if m and "Use CPU" not in m.group(1):
                out.append(re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", m.group(1)))
        return out

    theirs = open(os.path.join(FIXTURES, "logs", "caffe_time.log")).read()
    assert shape(ours) == shape(theirs)
    # CPU Timer resolution: whole milliseconds per iteration and in total, as Caffe prints them
    assert re.search(r"Iteration: 1 forward-backward time: \d+ ms\.", ours)
    assert re.search(r"Total Time: \d+ ms\.", ours)


# -- progress bar ------------------------------------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_progress_bar_only_on_a_terminal(case, monkeypatch, tty):
    import sys
    err = _Tty() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    glog.setup_logging()
    _edit(case / "solver.prototxt", ("max_iter: 12", "max_iter: 3"))
    try:
        assert cli.main(["train", "-solver", "solver.prototxt"]) == 0
    finally:
        monkeypatch.undo()
    text = err.getvalue()
    assert ("\r" in text and "iter/s]" in text or "3/3" in text) is tty
    # the log lines themselves stay whole glog lines either way
    lines = [ln.split("\r")[-1] for ln in text.splitlines()]
    assert any(re.match(r"^I\d{4} [\d:.]+ +\d+ solver\.cpp:\d+\] Iteration 2 \(", ln) for ln in lines)


def test_reference_jacinto_runs_test_at_zero_despite_test_initialization_false():
    """Why --flavor jacinto ignores test_initialization: the reference solvers say `false`, their logs still
    show the one-batch initial test (docs/jacinto-spec.md §c.3), and BVLC's fixture (field unset) tests at 0 too."""
    from conftest import REFERENCE
    for stage in ("initial", "l1reg", "sparse"):
        folder = os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", stage)
        assert "test_initialization: false" in open(os.path.join(folder, "solver.prototxt")).read()
        log = open(os.path.join(folder, "run.log.txt"), encoding="utf-8", errors="replace").read()
        assert "] Iteration 0, Testing net (#0)" in log and "Initial Test completed" in log
    solver = open(os.path.join(case_dir("sgd_step"), "solver.prototxt")).read()
    assert "test_initialization" not in solver
    assert "] Iteration 0, Testing net (#0)" in open(os.path.join(case_dir("sgd_step"), "log.txt")).read()


def test_train_and_test_nets_from_files(case):
    """`train_net` + `test_net` files (the reference solvers' form); the test net gets TEST phase."""
    from caffelite.solvers import get_solver
    _edit(case / "solver.prototxt", ('net: "train_val.prototxt"', 'train_net: "train_val.prototxt"\n'
                                     'test_net: "train_val.prototxt"'))
    s = get_solver("solver.prototxt")
    assert "accuracy" not in s.net.layer_dict and "accuracy" in s.test_nets[0].layer_dict
    assert s.test_nets[0].phase == 1 and s.net.phase == 0


@pytest.mark.parametrize("field, match", [("solver_data_type: FLOAT16", "solver_data_type: FLOAT16"),
                                          ("test_and_snapshot_last_epochs: 2", "test_and_snapshot_last_epochs"),
                                          ("eval_type: \"detection\"", "eval_type")])
def test_unsupported_solver_fields_are_refused(case, capfd, field, match):
    _edit(case / "solver.prototxt", append=field + "\n")
    assert cli.main(["train", "-solver", "solver.prototxt"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert match in err[-1] and "not supported" in err[-1]


def test_resume_of_an_image_label_data_net_is_bitwise(tmp_path, monkeypatch):
    """A segmentation net fed by caffe-jacinto's ImageLabelData (random crop + mirror, 5 records in batches of
    2, so the resume point is mid-epoch): resumed from iteration 3 it ends with the uninterrupted weights."""
    from caffelite.data.datum import array_to_datum
    from caffelite.data.lmdb_io import LMDBWriter
    from caffelite.solvers import get_solver
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 3, 12, 14), dtype=np.uint8)
    for name, arrays in (("img", imgs), ("lab", imgs[:, :1] % 5)):
        with LMDBWriter(str(tmp_path / f"{name}_lmdb")) as w:
            for i, a in enumerate(arrays):
                w.put(f"{i:010d}", array_to_datum(a).SerializeToString())
    data = ('layer {{ name: "data" type: "ImageLabelData" top: "data" top: "label" include {{ phase: {ph} }} '
            'transform_param {{ crop_size: 8 mirror: true scale: 0.0039 }} image_label_data_param {{ '
            'image_list_path: "img_lmdb" label_list_path: "lab_lmdb" batch_size: 2 threads: 1 }} }}\n')
    (tmp_path / "net.prototxt").write_text(
        'name: "seg"\n' + data.format(ph="TRAIN") + data.format(ph="TEST") +
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "score" convolution_param { num_output: 5 '
        'kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }\n')
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\ntest_iter: 2\ntest_interval: 4\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\n'
        'display: 1\nmax_iter: 8\nsnapshot: 3\nsnapshot_prefix: "seg"\nrandom_seed: 5\n')
    monkeypatch.chdir(tmp_path)
    full = get_solver("solver.prototxt")
    full.solve()
    want = [p.data.copy() for p in full.net.learnable_params]
    resumed = get_solver("solver.prototxt")
    resumed.solve("seg_iter_3.solverstate")
    for a, b in zip(resumed.net.learnable_params, want, strict=True):
        assert np.array_equal(a.data, b)
    assert not np.array_equal(want[0], get_solver("solver.prototxt").net.learnable_params[0].data)


def test_quant_ranges_on_the_train_command(case, capfd):
    """Train + test nets quantize: `save FILE` writes the train net's ranges to FILE and the test net's to
    FILE.1; `load` uses them frozen from the first iteration, so the losses change."""
    _edit(case / "train_val.prototxt", ('name: "tiny_bn_net"', 'name: "tiny_bn_net"\nquantize: true'))
    _edit(case / "solver.prototxt", ("max_iter: 12", "max_iter: 3"), ("snapshot: 6", "snapshot: 0"))
    base = ["train", "-solver", "solver.prototxt", "-weights", "init.caffemodel"]
    assert cli.main(base + ["--quant-ranges", "save", "r.json"]) == 0
    saved = _losses(capfd.readouterr().err)
    assert (case / "r.json").exists() and (case / "r.json.1").exists()
    assert cli.main(base + ["--quant-ranges", "load", "r.json"]) == 0
    loaded = _losses(capfd.readouterr().err)
    assert len(saved) == len(loaded) == 3 and saved[0] != loaded[0]


def _losses(err):
    return [float(v) for v in re.findall(r"\] Iteration \d+ \(.*\), loss = ([-\d.e+]+)", err)]
