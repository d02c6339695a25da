"""Dialect detection and conversion between BVLC Caffe, caffe-jacinto 0.16 and caffe-jacinto 0.17 messages.

The dialects collide on field numbers (ARCHITECTURE.md "Dialects and files"): LayerParameter 145-148 are
BVLC messages (parameter/recurrent/swish/clip_param) but jacinto enums (forward/backward type/math);
SolverParameter 41-42 are BVLC ``layer_wise_reduce``/``weights`` but jacinto ``rampup_interval``/
``rampup_lr``; PoolingParameter ``round_mode`` (13) exists only in BVLC; 0.16's quantization messages are
renumbered (docs/jacinto-spec.md §0).

In memory caffelite always holds caffe-jacinto 0.17 classes:
- BVLC -> 0.17 goes through the wire: every field whose number means the same in both is carried as is;
  BVLC-only fields stay in the message as *unknown fields* (so writing it back in BVLC form is byte-identical)
  and the layers using them are reported (``extras``: the BVLC LayerParameter, for ``create_layer(extra=)``);
  BVLC ``recurrent_param`` (146) is moved to jacinto's 151; solver 41/42 are reported and dropped.
- 0.16 -> 0.17 copies fields by name (:func:`convert_by_name`); fields without a 0.17 namesake are reported.
- 0.17 -> BVLC (``convert --to bvlc``): jacinto-only fields are removed and reported; BatchNorm may be split
  into BVLC's BatchNorm + Scale (:mod:`caffelite.io.batchnorm`).
- Fields that no schema declares (other forks', e.g. numbers 10000+ inside ``memory_data_param``) are kept,
  not understood, at any depth, and written back byte for byte in every form (:mod:`caffelite.io.foreign`).
"""

from __future__ import annotations

import logging

from google.protobuf import unknown_fields

from ..proto import caffe_pb2, dialect
# other forks' fields moved to .foreign; still importable from here, where callers found them before
from .foreign import WIRE_NAMES, ForeignField, foreign_fields, restore_foreign_fields  # noqa: F401

log = logging.getLogger("caffelite.dialects")

#: LayerParameter numbers that are messages in BVLC and enums in jacinto
BVLC_LAYER_MESSAGES = {145: "parameter_param", 146: "recurrent_param", 147: "swish_param", 148: "clip_param"}
#: jacinto-only LayerParameter fields not worth reporting when they hold the framework default (NVCaffe sets
#: them on every layer it writes, docs/jacinto-spec.md §h)
_QUIET_JACINTO = {"forward_type", "backward_type", "forward_math", "backward_math", "phase"}


class NetReport:
    """What reading a net found: ``dialect``, per-layer BVLC extras, dropped fields, upgrade and blob form.

    - ``dialect``: "jacinto017", "jacinto016" or "bvlc";
    - ``extras``: layer name -> BVLC LayerParameter (without blobs) for layers with options that have no
      jacinto field (Clip's ``clip_param``, Swish's ``swish_param``, Pooling ``round_mode: FLOOR``...);
    - ``dropped``: human-readable "layer 'x': field" strings for fields with no jacinto equivalent;
    - ``upgraded``: a legacy (V0/V1/input/BatchNorm/solver_type) upgrade was applied;
    - ``form``: blob encoding found in a weights file ("jacinto" raw_data, "bvlc" packed data, "mixed", None).
    """

    def __init__(self, dialect_name="jacinto017", source="<string>"):
        self.dialect = dialect_name
        self.source = source
        self.extras: dict = {}
        self.dropped: list[str] = []
        self.upgraded = False
        self.form = None

    def drop(self, what: str):
        """Record (and log) a field that has no equivalent in the target dialect."""
        self.dropped.append(what)
        log.warning("%s: %s has no equivalent in the other dialect; not converted", self.source, what)

    def __repr__(self):
        return (f"NetReport(dialect={self.dialect!r}, extras={sorted(self.extras)}, dropped={self.dropped}, "
                f"upgraded={self.upgraded}, form={self.form!r})")


