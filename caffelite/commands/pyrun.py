"""Run an unmodified pycaffe script (``import caffe``) on caffelite.

``caffelite pyrun script.py ARGS...`` registers ``caffe`` and its submodules as aliases of caffelite's
(:func:`caffelite.alias_caffe`), then runs the script as ``__main__`` with ``sys.argv = [script, ARGS...]``.
The script is the user's own code, so its Python layers are allowed.
"""

from __future__ import annotations

import argparse


def add_arguments(parser):
    parser.add_argument("script", help="the Python script to run")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")


def run(args) -> int:
    import os
    import runpy
    import sys

    from ..layers.python_layer import set_python_layers_allowed
    from ..pycaffe_alias import alias_caffe

    if not os.path.isfile(args.script):
        raise FileNotFoundError(2, "No such file or directory", args.script)
    alias_caffe()
    set_python_layers_allowed(True)
    sys.argv = [args.script, *args.script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))
    try:
        runpy.run_path(args.script, run_name="__main__")
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0
