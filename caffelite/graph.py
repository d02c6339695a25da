"""Net-graph transforms done before a Net is built, as Caffe does them.

* :func:`filter_net` keeps the layers whose include/exclude rules match the net state (phase, level,
  stages) — Caffe's ``Net::FilterNet`` / ``StateMeetsRule``.
* :func:`insert_splits` adds a ``Split`` layer wherever a top feeds more than one bottom, with Caffe's names
  (``<blob>_<layer>_<top index>_split`` for the layer, ``<blob>_<layer>_<top index>_split_<k>`` for its
  tops) — Caffe's ``InsertSplits``. A non-zero ``loss_weight`` on a fanned-out top counts as one more
  consumer and moves to the split's first top.
"""

from __future__ import annotations

import logging

from .errors import NetError, UnsupportedError
from .proto import caffe_pb2

log = logging.getLogger("caffelite")


def _why(msg, src):
    log.info(msg, extra={"src": src})


def state_meets_rule(state, rule, layer_name="") -> bool:
    """Whether NetState ``state`` satisfies NetStateRule ``rule`` (every set condition must hold).

    Like Caffe's StateMeetsRule it logs (INFO) the first condition that fails.
    """
    where = f"specified by a rule in layer {layer_name}"
    if rule.HasField("phase") and rule.phase != state.phase:
        _why(f"The NetState phase ({state.phase}) differed from the phase ({rule.phase}) {where}", "net.cpp:296")
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        _why(f"The NetState level ({state.level}) is above the min_level ({rule.min_level}) {where}",
             "net.cpp:303")
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        _why(f"The NetState level ({state.level}) is above the max_level ({rule.max_level}) {where}",
             "net.cpp:311")
        return False
    stages = set(state.stage)
    for s in rule.stage:
        if s not in stages:
            _why(f"The NetState did not contain stage '{s}' {where}", "net.cpp:323")
            return False
    for s in rule.not_stage:
        if s in stages:
            _why(f"The NetState contained a not_stage '{s}' {where}", "net.cpp:336")
            return False
    return True


def layer_included(layer, state) -> bool:
    """Caffe's rule: with include rules a layer is in iff one matches; otherwise in unless an exclude matches."""
    if len(layer.include) and len(layer.exclude):
        raise NetError("Specify either include rules or exclude rules; not both.", layer.name, layer.type)
    if len(layer.include):
        return any(state_meets_rule(state, r, layer.name) for r in layer.include)
    return not any(state_meets_rule(state, r, layer.name) for r in layer.exclude)


def make_state(param, phase=None, level=None, stages=None):
    """The NetState of a net: ``param.state`` overridden by the given phase / level / stages."""
    state = type(param.state)()
    state.CopyFrom(param.state)
    if phase is not None:
        state.phase = int(phase)
    if level is not None:
        state.level = int(level)
    if stages is not None:
        del state.stage[:]
        state.stage.extend(list(stages))
    return state


def filter_net(param, state):
    """A copy of NetParameter ``param`` holding only the layers ``state`` includes (and the state set)."""
    out = type(param)()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if layer_included(layer, state):
            out.layer.add().CopyFrom(layer)
    out.state.CopyFrom(state)
    return out