def unknown_numbers(msg) -> list[tuple[int, int]]:
    """(field number, wire type) of the unknown fields of ``msg`` (not recursive)."""
    return [(f.field_number, f.wire_type) for f in unknown_fields.UnknownFieldSet(msg)]


def looks_bvlc(net) -> bool:
    """Text nets valid in both dialects: BVLC's BatchNorm + Scale pattern (a BatchNorm without
    ``scale_bias`` whose top is read by a Scale layer) marks a BVLC net; jacinto nets use ``scale_bias``."""
    scaled = {l.bottom[0] for l in net.layer if l.type == "Scale" and len(l.bottom) == 1}
    return any(l.type == "BatchNorm" and not l.batch_norm_param.scale_bias and l.top and l.top[0] in scaled
               for l in net.layer)


def guess_jacinto_version(raw: bytes) -> str:
    """0.16 or 0.17 for a serialized jacinto net whose quantization messages are renumbered (docs/jacinto-spec.md §0).

    Reads raw wire values (a parsed message would already have normalised them): QParams field 4 is 0.16
    ``fracbits`` (often > 1) but 0.17 bool ``unsigned_data``; QParams field 8 is 0.16 float ``offset``
    (fixed32) but 0.17 varint ``shiftbits``; QuantizationParameter fields 6/7 repeat only in 0.17;
    NetQuantizationParameter field 3 is 0.17 ``bitwidth_weights`` (> 1) but 0.16 enum ``rounding_scheme``.
    Ties go to 0.17.
    """
    from .wire import iter_fields

    v16 = v17 = 0
    try:
        for num, wire, val in iter_fields(memoryview(raw)):
            if num == 201 and wire == 2:
                v17 += any(n == 3 and w == 0 and v > 1 for n, w, v in iter_fields(val))
            if num != 100 or wire != 2:
                continue
            for lnum, lwire, lval in iter_fields(val):
                if lnum != 8404 or lwire != 2:
                    continue
                counts = {}
                for qnum, qwire, qval in iter_fields(lval):
                    counts[qnum] = counts.get(qnum, 0) + 1
                    if qnum in (5, 6, 7) and qwire == 2:
                        for n, w, v in iter_fields(qval):
                            v16 += (n == 4 and w == 0 and v > 1) or (n == 8 and w == 5)
                            v17 += n == 8 and w == 0
                v17 += counts.get(6, 0) > 1 or counts.get(7, 0) > 1
    except ValueError:
        return "jacinto017"
    return "jacinto016" if v16 > v17 else "jacinto017"


# ----------------------------------------------------------------------------------------- BVLC -> 0.17
def _rewire(cls, msg, clear=()):
    """``msg`` read again as ``cls`` (another dialect's class) through the wire, fields ``clear`` left out.

    Fields ``cls`` does not declare stay as its unknown fields, so nothing is lost by the change of class.
    """
    if clear:
        head = type(msg)()
        head.CopyFrom(msg)
        for name in clear:
            head.ClearField(name)
        msg = head
    return cls.FromString(msg.SerializePartialToString())


def _bvlc_layer_extras(bl):
    """Names of BVLC-only options set in BVLC LayerParameter ``bl`` (no jacinto field carries them)."""
    out = []
    for name in ("parameter_param", "swish_param", "clip_param"):
        if bl.HasField(name):
            out.append(name)
    if bl.HasField("pooling_param") and bl.pooling_param.HasField("round_mode") \
            and bl.pooling_param.round_mode != 0:  # CEIL (0) is what jacinto always does
        out.append("pooling_param.round_mode")
    if bl.HasField("infogain_loss_param") and bl.infogain_loss_param.HasField("axis"):
        out.append("infogain_loss_param.axis")
    return out


