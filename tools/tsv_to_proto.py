"""Write a Caffe dialect's ``caffe.proto`` from its compiled field table.

The tables in ``shared/spec/caffe_proto_fields*.tsv`` list every message field and enum value of a
dialect (caffe-jacinto 0.17, 0.16, BVLC master) as the real ``caffe.proto`` compiled them. This script
turns such a table back into proto2 source, so the three schemas in ``proto/`` are reproducible and
checkable row by row (``tests/test_proto_schema.py``).

Usage: python tools/tsv_to_proto.py TABLE.tsv OUT.proto [--title TEXT]
"""

from __future__ import annotations

import argparse
import csv
from collections import OrderedDict


def read_rows(path):
    """Return the TSV rows as dicts (header row skipped)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


class _Node:
    """A message or enum in the nesting tree."""

    def __init__(self, name, kind):
        self.name = name
        self.kind = kind  # "message" or "enum"
        self.children: OrderedDict[str, _Node] = OrderedDict()
        self.items: list[dict] = []


def _tree(rows):
    root = _Node("", "message")

    def node(path, kind):
        cur = root
        parts = path.split(".")
        for i, part in enumerate(parts):
            if part not in cur.children:
                k = kind if i == len(parts) - 1 else "message"
                cur.children[part] = _Node(part, k)
            cur = cur.children[part]
        return cur

    for r in rows:
        if r["row"] == "field":
            node(r["message_or_enum"], "message").items.append(r)
        elif r["row"] in ("enum_value", "enum"):
            node(r["message_or_enum"], "enum").items.append(r)
    # Field types may name messages/enums that have no rows of their own (empty messages).
    known_scalar = {"double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
                    "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes"}
    for r in rows:
        if r["row"] == "field" and r["type"] not in known_scalar and r.get("type_kind", "message") == "message":
            node(r["type"], "message")
    return root


def _field_line(r):
    opts = []
    default = r["default_as_written"]
    if default != "":
        # The BVLC table writes string defaults bare; the jacinto tables keep the quotes.
        if r["type"] in ("string", "bytes") and default[0] not in "'\"":
            default = '"' + default + '"'
        opts.append(f"default = {default}")
    if r["packed"] == "true":
        opts.append("packed = true")
    if r.get("deprecated") == "true":
        opts.append("deprecated = true")
    opt = f" [{', '.join(opts)}]" if opts else ""
    label = "" if r.get("oneof") else r["label"] + " "
    return f"{label}{r['type']} {r['name']} = {r['number']}{opt};"


def _emit(node, out, indent):
    pad = "  " * indent
    if node.kind == "enum":
        out.append(f"{pad}enum {node.name} {{")
        aliases = len({r["number"] for r in node.items}) < len(node.items)
        if aliases:
            out.append(f"{pad}  option allow_alias = true;")
        for r in node.items:
            out.append(f"{pad}  {r['name']} = {r['number']};")
        out.append(f"{pad}}}")
        return
    out.append(f"{pad}message {node.name} {{")
    for child in node.children.values():
        _emit(child, out, indent + 1)
    open_oneof = None
    for r in node.items:
        if (r.get("oneof") or None) != open_oneof:
            if open_oneof:
                out.append(f"{pad}  }}")
            if r.get("oneof"):
                out.append(f"{pad}  oneof {r['oneof']} {{")
            open_oneof = r.get("oneof") or None
        inner = "    " if open_oneof else "  "
        out.append(f"{pad}{inner}{_field_line(r)}")
    if open_oneof:
        out.append(f"{pad}  }}")
    out.append(f"{pad}}}")


def tsv_to_proto(rows, title):
    """Return proto2 source text for the table ``rows``."""
    out = ["// " + title, "// Generated from the dialect's field table by tools/tsv_to_proto.py.",
           'syntax = "proto2";', "", "package caffe;", ""]
    for child in _tree(rows).children.values():
        _emit(child, out, 0)
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("out")
    ap.add_argument("--title", default="Caffe schema")
    a = ap.parse_args()
    with open(a.out, "w") as f:
        f.write(tsv_to_proto(read_rows(a.table), a.title))


if __name__ == "__main__":
    main()
