"""Other Caffe forks' fields: kept byte for byte through every conversion, never understood.

A field no schema caffelite knows (BVLC, caffe-jacinto 0.16/0.17) declares, e.g. number 10000+ inside
``memory_data_param``, is found at any depth by :func:`foreign_fields` (with the path of the message holding it)
and put back into the converted message by :func:`restore_foreign_fields`. BVLC-only fields are not foreign:
their conversion is :mod:`caffelite.io.dialects`' business.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

from google.protobuf import unknown_fields

from ..proto import dialect

if TYPE_CHECKING:
    from .dialects import NetReport

#: protobuf wire types by number, for messages
WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}


class ForeignField(NamedTuple):
    """A field no schema caffelite knows declares (another Caffe fork's), kept as its exact wire bytes.

    ``path``: ((field name, key), ...) from the root message to the message holding it; ``key`` is the layer
    name for ``layer``/``layers`` entries (layers keep their names through every conversion), the index in
    other repeated fields, None in singular ones."""

    path: tuple
    number: int
    wire: int
    raw: bytes

    def describe(self, root: str = "net") -> str:
        """E.g. ``layer 'data': memory_data_param: field 10000 (varint)``; ``root`` names the top message."""
        parts, head = [], root
        for name, key in self.path:
            if name in ("layer", "layers") and isinstance(key, str):
                head = f"layer '{key}'"
                parts = []
            else:
                parts.append(name if key is None else f"{name}[{key}]")
        where = f"{head}: {'.'.join(parts)}" if parts else head
        return f"{where}: field {self.number} ({WIRE_NAMES.get(self.wire, f'wire type {self.wire}')})"


@functools.cache
def _declared(msg_name: str, number: int) -> bool:
    for name in ("jacinto017", "bvlc", "jacinto016"):
        cls = getattr(dialect(name), msg_name, None)
        if cls is not None and number in cls.DESCRIPTOR.fields_by_number:
            return True
    return False


def foreign_fields(msg, path=()) -> list[ForeignField]:
    """Every field of ``msg``, at any depth, that no schema (BVLC, caffe-jacinto 0.16/0.17) declares.

    BVLC-only fields read into jacinto classes are *not* foreign (their conversion is the dialects' business);
    these are fields of other forks, which caffelite keeps byte for byte through every conversion
    (:func:`restore_foreign_fields`) without understanding them."""
    from .wire import unknown_field_bytes

    out = []
    mname = msg.DESCRIPTOR.name
    for f in unknown_fields.UnknownFieldSet(msg):
        if f.wire_type in WIRE_NAMES and not _declared(mname, f.field_number):
            out.append(ForeignField(tuple(path), f.field_number, f.wire_type, unknown_field_bytes(f)))
    if mname == "BlobProto":  # only the shape can hold more; ListFields would copy the payloads
        if msg.HasField("shape"):
            out += foreign_fields(msg.shape, (*path, ("shape", None)))
        return out
    for fd, val in msg.ListFields():
        if fd.message_type is None:
            continue
        if not fd.is_repeated:
            out += foreign_fields(val, (*path, (fd.name, None)))
            continue
        for i, sub in enumerate(val):
            key = sub.name if fd.name in ("layer", "layers") and getattr(sub, "name", "") else i
            out += foreign_fields(sub, (*path, (fd.name, key)))
    return out


def _follow(msg, path):
    for name, key in path:
        fd = msg.DESCRIPTOR.fields_by_name.get(name)
        if fd is None or fd.message_type is None:
            return None
        val = getattr(msg, name)
        if not fd.is_repeated:
            msg = val
        elif isinstance(key, str):
            msg = next((m for m in val if m.name == key), None)
        else:
            msg = val[key] if key < len(val) else None
        if msg is None:
            return None
    return msg


def restore_foreign_fields(msg, fields, report: NetReport | None = None):
    """Put ``fields`` (from :func:`foreign_fields` of the message ``msg`` was converted from) back into ``msg``,
    each into the message at its path, unless a conversion kept it already. One whose place no longer exists
    is reported (``report.drop``), never silently lost."""
    seen = {}
    for ff in fields:
        sub = _follow(msg, ff.path)
        if sub is None:
            if report is not None:
                report.drop(ff.describe())
            continue
        key = id(sub)
        if key not in seen:
            from .wire import unknown_field_bytes
            seen[key] = [unknown_field_bytes(f) for f in unknown_fields.UnknownFieldSet(sub)
                         if f.wire_type in WIRE_NAMES]
        if ff.raw in seen[key]:
            seen[key].remove(ff.raw)  # still there (one occurrence per occurrence)
            continue
        sub.MergeFromString(ff.raw)
    return msg
