"""Log parsing (BVLC, NVCaffe/caffe-jacinto reference logs, caffelite's own) and the parse-log/plot commands."""

from __future__ import annotations

import builtins
import json
import os
import shutil

import pytest

from caffelite import cli
from caffelite import log as glog
from caffelite.logparse import parse_log, parse_log_file

from conftest import FIXTURES, REFERENCE
from solver_fixture import SOLVERS, case_dir

REF_LOGS = sorted(
    os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", stage, "run.log.txt")
    for stage in ("initial", "l1reg", "sparse")
)


@pytest.mark.parametrize("case", ["sgd_step", "sgd_multistep", "adam", "sgd_clip"])
def test_bvlc_log_matches_meta(case):
    meta = json.load(open(os.path.join(case_dir(case), "meta.json")))["log"]
    train, test = parse_log_file(os.path.join(case_dir(case), "log.txt"))
    by_iter = {r["NumIters"]: r for r in train}
    for k, loss in meta["loss"].items():
        assert by_iter[int(k)]["smoothed_loss"] == pytest.approx(loss)
        assert by_iter[int(k)]["LearningRate"] == pytest.approx(meta["lr"][k])
        assert by_iter[int(k)]["loss"] == pytest.approx(meta["train_outputs"][k]["loss"])
    it, final = meta["final_loss"]
    assert by_iter[it]["smoothed_loss"] == pytest.approx(final)
    assert {r["NumIters"]: {k: r[k] for k in ("accuracy", "loss")} for r in test} == \
        {int(k): v for k, v in meta["test"].items()}
    assert all(r["Seconds"] >= 0 for r in train + test)


@pytest.mark.parametrize("path", REF_LOGS, ids=lambda p: p.split(os.sep)[-2])
def test_reference_jacinto_logs(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    train, test = parse_log(text)
    n_tests = text.count("Testing net (#0)")
    assert len(test) == n_tests > 10
    assert all({"accuracy/top1", "accuracy/top5", "loss"} <= set(r) for r in test)
    assert all(0 <= r["accuracy/top1"] <= 1 for r in test)
    iters = [r["NumIters"] for r in train]
    assert iters == sorted(iters) and iters[0] == 0
    displayed = sum(1 for line in text.splitlines() if "solver.cpp" in line and "), loss = " in line)
    assert sum(1 for r in train if "smoothed_loss" in r) >= displayed
    assert all(r["LearningRate"] in (0.01, 0.001, 0.0001) for r in train)
    assert all(r.get("momentum", 0.9) == 0.9 for r in train)
    secs = [r["Seconds"] for r in train]
    assert secs == sorted(secs)


def test_caffelite_log_parses_like_caffes(tmp_path, monkeypatch, capfd):
    shutil.copytree(os.path.join(SOLVERS, "_data"), tmp_path / "_data")
    d = tmp_path / "sgd_step"
    d.mkdir()
    for f in ("solver.prototxt", "train_val.prototxt", "init.caffemodel"):
        shutil.copy(os.path.join(case_dir("sgd_step"), f), d / f)
    monkeypatch.chdir(d)
    glog.setup_logging()
    assert cli.main(["train", "--solver", "solver.prototxt", "--weights", "init.caffemodel"]) == 0
    ours_train, ours_test = parse_log(capfd.readouterr().err)
    theirs_train, theirs_test = parse_log_file(os.path.join(FIXTURES, "logs", "caffe_train.log"))
    assert [r["NumIters"] for r in ours_train] == [r["NumIters"] for r in theirs_train]
    for a, b in zip(ours_train, theirs_train, strict=True):
        assert a["smoothed_loss"] == pytest.approx(b["smoothed_loss"], rel=1e-4)
        assert a["LearningRate"] == pytest.approx(b["LearningRate"])
    assert len(ours_test) == len(theirs_test) == 3
    for a, b in zip(ours_test, theirs_test, strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"]) and a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_parse_log_command_writes_csv(tmp_path):
    log = os.path.join(FIXTURES, "logs", "caffe_train.log")
    assert cli.main(["parse-log", log, str(tmp_path)]) == 0
    train = (tmp_path / "caffe_train.log.train").read_text().splitlines()
    test = (tmp_path / "caffe_train.log.test").read_text().splitlines()
    assert train[0].startswith("NumIters,Seconds,LearningRate") and len(train) == 1 + 13
    assert test[0].startswith("NumIters,Seconds,LearningRate,TestNet") and len(test) == 1 + 3
    assert test[1].split(",")[-2:] == ["0.375", "35.4275"]


def test_parse_log_command_rejects_non_logs(tmp_path, capsys):
    p = tmp_path / "notes.txt"
    p.write_text("hello\n")
    assert cli.main(["parse-log", str(p), str(tmp_path)]) == 2
    assert "no training or test lines" in capsys.readouterr().err


def test_plot_without_matplotlib_is_one_clear_line(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    out = tmp_path / "c.png"
    assert cli.main(["plot", os.path.join(FIXTURES, "logs", "caffe_train.log"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib" in err[0] and "caffelite[plot]" in err[0]
    assert not out.exists()


def test_plot_panels_and_image(tmp_path):
    from caffelite.commands.plot import panels
    logs = [os.path.join(FIXTURES, "logs", "caffe_train.log"), REF_LOGS[0]]
    parsed = [(os.path.basename(p), *parse_log_file(p)) for p in logs]
    data = panels(parsed)
    assert {"train loss", "learning rate", "test accuracy", "test loss", "test accuracy/top1"} <= set(data)
    assert len(data["train loss"]) == 2 and len(data["train loss"][0][1]) == 13
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    assert cli.main(["plot", *logs, "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_glog_line_format():
    """caffelite's lines carry glog's prefix (level, mmdd, time with µs, thread id, Caffe source location)."""
    import io
    import re

    buf = io.StringIO()
    glog.setup_logging(buf)
    try:
        glog.info("Iteration 0 (0 iter/s, 0s/1 iters), loss = 1.85316", "solver.cpp:239")
        glog.warning("careful")
    finally:
        glog.setup_logging()
    lines = buf.getvalue().splitlines()
    assert re.match(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ solver\.cpp:239\] Iteration 0 \(0 iter/s, 0s/1 iters\), "
                    r"loss = 1\.85316$", lines[0])
    assert re.match(r"^W\d{4} [\d:.]+ +\d+ test_logparse\.py:\d+\] careful$", lines[1])
    assert parse_log(lines)[0][0]["smoothed_loss"] == 1.85316
    assert [glog.fmt(v) for v in (2.0832e-08, 0.02, 35.42749, 12, float("nan"))] == \
        ["2.0832e-08", "0.02", "35.4275", "12", "nan"]
