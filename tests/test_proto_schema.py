"""The shipped descriptor sets equal the dialects' field tables row for row, and are not stale."""

import csv
import os

import pytest
from google.protobuf import descriptor_pb2

from conftest import DATA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = {"jacinto017": "caffe_proto_fields.tsv", "jacinto016": "caffe_proto_fields_0.16.tsv",
          "bvlc": "caffe_proto_fields_bvlc.tsv"}
_TYPES = {v: k[len("TYPE_"):].lower() for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}
_LABELS = {v: k[len("LABEL_"):].lower() for k, v in descriptor_pb2.FieldDescriptorProto.Label.items()}


def _table(name):
    with open(os.path.join(DATA, "spec", TABLES[name]), newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _descriptor_rows(name):
    """(kind, owner, name) -> attributes, walked from the shipped .desc file."""
    path = os.path.join(ROOT, "caffelite", "proto", f"{name}.desc")
    with open(path, "rb") as f:
        fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    (fd,) = [f for f in fds.file if f.name == "caffe.proto"]
    rows = {}

    def enum(e, prefix):
        for v in e.value:
            rows[("enum_value", prefix + e.name, v.name)] = {"number": str(v.number)}

    def msg(m, prefix):
        owner = prefix + m.name
        for f in m.field:
            tname = f.type_name[len(".caffe."):] if f.type_name else _TYPES[f.type]
            rows[("field", owner, f.name)] = {
                "number": str(f.number), "label": _LABELS[f.label], "type": tname,
                "packed": "true" if f.options.packed else "false",
                "default": f.default_value if f.HasField("default_value") else None,
            }
        for e in m.enum_type:
            enum(e, owner + ".")
        for n in m.nested_type:
            msg(n, owner + ".")

    for m in fd.message_type:
        msg(m, "")
    for e in fd.enum_type:
        enum(e, "")
    return rows


@pytest.mark.parametrize("name", sorted(TABLES))
def test_schema_equals_table(name):
    got = _descriptor_rows(name)
    seen = set()
    for r in _table(name):
        kind = "enum_value" if r["row"] in ("enum", "enum_value") else r["row"]  # the BVLC table says "enum"
        key = (kind, r["message_or_enum"], r["name"])
        assert key in got, f"{name}: {key} missing from the compiled schema"
        seen.add(key)
        g = got[key]
        assert g["number"] == r["number"], key
        if kind != "field":
            continue
        assert g["label"] == r["label"], key
        assert g["type"] == r["type"], key
        assert g["packed"] == r["packed"], key
        want = r.get("default_canonical", r["default_as_written"])
        if want == "":
            assert g["default"] is None, (key, g["default"])
        else:
            want = "" if want == '""' else want
            if r["type"] in ("float", "double") and g["default"] is not None:
                assert float(g["default"]) == float(want), (key, g["default"], want)
            else:
                assert g["default"] == want, (key, g["default"], want)
    extra = set(got) - seen
    assert not extra, f"{name}: compiled schema has rows not in its table: {sorted(extra)[:5]}"


def test_descriptors_not_stale():
    pytest.importorskip("grpc_tools")
    import sys

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import gen_proto
    finally:
        sys.path.pop(0)
    for name in gen_proto.DIALECTS:
        with open(gen_proto.desc_path(name), "rb") as f:
            assert f.read() == gen_proto.compile_dialect(name), f"{name}.desc is stale: run tools/gen_proto.py"
