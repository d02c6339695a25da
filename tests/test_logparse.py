"""Log parsing (BVLC, NVCaffe/caffe-jacinto reference logs, caffelite's own) and the parse-log/plot commands."""

from __future__ import annotations

import builtins
import json
import os

import pytest

from caffelite import cli
from caffelite import log as glog
from caffelite.logparse import parse_log, parse_log_file

from conftest import FIXTURES, REFERENCE
from solver_fixture import case_dir, copy_case

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
    monkeypatch.chdir(copy_case(tmp_path, "sgd_step"))
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
    assert "no training, test or batch lines" in capsys.readouterr().err


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


REF_TEST_LOGS = sorted(os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", stage, "run.log.txt")
                       for stage in ("test", "test_quantize"))


def test_caffe_test_log_batches_and_final_match_meta():
    from caffelite.logparse import parse_log_all
    meta = json.load(open(os.path.join(FIXTURES, "logs", "meta.json")))["test_log_parsed"]
    d = parse_log_all(open(os.path.join(FIXTURES, "logs", "caffe_test.log")).read())
    assert d["train"] == [] and d["test"] == []
    assert [(r["Batch"], k, r[k]) for r in d["batches"] for k in r if k not in ("Batch", "Seconds")] == \
        [tuple(b) for b in meta["batches"]]
    assert d["final"] == {"Loss": meta["loss"], **meta["final"]}


@pytest.mark.parametrize("path", REF_TEST_LOGS, ids=lambda p: p.split(os.sep)[-2])
def test_reference_caffe_test_logs(path, tmp_path):
    """The reference `caffe test` run.logs (NVCaffe 0.16): 50 batches, then the averages (before the sparsity
    block); parse-log writes them as <log>.batches with a closing mean row."""
    text = open(path, encoding="utf-8", errors="replace").read()
    from caffelite.logparse import parse_log_all
    d = parse_log_all(text)
    assert [r["Batch"] for r in d["batches"]] == list(range(50))
    assert set(d["final"]) == {"Loss", "accuracy/top1", "accuracy/top5", "loss"}
    mean_top1 = sum(r["accuracy/top1"] for r in d["batches"]) / 50
    assert d["final"]["accuracy/top1"] == pytest.approx(mean_top1, rel=1e-5)
    assert cli.main(["parse-log", path, str(tmp_path)]) == 0
    rows = (tmp_path / "run.log.txt.batches").read_text().splitlines()
    assert rows[0] == "Batch,Seconds,accuracy/top1,accuracy/top5,loss,Loss" and len(rows) == 1 + 50 + 1
    assert rows[-1].startswith("mean,,") and not (tmp_path / "run.log.txt.train").exists()


def test_jacinto_017_lines_and_caffelite_017_flavor(tmp_path, monkeypatch, capfd):
    """caffe-jacinto 0.17's forms (docs/jacinto-spec.md §i): epoch counter, `m/wd/gs` rate line, `Initial Test` banners,
    `[MultiGPU]` prefix; and caffelite's own --flavor jacinto log reads back the same way."""
    text = "\n".join([
        "I1003 06:19:42.162161 13372 solver.cpp:264] Initial Test started...",
        "I1003 06:19:42.162161 13372 solver.cpp:347] [MultiGPU] Iteration 0, Testing net (#0)",
        "I1003 06:19:43.162161 13372 solver.cpp:414]     Test net output #0: accuracy = 0.5",
        "I1003 06:19:43.162161 13372 solver.cpp:268] Initial Test completed in 1.2s",
        "I1003 06:19:44.162161 13372 solver.cpp:319] Iteration 0 (0.44 s), loss = 2.5",
        "I1003 06:19:44.162161 13372 solver.cpp:258]     Train net output #0: loss = 2.5 (* 1 = 2.5 loss)",
        "I1003 06:19:44.162161 13372 sgd_solver.cpp:136] Iteration 0, lr = 0.01, m = 0.9, wd = 1e-05, gs = 1.00",
        "I1003 06:20:44.162161 13372 solver.cpp:314] Iteration 100 (5.35804 iter/s, 18.2903s/98 iter), "
        "0.3/2.1ep, loss = 0.289444",
    ])
    train, test = parse_log(text)
    assert [(r["NumIters"], r["smoothed_loss"]) for r in train] == [(0, 2.5), (100, 0.289444)]
    assert train[0]["weight_decay"] == 1e-05 and train[0]["momentum"] == 0.9 and train[0]["loss"] == 2.5
    assert [(r["NumIters"], r["accuracy"]) for r in test] == [(0, 0.5)]
    monkeypatch.chdir(copy_case(tmp_path, "sgd_step"))
    glog.setup_logging()
    assert cli.main(["train", "--solver", "solver.prototxt", "--flavor", "jacinto"]) == 0
    err = capfd.readouterr().err
    assert "Initial Test started..." in err and ", wd = 0.0005, gs = 1.00" in err
    train, test = parse_log(err)
    assert [r["NumIters"] for r in test] == [0, 6, 12] and len(train) == 13
    assert all(r["weight_decay"] == pytest.approx(0.0005) for r in train if "weight_decay" in r)


def test_plot_of_caffe_test_logs(tmp_path):
    from caffelite.commands.plot import panels
    from caffelite.logparse import parse_log_all
    parsed = []
    for p in REF_TEST_LOGS:
        d = parse_log_all(open(p, encoding="utf-8", errors="replace").read())
        parsed.append((p.split(os.sep)[-2], d["train"], d["test"], d["batches"]))
    data = panels(parsed)
    assert set(data) == {"batch accuracy/top1", "batch accuracy/top5", "batch loss"}
    assert [len(xs) for _, xs, _ in data["batch loss"]] == [50, 50]
    pytest.importorskip("matplotlib")
    out = tmp_path / "t.png"
    assert cli.main(["plot", *REF_TEST_LOGS, *REF_LOGS, "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