def bvlc_layer_to_jacinto(bl, report: NetReport | None = None):
    """Convert one BVLC LayerParameter to a caffe-jacinto 0.17 LayerParameter (see module docstring)."""
    # recurrent_param is 146 in BVLC, 151 in jacinto (146 is a jacinto enum there): carried over by hand
    rec = bl.recurrent_param.SerializePartialToString() if bl.HasField("recurrent_param") else None
    jl = _rewire(caffe_pb2.LayerParameter, bl, ("recurrent_param",) if rec is not None else ())
    if rec is not None:
        jl.recurrent_param.MergeFromString(rec)
    if report is not None:
        fields = _bvlc_layer_extras(bl)
        if fields:
            report.extras[bl.name] = _rewire(type(bl), bl, ("blobs", "recurrent_param"))
            for f in fields:
                report.drop(f"layer '{bl.name}' ({bl.type}): {f}")
    return jl


def bvlc_net_to_jacinto(bnet, report: NetReport | None = None):
    """Convert a BVLC NetParameter to caffe-jacinto 0.17 (layer by layer, blobs carried as bytes)."""
    jnet = _rewire(caffe_pb2.NetParameter, bnet, ("layer",))
    for bl in bnet.layer:
        jnet.layer.append(bvlc_layer_to_jacinto(bl, report))
    return jnet


def detect_bvlc_in_jacinto_net(jnet, report: NetReport):
    """A BVLC binary net parsed with the jacinto class: fill ``report.extras``/``dropped`` from its layers.

    Used for binary files, where the jacinto parse already kept BVLC-only fields as unknown fields.
    Returns the net (recurrent_param moved to 151 where needed).
    """
    bvlc = dialect("bvlc")
    for i, jl in enumerate(jnet.layer):
        if not unknown_numbers(jl) and not (jl.HasField("pooling_param") and unknown_numbers(jl.pooling_param)) \
                and not (jl.HasField("infogain_loss_param") and unknown_numbers(jl.infogain_loss_param)):
            continue
        bl = _rewire(bvlc.LayerParameter, jl, ("blobs",))
        if bl.HasField("recurrent_param"):
            blobs = list(jl.blobs)
            new = bvlc_layer_to_jacinto(bl, None)
            new.blobs.extend(blobs)
            jnet.layer[i].CopyFrom(new)
        fields = _bvlc_layer_extras(bl)
        if fields:
            report.extras[bl.name] = bl
            for f in fields:
                report.drop(f"layer '{bl.name}' ({bl.type}): {f}")
    return jnet


def bvlc_solver_to_jacinto(bs, report: NetReport | None = None):
    """Convert a BVLC SolverParameter; ``layer_wise_reduce`` and ``weights`` (41/42) have no jacinto field."""
    bs2 = type(bs)()
    bs2.CopyFrom(bs)
    for name in ("layer_wise_reduce", "weights"):
        if bs2.DESCRIPTOR.fields_by_name[name].is_repeated and len(getattr(bs2, name)) \
                or not bs2.DESCRIPTOR.fields_by_name[name].is_repeated and bs2.HasField(name):
            if report is not None:
                report.drop(f"solver: {name}")
            bs2.ClearField(name)
    nets = {}
    for name in ("net_param", "train_net_param"):
        if bs2.HasField(name):
            nets[name] = bvlc_net_to_jacinto(getattr(bs2, name), report)
            bs2.ClearField(name)
    tests = [bvlc_net_to_jacinto(n, report) for n in bs2.test_net_param]
    bs2.ClearField("test_net_param")
    js = caffe_pb2.SolverParameter.FromString(bs2.SerializePartialToString())
    for name, n in nets.items():
        getattr(js, name).CopyFrom(n)
    for n in tests:
        js.test_net_param.add().CopyFrom(n)
    return js


