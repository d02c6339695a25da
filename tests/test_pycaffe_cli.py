"""The command line's pycaffe/Caffe conveniences: --version, device_query, pyrun with ``import caffe``,
quiet exit on a closed pipe, glog's environment variables, and a user-set logger level left alone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

import caffelite
from caffelite import log as glog

from conftest import FIXTURES

JSEG = os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy", "deploy.prototxt")
LENET = os.path.join(FIXTURES, "nets", "lenet", "deploy.prototxt")


def _run(args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "caffelite", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})), **kw)


def test_version():
    r = _run(["--version"])
    assert r.returncode == 0 and r.stdout.strip() == f"caffelite version {caffelite.__version__}"


def test_device_query_without_gpu_is_not_an_error():
    from caffelite import backend
    r = _run(["device_query"])
    assert r.returncode == 0, r.stderr
    if not backend.cupy_available():
        assert "No GPU" in r.stderr


def test_output_into_head_ends_quietly(tmp_path):
    # far more output than a pipe buffer holds, so the writer meets the closed pipe
    (tmp_path / "many.py").write_text("for i in range(200000):\n    print('line', i)\n")
    for runner in (f"{sys.executable} -m caffelite",
                   f"{sys.executable} -c 'import sys; from caffelite.cli import main; sys.exit(main(sys.argv[1:]))'"):
        cmd = f"{runner} pyrun {tmp_path / 'many.py'} | head -1"
        r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, timeout=120)
        assert r.stdout == "line 0\n"
        assert r.stderr == "", r.stderr  # no BrokenPipe traceback, no "Exception ignored" line
        assert r.returncode == 141  # as a tool killed by SIGPIPE


def test_broken_pipe_in_process_returns_141(monkeypatch):
    from caffelite import cli

    def boom(args):
        raise BrokenPipeError(32, "Broken pipe")

    class FakeStdout:
        def fileno(self):
            raise ValueError("no file descriptor")

    monkeypatch.setattr(sys, "stdout", FakeStdout())
    mod = cli._module("info")
    monkeypatch.setattr(mod, "run", boom)
    assert cli.main(["info", LENET]) == 141


def test_glog_minloglevel_hides_info_lines(tmp_path):
    args = ["time", "--model", LENET, "--iterations", "1"]
    loud = _run(args)
    assert loud.returncode == 0 and "net.cpp" in loud.stderr
    quiet = _run(args, env={"GLOG_minloglevel": "1"})
    assert quiet.returncode == 0 and not any(ln.startswith("I") for ln in quiet.stderr.splitlines())
    bad = _run(args, env={"GLOG_minloglevel": "x"})
    assert bad.returncode == 2 and bad.stderr.strip().endswith("GLOG_minloglevel must be 0-3 (INFO, WARNING, "
                                                                "ERROR, FATAL), got 'x'")


def test_glog_log_dir_writes_a_log_file(tmp_path):
    r = _run(["time", "--model", LENET, "--iterations", "1"], env={"GLOG_log_dir": str(tmp_path)})
    assert r.returncode == 0
    files = list(tmp_path.glob("caffelite.*.log.INFO.*"))
    assert len(files) == 1 and "net.cpp" in files[0].read_text()
    r2 = _run(["time", "--model", LENET, "--iterations", "1"],
              env={"GLOG_log_dir": str(tmp_path / "none"), "GLOG_logtostderr": "1"})
    assert r2.returncode == 0 and not (tmp_path / "none").exists()


def test_glog_v_enables_debug(monkeypatch):
    monkeypatch.setenv("GLOG_v", "2")
    monkeypatch.delenv("GLOG_minloglevel", raising=False)
    assert glog.env_level() == logging.DEBUG
    monkeypatch.setenv("GLOG_v", "0")
    assert glog.env_level() == logging.INFO


def test_user_logger_level_is_never_overridden():
    lg = logging.getLogger("caffelite")
    old = lg.level
    try:
        lg.setLevel(logging.ERROR)
        glog.setup_logging()
        glog.get_logger()
        assert lg.level == logging.ERROR
        caffelite.set_log_level("warning")
        glog.setup_logging()
        assert lg.level == logging.WARNING
        with pytest.raises(ValueError, match="unknown log level"):
            caffelite.set_log_level("LOUD")
    finally:
        lg.setLevel(old)
        glog.setup_logging(level=logging.INFO)


SCRIPT = """
import sys
import caffe
import caffe.io
from caffe import layers as L, params as P
from caffe.proto import caffe_pb2
assert caffe.io.Transformer is not None and caffe_pb2.NetParameter is not None
n = caffe.NetSpec()
n.data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
n.out = L.Pooling(n.data, pool=P.Pooling.AVE, kernel_size=2, stride=2)
print("args", sys.argv[1:], str(n.to_proto()).count("layer {"))
sys.exit(int(sys.argv[2]))
"""


def test_pyrun_runs_an_unmodified_pycaffe_script(tmp_path):
    (tmp_path / "s.py").write_text(SCRIPT)
    r = _run(["pyrun", str(tmp_path / "s.py"), "--flag", "3"])
    assert r.returncode == 3, r.stderr
    assert r.stdout.strip() == "args ['--flag', '3'] 2"
    missing = _run(["pyrun", str(tmp_path / "nope.py")])
    assert missing.returncode == 2 and "nope.py" in missing.stderr


def test_alias_caffe_in_process():
    before = {k: sys.modules.get(k) for k in ("caffe", "caffe.io", "caffe.proto", "caffe.proto.caffe_pb2")}
    try:
        for k in before:
            sys.modules.pop(k, None)
        caffelite.alias_caffe()
        import caffe
        import caffe.io
        from caffe.proto import caffe_pb2
        assert caffe is caffelite and caffe.io is caffelite.io and caffe_pb2.Datum is caffelite.io.caffe_pb2.Datum
    finally:
        for k, v in before.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_help_and_docstrings_cite_no_internal_documents():
    r = _run(["--help"])
    assert r.returncode == 0 and "§" not in r.stdout and ".md" not in r.stdout
    import caffelite.net_spec
    import caffelite.io.pycaffe
    for mod in (caffelite.io.pycaffe, caffelite.net_spec, caffelite.coord_map, caffelite.draw):
        assert "§" not in (mod.__doc__ or "")
