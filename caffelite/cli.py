"""The ``caffelite`` command: Caffe's tool subcommands plus caffelite's own.

Each subcommand lives in ``caffelite/commands/<module>.py`` and defines ``add_arguments(parser)`` and
``run(args) -> int``; this module only dispatches (lazily, so one command's imports never slow another).
Errors a user causes (:class:`~caffelite.errors.CaffeliteError`, missing files) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CaffeliteError

#: subcommand -> (module under caffelite.commands, one-line help)
COMMANDS = {
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
}


def _module(name):
    return importlib.import_module(f"caffelite.commands.{COMMANDS[name][0]}")


def build_parser(only=None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="caffelite", description="A Caffe-compatible engine (NumPy/CuPy).")
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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = _normalize_gflags(argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args._run(args) or 0)
    except CaffeliteError as e:
        print(f"caffelite {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"caffelite {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"caffelite {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