# ----------------------------------------------------------------------------------------- 0.16 -> 0.17
def convert_by_name(src, dst, report: NetReport | None = None, path: str = ""):
    """Copy every set field of ``src`` into ``dst`` (another dialect's message) by field name.

    Enum values map by name; optional->repeated changes append; a field with no namesake of the same kind
    is reported in ``report.dropped``. BlobProto (wire-identical in every dialect) is copied as bytes.
    """
    if src.DESCRIPTOR.name == "BlobProto":
        dst.MergeFromString(src.SerializePartialToString())
        return dst
    dfields = dst.DESCRIPTOR.fields_by_name
    for fd, val in src.ListFields():
        where = f"{path}{fd.name}"
        dfd = dfields.get(fd.name)
        kind = "msg" if fd.message_type else "enum" if fd.enum_type else "scalar"
        dkind = None if dfd is None else "msg" if dfd.message_type else "enum" if dfd.enum_type else "scalar"
        if dfd is None or kind != dkind or (kind == "scalar" and (fd.type == fd.TYPE_STRING) !=
                                             (dfd.type == dfd.TYPE_STRING)):
            if report is not None:
                report.drop(where)
            continue
        vals = list(val) if fd.is_repeated else [val]
        if not dfd.is_repeated and len(vals) > 1:
            vals = vals[-1:]
        target = getattr(dst, fd.name)
        for v in vals:
            if kind == "msg":
                sub = target.add() if dfd.is_repeated else target
                convert_by_name(v, sub, report, where + ".")
                continue
            if kind == "enum":
                name = fd.enum_type.values_by_number[v].name
                ev = dfd.enum_type.values_by_name.get(name)
                if ev is None:
                    if report is not None:
                        report.drop(f"{where}: {name}")
                    continue
                v = ev.number
            if dfd.is_repeated:
                getattr(dst, fd.name).append(v)
            else:
                setattr(dst, fd.name, v)
    return dst


# ----------------------------------------------------------------------------------------- 0.17 -> BVLC
def jacinto_msg_to_bvlc(jmsg, cls_name: str, report: NetReport | None = None):
    """Convert a jacinto 0.17 message (NetParameter, LayerParameter, SolverParameter...) to BVLC's class.

    Goes through the wire (BVLC-only fields kept as unknown fields come back to life), moves
    recurrent_param 151 -> 146, clears jacinto-only fields (reported unless they hold NVCaffe's
    per-layer defaults) and drops what BVLC cannot parse.
    """
    bcls = getattr(dialect("bvlc"), cls_name)
    src = type(jmsg)()
    src.CopyFrom(jmsg)
    layers = list(src.layer) if cls_name == "NetParameter" else []
    if cls_name == "NetParameter":
        src.ClearField("layer")
    _clear_jacinto_only(src, report, "net: " if cls_name == "NetParameter" else "")
    if cls_name == "LayerParameter":
        return _layer_to_bvlc(src, report)
    if cls_name == "SolverParameter":
        for name in ("rampup_interval", "rampup_lr"):
            if src.HasField(name):
                if report is not None:
                    report.drop(f"solver: {name}")
                src.ClearField(name)
    out = bcls.FromString(src.SerializePartialToString())
    out.DiscardUnknownFields()
    for jl in layers:
        out.layer.append(_layer_to_bvlc(jl, report))
    return out


def _clear_jacinto_only(msg, report, where):
    """Clear fields of ``msg`` whose number/kind BVLC does not share (top level of that message only)."""
    bdesc = getattr(dialect("bvlc"), msg.DESCRIPTOR.name, None)
    bfields = bdesc.DESCRIPTOR.fields_by_number if bdesc is not None else {}
    for fd, val in msg.ListFields():
        bfd = bfields.get(fd.number)
        if bfd is not None and bfd.name == fd.name and bfd.type == fd.type:
            continue
        if fd.name == "recurrent_param":
            continue
        if report is not None and not (fd.name in _QUIET_JACINTO and not fd.is_repeated and val == 1):
            if fd.name != "phase":
                report.drop(f"{where}{fd.name}")
        msg.ClearField(fd.name)


def _layer_to_bvlc(jl, report):
    bl_cls = dialect("bvlc").LayerParameter
    rec = jl.recurrent_param.SerializePartialToString() if jl.HasField("recurrent_param") else None
    src = _rewire(caffe_pb2.LayerParameter, jl, ("recurrent_param",))  # a copy, without 151
    _clear_jacinto_only(src, report, f"layer '{jl.name}' ({jl.type}): ")
    bl = bl_cls.FromString(src.SerializePartialToString())
    bl.DiscardUnknownFields()
    if rec is not None:
        bl.recurrent_param.MergeFromString(rec)
    return bl
