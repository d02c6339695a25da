"""The ``caffelite`` command: Caffe's tool subcommands plus caffelite's own.

Each subcommand lives in ``caffelite/commands/<module>.py`` and defines ``add_arguments(parser)`` and
``run(args) -> int``; this module only dispatches (lazily, so one command's imports never slow another).
Errors a user causes (:class:`~caffelite.errors.CaffeliteError`, missing files) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from .errors import CaffeliteError
from .registry import Registry

#: subcommand -> (module under caffelite.commands, one-line help)
COMMANDS = Registry("command")
for _name, _entry in {
    "train": ("train", "train or fine-tune a model (Caffe's `caffe train`)"),
    "test": ("test", "score a model (Caffe's `caffe test`)"),
    "time": ("time", "benchmark forward/backward per layer (Caffe's `caffe time`)"),
    "upgrade": ("upgrade", "upgrade a legacy net/solver prototxt or caffemodel"),
    "convert": ("convert", "rewrite a net or caffemodel in the jacinto or BVLC dialect"),
    "info": ("info", "describe a net, solver, caffemodel, binaryproto or solverstate"),
    "optimize": ("optimize", "fold BatchNorm/Scale into convolutions (caffe-jacinto's `caffe optimize`)"),
    "parse-log": ("parse_log", "turn a training log into train/test CSV tables"),
    "plot": ("plot", "plot training curves from logs"),
    "infer": ("infer", "segment images/video with a deploy net, write label PNGs and overlays"),
    "eval": ("evaluate", "pixel accuracy and mean IoU of a segmentation net"),
    "data": ("data", "datasets: cityscapes lists, LMDBs, synthetic Cityscapes, convert_imageset"),
    "flagship": ("flagship", "run the staged sparse/quantized segmentation flow end to end"),
    "device_query": ("device_query", "show the GPUs caffelite can use (Caffe's `caffe device_query`)"),
    "draw": ("draw", "draw a net prototxt as a graph image (BVLC's draw_net.py)"),
    "pyrun": ("pyrun", "run an unmodified pycaffe script (`import caffe`) on caffelite"),
    "export": ("export", "export a deploy net and its weights to ONNX"),
}.items():
    COMMANDS.add(_name, _entry)

#: global flag letting nets with Python layers (python_param) import their module
ALLOW_PYTHON = "--allow-python-layers"
_ALLOW_SPELLINGS = (ALLOW_PYTHON, "--allow_python_layers")
#: the variable caffelite.layers.python_layer reads ("0": refuse); set here so worker processes inherit it
PYTHON_LAYERS_ENV = "CAFFELITE_PYTHON_LAYERS"


@contextlib.contextmanager
def _python_layers_env(allow):
    old = os.environ.get(PYTHON_LAYERS_ENV)
    os.environ[PYTHON_LAYERS_ENV] = "1" if allow else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PYTHON_LAYERS_ENV, None)
        else:
            os.environ[PYTHON_LAYERS_ENV] = old


def _module(name):
    return importlib.import_module(f"caffelite.commands.{COMMANDS[name][0]}")


def build_parser(only=None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="caffelite", description="A Caffe-compatible engine (NumPy/CuPy).")
    from . import __version__
    ap.add_argument("--version", action="version", version=f"caffelite version {__version__}")
    ap.add_argument(ALLOW_PYTHON, action="store_true",
                    help="let nets with Python layers (type: \"Python\") import and run their python_param.module "
                         "(may also follow the subcommand)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        try:
            mod = _module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("caffelite.commands."):
                continue  # not implemented yet
            raise
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip().splitlines()[0])
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return ap


def _normalize_gflags(argv):
    """Accept gflags spellings: ``-solver x`` and ``-solver=x`` become ``--solver x``."""
    out = []
    for a in argv:
        if a.startswith("-") and not a.startswith("--") and len(a) > 2 and a[1].isalpha():
            a = "-" + a
        out.append(a)
    return out


def _split_allow_flag(argv):
    """Remove the Python-layer opt-in flag from wherever it is (before a pyrun script's own arguments)."""
    end = argv.index("pyrun") + 2 if "pyrun" in argv else len(argv)
    allow = any(a in _ALLOW_SPELLINGS for a in argv[:end])
    return allow, [a for i, a in enumerate(argv) if i >= end or a not in _ALLOW_SPELLINGS]


def _broken_pipe() -> int:
    """Output went to a pipe whose reader left (``caffelite ... | head``): stop quietly, as a tool killed by
    SIGPIPE does (exit status 141 = 128 + SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
    except (OSError, ValueError, AttributeError):
        pass
    return 141


def main(argv=None) -> int:
    if argv is None:
        import signal

        if hasattr(signal, "SIGPIPE"):  # a console run dies quietly on a closed pipe, as Caffe's C++ tools do
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = _normalize_gflags(argv)
    allow_python, argv = _split_allow_flag(argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        with _python_layers_env(allow_python or args.command == "pyrun"):
            from . import log as glog

            glog.get_logger()  # reads GLOG_minloglevel / GLOG_v / GLOG_log_dir
            return int(args._run(args) or 0)
    except BrokenPipeError:
        return _broken_pipe()
    except CaffeliteError as e:
        print(f"caffelite {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"caffelite {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except ValueError as e:
        if not str(e).startswith("GLOG_"):
            raise
        print(f"caffelite {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"caffelite {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
