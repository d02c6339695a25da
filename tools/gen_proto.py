"""Regenerate the compiled descriptor sets shipped in ``caffelite/proto/`` (developers only).

caffelite never runs protoc at install or run time: it ships each dialect's ``caffe.proto`` compiled to a
``FileDescriptorSet`` and builds the message classes from it at import. Run this after editing a file in
``proto/``; ``tests/test_proto_schema.py`` fails while the shipped descriptors are stale.

Needs grpcio-tools (``pip install -e .[dev]``).
Usage: python tools/gen_proto.py [--check]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: dialect name -> folder of its caffe.proto under proto/
DIALECTS = {"jacinto017": "proto", "jacinto016": "proto/jacinto016", "bvlc": "proto/bvlc"}


def compile_dialect(name: str) -> bytes:
    """Compile one dialect's caffe.proto with grpcio-tools' protoc; return the descriptor set bytes."""
    from grpc_tools import protoc

    src = os.path.join(ROOT, DIALECTS[name])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "caffe.desc")
        rc = protoc.main(["protoc", f"-I{src}", f"--descriptor_set_out={out}", "caffe.proto"])
        if rc != 0:
            raise SystemExit(f"protoc failed on {src}/caffe.proto")
        with open(out, "rb") as f:
            return f.read()


def desc_path(name: str) -> str:
    return os.path.join(ROOT, "caffelite", "proto", f"{name}.desc")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale descriptors")
    a = ap.parse_args(argv)
    stale = []
    for name in DIALECTS:
        data = compile_dialect(name)
        path = desc_path(name)
        old = open(path, "rb").read() if os.path.exists(path) else b""
        if old != data:
            stale.append(name)
            if not a.check:
                with open(path, "wb") as f:
                    f.write(data)
    if a.check and stale:
        print("stale descriptors: " + ", ".join(stale))
        return 1
    print("updated: " + (", ".join(stale) if stale else "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
