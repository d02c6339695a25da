"""The flagship flow end to end at toy scale: data → lists → LMDBs → five stages → table; resume after a cut."""

import argparse
import json
import os
import re

import pytest

from caffelite.commands import flagship
from caffelite.segmentation.cityscapes import DatasetError
from caffelite.pipeline import segmentation as seg


def _cfg(out, extra=()):
    ap = argparse.ArgumentParser()
    flagship.add_arguments(ap)
    args = ap.parse_args(["--quick", "--out", str(out), "--iters", "6,4,8", "--synthetic-train", "8",
                          "--synthetic-val", "6", "--synthetic-size", "96x64", "--crop", "64",
                          "--deploy-size", "96x64", "--batch-size", "2", "--test-batch-size", "3", *extra])
    cfg = seg.config_from_args(args)
    cfg.stage.snapshot = 2
    cfg.stage.display = 2
    cfg.stage.sparsity_start_iter = 2
    cfg.stage.sparsity_step_iter = 2
    cfg.overlays = 1
    return cfg


def test_flagship_runs_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    results = seg.run_pipeline(_cfg(out))
    assert list(results) == ["initial", "l1reg", "sparse", "test", "test_quantize", "speed"]
    speed = results["speed"]
    for r in (results[k] for k in seg.STAGES):
        assert 0.0 <= r["mean_iou"] <= 1.0 and 0.0 <= r["pixel_accuracy"] <= 1.0
    assert results["initial"]["zero_weights"] == 0.0
    assert results["sparse"]["zero_weights"] > 0.3  # thresholding ran (factor starts at 0.5)
    table = (out / "results.md").read_text()
    assert "| Sparse + quantized (8-bit) inference |" in table and "Overall impact" in table
    # the last table: the final model's forward time per engine at the deploy size (a row per engine built), ratios
    # to float dense
    from caffelite.ops import int8 as i8op
    from caffelite.ops import sparse_conv
    # the sparse rows need the compiled kernels (absent with CAFFELITE_NATIVE=0 or without a C compiler)
    engines = ["float dense"] + ["float sparse"] * sparse_conv.available() + ["int8"] + \
        ["sparse + int8"] * i8op.available()
    assert list(speed["seconds"]) == engines and speed["shape"] == [1, 3, 64, 96]
    assert all(v > 0 for v in speed["seconds"].values())
    rows = [ln for ln in table.split("| engine (1x3x64x96) |")[1].splitlines()[2:] if ln.startswith("|")]
    assert [ln.split("|")[1].strip() for ln in rows] == engines
    assert rows[0].endswith("| 1.00x |") and all(re.search(r"\| [\d.]+ ms \| [\d.]+x \|$", ln) for ln in rows)
    assert (out / "stages" / "test_quantize" / seg.RANGES_FILE).exists()
    assert os.listdir(out / "overlays" / "initial" / "overlay")
    for stage in seg.STAGES:
        assert (out / "stages" / stage / "run.log.txt").exists()
    test_log = (out / "stages" / "test_quantize" / "run.log.txt").read_text()
    assert "Enabling quantization" in test_log  # quantization starts at the 2nd test batch (§b.2)

    # Cut the sparse stage back to its iteration-4 snapshot, as if it had been interrupted: re-running resumes
    # from that snapshot (not from iteration 0) and the later stages are redone.
    sparse = out / "stages" / "sparse"
    for name in os.listdir(sparse):
        if "_iter_6." in name or "_iter_8." in name:
            os.remove(sparse / name)
    res = json.loads((out / "results.json").read_text())
    for k in ("sparse", "test", "test_quantize"):
        res.pop(k)
    (out / "results.json").write_text(json.dumps(res))
    capsys.readouterr()
    again = seg.run_pipeline(_cfg(out))
    printed = capsys.readouterr().out
    assert "[sparse] resuming from cityscapes5_jsegnet21v2_iter_4.solverstate" in printed
    assert "[initial] resuming" not in printed and again["initial"] == results["initial"]
    assert set(again) == set(results)
    log = (sparse / "run.log.txt").read_text()
    assert "Restoring previous solver status from cityscapes5_jsegnet21v2_iter_4.solverstate" in log


def test_missing_gtfine_is_one_clear_error(tmp_path):
    root = tmp_path / "cs"
    (root / "leftImg8bit" / "train").mkdir(parents=True)
    cfg = _cfg(tmp_path / "run", ["--dataset-root", str(root)])
    with pytest.raises(DatasetError) as e:
        seg.prepare_data(cfg)
    assert "gtFine" in str(e.value)


def test_a_failing_stage_command_is_one_error_naming_stage_command_and_status(tmp_path, monkeypatch):
    """A stage's ``caffelite`` command that fails raises StageError (a CaffeliteError, so the CLI prints it and
    exits 2) naming the stage, the command and its exit status, with the command's last output; the log keeps
    the output and the pipe from the child is closed."""
    import subprocess

    from caffelite.errors import CaffeliteError

    procs = []
    real_popen = subprocess.Popen

    def spy(*args, **kwargs):
        procs.append(real_popen(*args, **kwargs))
        return procs[-1]

    monkeypatch.setattr(seg.subprocess, "Popen", spy)
    log = tmp_path / "run.log.txt"
    with pytest.raises(seg.StageError) as e:
        seg._caffelite(["train", "--solver", "missing_solver.prototxt"], str(log), str(tmp_path), stage="initial")
    err = e.value
    assert isinstance(err, CaffeliteError) and isinstance(err, RuntimeError)
    assert err.stage == "initial" and err.returncode == 2 and err.command[:2] == ["train", "--solver"]
    first = str(err).splitlines()[0]
    assert first.startswith("stage 'initial': `caffelite train --solver missing_solver.prototxt` failed with exit "
                            "status 2") and str(log) in first
    assert "missing_solver.prototxt" in err.tail and err.tail.splitlines()[-1] in log.read_text()
    assert len(procs) == 1 and procs[0].stdout.closed and procs[0].returncode == 2
