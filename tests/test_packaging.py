"""A regular install works like the editable one: the model templates ship inside the package (package data,
read through importlib.resources), so a wheel runs ``caffelite flagship`` from any folder."""

import glob
import os
import subprocess
import sys
import tomllib
import zipfile

import pytest

import caffelite
from caffelite.models import model_names, prototxt_dir, prototxt_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.dirname(os.path.abspath(caffelite.__file__))


def test_templates_live_in_the_package():
    assert os.path.commonpath([prototxt_dir(), PKG]) == PKG
    assert {"cityscapes5_jsegnet21v2", "lenet", "cifar10_quick"} <= set(model_names())
    for name in ("train", "test", "deploy"):
        assert os.path.isfile(prototxt_path("cityscapes5_jsegnet21v2", f"{name}.prototxt"))
    assert not os.path.exists(os.path.join(REPO, "models")), "the templates moved into caffelite/models"


def test_package_data_covers_every_template():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["caffelite"]
    shipped = {os.path.normpath(p) for pat in patterns for p in glob.glob(os.path.join(PKG, pat), recursive=True)}
    files = {os.path.normpath(p) for p in glob.glob(os.path.join(prototxt_dir(), "**", "*"), recursive=True)
             if os.path.isfile(p)}
    assert files and files <= shipped, sorted(files - shipped)


def test_stage_files_from_any_folder(tmp_path, monkeypatch):
    """The flagship's stage writer reads its templates through the package, not the current folder."""
    from caffelite.pipeline.stages import StageConfig, write_stage
    monkeypatch.chdir(tmp_path)
    cfg = StageConfig(train_image_lmdb="a", train_label_lmdb="b", val_image_lmdb="c", val_label_lmdb="d",
                      num_val_images=4)
    write_stage("sparse", str(tmp_path / "st"), cfg)
    assert sorted(os.listdir(tmp_path / "st")) == ["deploy.prototxt", "solver.prototxt", "test.prototxt",
                                                   "train.prototxt"]


@pytest.mark.slow
def test_wheel_runs_flagship_outside_checkout(tmp_path):
    """Build the wheel, unpack it (what pip install puts in site-packages) and run the quick flagship and
    ``info`` on a shipped template from a folder outside the checkout, importing only the unpacked copy."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), REPO], check=True,
                   cwd=REPO)
    (whl,) = dist.glob("caffelite-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "caffelite/models/prototxt/cityscapes5_jsegnet21v2/train.prototxt" in names
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    away = tmp_path / "away"
    away.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import caffelite; print(caffelite.__file__)"], cwd=away, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where
    subprocess.run([sys.executable, "-m", "caffelite", "flagship", "--quick", "--iters", "2,2,2", "--out",
                    str(away / "flag")], cwd=away, env=env, check=True, capture_output=True, timeout=900)
    assert (away / "flag" / "results.md").stat().st_size > 0
    deploy = str(site / "caffelite" / "models" / "prototxt" / "cityscapes5_jsegnet21v2" / "deploy.prototxt")
    out = subprocess.run([sys.executable, "-m", "caffelite", "info", deploy], cwd=away, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert "total:" in out