def split_layer_name(blob, layer, top_index) -> str:
    """Caffe's name of the Split layer fanning out top ``top_index`` (blob ``blob``) of layer ``layer``."""
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob, layer, top_index, k) -> str:
    """Caffe's name of the ``k``-th top of that Split layer."""
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(param):
    """A copy of ``param`` with Split layers inserted where one top feeds several bottoms.

    Raises NetError for a bottom that no earlier layer produces.
    """
    layers = list(param.layer)
    last_top = {}        # blob name -> (layer index, top index) of its latest producer
    source = {}          # (layer index, bottom index) -> (layer index, top index)
    consumers = {}       # (layer index, top index) -> number of consumers
    loss_weight = {}     # (layer index, top index) -> explicit loss weight
    for i, lp in enumerate(layers):
        for j, b in enumerate(lp.bottom):
            if b not in last_top:
                raise NetError(f"Unknown bottom blob '{b}' (layer '{lp.name}', bottom index {j})",
                               lp.name, lp.type)
            src = last_top[b]
            source[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, t in enumerate(lp.top):
            last_top[t] = (i, j)
            if len(lp.loss_weight) > j:
                w = lp.loss_weight[j]
                loss_weight[(i, j)] = w
                if w:
                    consumers[(i, j)] = consumers.get((i, j), 0) + 1

    if not any(n > 1 for n in consumers.values()):
        out = type(param)()
        out.CopyFrom(param)
        return out

    out = type(param)()
    out.CopyFrom(param)
    del out.layer[:]
    used = {}  # (layer index, top index) -> splits handed out so far
    for i, lp in enumerate(layers):
        nl = out.layer.add()
        nl.CopyFrom(lp)
        for j, b in enumerate(lp.bottom):
            src = source[(i, j)]
            if consumers[src] > 1:
                k = used.get(src, 0)
                used[src] = k + 1
                nl.bottom[j] = split_blob_name(b, layers[src[0]].name, src[1], k)
        for j, t in enumerate(lp.top):
            n = consumers.get((i, j), 0)
            if n > 1:
                sp = out.layer.add()
                sp.name = split_layer_name(t, lp.name, j)
                sp.type = "Split"
                sp.bottom.append(t)
                w = loss_weight.get((i, j), 0.0)
                for k in range(n):
                    sp.top.append(split_blob_name(t, lp.name, j, k))
                    if w:
                        sp.loss_weight.append(w if k == 0 else 0.0)
                if w:
                    # Caffe: split top 0 carries the loss, consumers take tops 1.., and the producer's
                    # loss weights are cleared (all of them, as BVLC's InsertSplits does)
                    used[(i, j)] = 1
                    del nl.loss_weight[:]
    return out


def prune_backward(layer_need, bottom_need, top_ids, bottom_ids, loss_tops):
    """Caffe's backward analysis, from the last layer down, editing the two lists in place.

    ``layer_need[i]``: layer i needs backward (from its bottoms and params); ``bottom_need[i][j]``: bottom j
    of layer i gets a diff; ``loss_tops[i]``: indices of tops with a non-zero loss weight. A layer that
    reaches no loss, or whose tops all come from layers that skip backward, computes nothing.
    """
    under_loss, skip = set(), set()
    for i in range(len(layer_need) - 1, -1, -1):
        contributes, skips = False, True
        for j, t in enumerate(top_ids[i]):
            contributes = contributes or j in loss_tops[i] or t in under_loss
            skips = skips and t in skip
            if contributes and not skips:
                break
        if layer_need[i] and skips:
            layer_need[i] = False
            bottom_need[i][:] = [False] * len(bottom_ids[i])
        if not contributes:
            layer_need[i] = False
        for j, b in enumerate(bottom_ids[i]):
            if contributes:
                under_loss.add(b)
            else:
                bottom_need[i][j] = False
            if not bottom_need[i][j]:
                skip.add(b)


def force_backward(layers, layer_need, bottom_need):
    """``force_backward: true``: every layer that has a backward runs it, into every bottom it allows
    (not labels), with every param diff. Two deliberate differences from Caffe, which ORs the flags and then
    aborts in Backward: a layer without backward (Threshold, ArgMax, Accuracy) is left alone, and an
    explicit ``propagate_down`` still decides for its bottom."""
    for li, layer in enumerate(layers):
        if not layer.has_backward():
            continue
        layer_need[li] = True
        explicit = layer.param.propagate_down
        for j in range(len(bottom_need[li])):
            bottom_need[li][j] = bool(explicit[j]) if len(explicit) else (
                bottom_need[li][j] or layer.allow_force_backward(j))
        layer.param_propagate_down = [True] * len(layer.blobs)


def layers_without_backward(layers, layer_need, bottom_need, bottom_ids):
    """{layer index: NetError} for the layers without backward that a loss still needs a gradient through
    (something learnable lies below them): Caffe aborts in Backward; the Net builds (forward-only use is
    fine) and raises that error in backward. Such layers that need nothing are marked as skipping backward."""
    errors = {}
    for li, layer in enumerate(layers):
        if layer.has_backward():
            continue
        wanted = [b for b, nb in zip(bottom_ids[li], bottom_need[li], strict=True) if nb]
        if wanted:
            errors[li] = layer.error(f"cannot back-propagate to bottom '{wanted[0]}': the layer has no backward "
                                     f"(nor has it in Caffe); set propagate_down: false on that bottom")
        layer_need[li] = bool(wanted)
    return errors


#: NVCaffe's per-layer precision fields; caffelite computes in the net's dtype (float32, or float64 for checks)
_MATH_FIELDS = ("forward_type", "backward_type", "forward_math", "backward_math")


def check_math_types(lp, prefix=""):
    """An NVCaffe layer (or net: ``prefix="default_"``) asking for FLOAT16/INT math cannot be honoured: say
    so instead of computing in float."""
    for f in (prefix + f for f in _MATH_FIELDS):
        v = getattr(lp, f)
        if lp.HasField(f) and v not in (caffe_pb2.FLOAT, caffe_pb2.DOUBLE):
            name = caffe_pb2.Type.values_by_number[v].name
            where = (lp.name, lp.type) if not prefix else (None, None)
            raise UnsupportedError(f"option {f} = {name} is not supported (caffelite computes in float32)", *where)
