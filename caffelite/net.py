"""The Net: layers wired as Caffe wires them, with pycaffe's Python API.

Construction follows Caffe's ``Net::Init``: filter by phase/level/stages (:func:`graph.filter_net`),
insert Split layers (:func:`graph.insert_splits`), create each layer from the registry, connect bottoms
and tops (in-place tops reuse the bottom's Blob), set up and reshape, record loss weights, share params by
``ParamSpec.name``, and work out which layers and bottoms need backward. Weight files are read through
:mod:`caffelite.io`; copying by layer name lives in :mod:`caffelite.netweights`.
"""

from __future__ import annotations

import collections
import logging

import numpy as np

from . import backend, graph
from .blob import Blob
from .errors import NetError
from .hooks import HookSet
from .layer import TEST, TRAIN, create_layer
from .netweights import copy_trained_layers, load_net_param, read_weights_param, to_proto

log = logging.getLogger("caffelite")

__all__ = ["Net", "TRAIN", "TEST"]


class Net:
    """A Caffe network (pycaffe-compatible).

    ``Net(prototxt, weights, phase)``, ``Net(prototxt, phase, weights=...)`` or ``Net(net_param, phase)``;
    keywords ``level``, ``stages``, ``dtype`` (float32 by default; float64 for gradient checks).
    """

    def __init__(self, model, *args, weights=None, phase=None, level=None, stages=None, dtype=np.float32):
        args = list(args)
        if args and isinstance(args[0], (str, bytes)) or (args and hasattr(args[0], "__fspath__")):
            if weights is not None:
                raise TypeError("weights given both positionally and by keyword")
            weights = args.pop(0)
        if args:
            if phase is not None:
                raise TypeError("phase given both positionally and by keyword")
            phase = args.pop(0)
        if args:
            raise TypeError(f"unexpected positional arguments {args!r}")
        param, extras = load_net_param(model)
        self.dtype = np.dtype(dtype)
        self.xp = backend.current_xp()
        self.hooks = HookSet()
        self.loss = 0.0
        self._build(param, extras, phase, level, stages)
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------------
    def _build(self, param, extras, phase, level, stages):
        state = graph.make_state(param, phase, level, stages)
        self.phase = state.phase
        filtered = graph.filter_net(param, state)
        self._param = graph.insert_splits(filtered)
        self.name = self._param.name
        self.force_backward = bool(self._param.force_backward)
        self.layers, self._layer_names = [], []
        self.blobs = collections.OrderedDict()
        self._bottom_vecs, self._top_vecs = [], []
        self._bottom_ids, self._top_ids = [], []
        self._bottom_need_backward, self._layer_need_backward = [], []
        self._loss_tops = []          # per layer: [(top index, weight)] for non-zero loss weights
        self._blob_need_backward = {}
        self._input_names = []
        available = {}                # blob name -> None (insertion-ordered set of unconsumed tops)
        for lp0 in self._param.layer:
            lp = type(lp0)()
            lp.CopyFrom(lp0)
            if not lp.HasField("phase"):
                lp.phase = self.phase
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise NetError("propagate_down param must be specified either 0 or bottom_size times",
                               lp.name, lp.type)
            layer = create_layer(lp, lp.phase, extras.get(lp.name))
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            bottoms, bneed = [], []
            need_backward = False
            for j, bname in enumerate(lp.bottom):
                if bname not in available:
                    raise NetError(f"Unknown bottom blob '{bname}' (layer '{lp.name}', bottom index {j})",
                                   lp.name, lp.type)
                del available[bname]
                bottoms.append(self.blobs[bname])
                nb = self._blob_need_backward[bname]
                if len(lp.propagate_down):
                    nb = bool(lp.propagate_down[j])
                bneed.append(nb)
                need_backward |= self._blob_need_backward[bname]
            tops = []
            for j, tname in enumerate(lp.top):
                if j < len(lp.bottom) and lp.bottom[j] == tname:
                    if not layer.allows_in_place:
                        raise layer.error(f"does not allow in-place computation (top '{tname}')")
                    blob = self.blobs[tname]
                elif tname in self.blobs:
                    raise NetError(f"Top blob '{tname}' produced by multiple sources.", lp.name, lp.type)
                else:
                    blob = Blob((), self.dtype, self.xp)
                    self.blobs[tname] = blob
                    if lp.type == "Input":
                        self._input_names.append(tname)
                available[tname] = None
                tops.append(blob)
            self._bottom_vecs.append(bottoms)
            self._top_vecs.append(tops)
            self._bottom_ids.append(list(lp.bottom))
            self._top_ids.append(list(lp.top))
            self._bottom_need_backward.append(bneed)
            layer.check_blob_counts(bottoms, tops)
            layer.setup(bottoms, tops)
            self._convert_param_dtype(layer)
            layer.reshape(bottoms, tops)
            self._setup_loss_weights(layer, lp)
            need_backward |= self._setup_param_backward(layer)
            for tname in lp.top:
                self._blob_need_backward[tname] = need_backward
            self._layer_need_backward.append(need_backward)
            log.debug("Setting up %s: tops %s", lp.name,
                      ", ".join(f"{t} {list(b.shape)}" for t, b in zip(lp.top, tops, strict=True)))
        self._analyse_backward()
        self._append_params()
        self.outputs = sorted(available)  # Caffe keeps them in a std::set: sorted by name
        self.inputs = list(self._input_names)
        self.layer_dict = collections.OrderedDict(zip(self._layer_names, self.layers, strict=True))
        self.top_names = collections.OrderedDict(zip(self._layer_names, self._top_ids, strict=True))
        self.bottom_names = collections.OrderedDict(zip(self._layer_names, self._bottom_ids, strict=True))
        self.params = collections.OrderedDict(
            (n, l.blobs) for n, l in zip(self._layer_names, self.layers, strict=True) if len(l.blobs))
        self._blob_loss_weights = {self._top_ids[i][j]: w for i, lt in enumerate(self._loss_tops) for j, w in lt}
        for name in self.outputs:
            log.info("This network produces output %s", name)
        log.info("Network initialization done.")

    def _convert_param_dtype(self, layer):
        for b in layer.blobs:
            if b.dtype != self.dtype or b.xp is not self.xp:
                arr = self.xp.asarray(backend.to_numpy(b.data), dtype=self.dtype)
                b.dtype, b.xp = self.dtype, self.xp
                b.set_data_array(arr)
                b.set_diff_array(None)

    def _setup_loss_weights(self, layer, lp):
        weights = list(lp.loss_weight)
        if not weights and layer.is_loss:
            weights = [1.0]  # Caffe's LossLayer: weight 1 on the first top unless loss_weight says otherwise
        if weights and len(weights) > len(lp.top):
            raise layer.error(f"loss_weight must be unspecified or specified once per top blob "
                              f"({len(lp.top)}), got {len(weights)}")
        weights += [0.0] * (len(lp.top) - len(weights))
        layer.loss_weights = weights
        self._loss_tops.append([(j, float(w)) for j, w in enumerate(weights) if w])

    def _setup_param_backward(self, layer):
        """Per param blob: propagate down iff its lr_mult != 0 (Caffe); returns whether any does."""
        specs = layer.param.param  # the layer's own copy: setup may have forced specs (BatchNorm)
        if len(specs) > len(layer.blobs):
            raise layer.error(f"Too many params specified for layer {layer.name}: {len(specs)} param specs "
                              f"for {len(layer.blobs)} blobs")
        prop = [(specs[i].lr_mult if i < len(specs) else 1.0) != 0 for i in range(len(layer.blobs))]
        layer.param_propagate_down = prop
        return any(prop)

    def _analyse_backward(self):
        """Caffe's pass from the top: drop backward where no loss is reached or nothing needs a diff."""
        under_loss, skip_bp = set(), set()
        for li in range(len(self.layers) - 1, -1, -1):
            contributes, skip = False, True
            loss_tops = {j for j, _ in self._loss_tops[li]}
            for j, tname in enumerate(self._top_ids[li]):
                if j in loss_tops or tname in under_loss:
                    contributes = True
                if tname not in skip_bp:
                    skip = False
                if contributes and not skip:
                    break
            if self._layer_need_backward[li] and skip:
                self._layer_need_backward[li] = False
                self._bottom_need_backward[li] = [False] * len(self._bottom_ids[li])
            if not contributes:
                self._layer_need_backward[li] = False
            for j, bname in enumerate(self._bottom_ids[li]):
                if contributes:
                    under_loss.add(bname)
                else:
                    self._bottom_need_backward[li][j] = False
                if not self._bottom_need_backward[li][j]:
                    skip_bp.add(bname)
        if self.force_backward:
            for li, layer in enumerate(self.layers):
                self._layer_need_backward[li] = True
                for j, bname in enumerate(self._bottom_ids[li]):
                    nb = self._bottom_need_backward[li][j] or layer.allow_force_backward(j)
                    self._bottom_need_backward[li][j] = nb
                    self._blob_need_backward[bname] = self._blob_need_backward[bname] or nb
                layer.param_propagate_down = [True] * len(layer.blobs)
        # a layer without backward that is asked for one raises in Layer.backward, as Caffe aborts there
        # (not here: a forward-only user of a force_backward net must still be able to build it)

    def _append_params(self):
        """Caffe's AppendParam: owners, sharing by ParamSpec.name (shape checks), lr/decay multipliers."""
        self.learnable_params, self.params_lr, self.params_weight_decay = [], [], []
        self.learnable_param_names, self._param_owner = [], []
        has_lr, has_decay, by_name, owned_at = [], [], {}, {}
        for li, layer in enumerate(self.layers):
            specs = layer.param.param
            for pi, blob in enumerate(layer.blobs):
                spec = specs[pi] if pi < len(specs) else None
                pname = spec.name if spec is not None else ""
                if not pname or pname not in by_name:
                    if pname:
                        by_name[pname] = (li, pi)
                    owned_at[(li, pi)] = len(self.learnable_params)
                    self.learnable_params.append(blob)
                    self.learnable_param_names.append(f"{layer.name}/{pi}")
                    has_lr.append(spec is not None and spec.HasField("lr_mult"))
                    has_decay.append(spec is not None and spec.HasField("decay_mult"))
                    self.params_lr.append(float(spec.lr_mult) if spec is not None else 1.0)
                    self.params_weight_decay.append(float(spec.decay_mult) if spec is not None else 1.0)
                    self._param_owner.append(None)
                    continue
                oli, opi = by_name[pname]
                owner = self.layers[oli].blobs[opi]
                what = f"Cannot share param '{pname}' owned by layer '{self.layers[oli].name}' with layer " \
                       f"'{layer.name}'"
                if spec.share_mode == 1:  # PERMISSIVE: counts must agree
                    if owner.count != blob.count:
                        raise layer.error(f"{what}; count mismatch. Owner layer param shape is "
                                          f"{list(owner.shape)}; sharing layer shape is {list(blob.shape)}")
                elif owner.shape != blob.shape:
                    raise layer.error(f"{what}; shape mismatch. Owner layer param shape is "
                                      f"{list(owner.shape)}; sharing layer shape is {list(blob.shape)}")
                k = owned_at[(oli, opi)]
                for has, vals, field, label in ((has_lr, self.params_lr, "lr_mult", "lr_mult"),
                                                (has_decay, self.params_weight_decay, "decay_mult", "decay_mult")):
                    if spec.HasField(field):
                        v = float(getattr(spec, field))
                        if has[k] and v != vals[k]:
                            raise layer.error(f"Shared param '{pname}' has mismatched {label}.")
                        has[k], vals[k] = True, v
                log.info("Sharing parameters '%s' owned by layer '%s', param index %d",
                         pname, self.layers[oli].name, opi)
                shape = blob.shape
                blob.set_data_array(owner.data.reshape(shape))
                blob.set_diff_array(owner.diff.reshape(shape))
                self._param_owner.append((oli, opi))

    # ------------------------------------------------------------------------------------------------
    # running
    # ------------------------------------------------------------------------------------------------
    def _index(self, name, default):
        if name is None:
            return default
        if isinstance(name, int):
            return name
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise NetError(f"no layer named '{name}' in net '{self.name}'") from None

    def reshape(self):
        """Re-shape every layer from its bottoms (after an input blob changed shape)."""
        for layer, b, t in zip(self.layers, self._bottom_vecs, self._top_vecs, strict=True):
            layer.reshape(b, t)

    def _forward_from_to(self, start, end):
        """Run layers start..end (inclusive); return the weighted loss of those layers."""
        loss = 0.0
        h = self.hooks
        for fn in h.forward_start:
            fn(self)
        for i in range(start, end + 1):
            layer, b, t = self.layers[i], self._bottom_vecs[i], self._top_vecs[i]
            layer.reshape(b, t)  # Caffe's Layer::Forward reshapes first
            for fn in h.before_forward:
                fn(self, i, layer, b, t)
            layer.forward(b, t)
            for fn in h.after_forward:
                fn(self, i, layer, b, t)
            for j, w in self._loss_tops[i]:
                top = t[j]
                top.diff[...] = w  # the top's diff carries the loss weight into backward (Caffe)
                loss += w * float(top.data.sum())
        for fn in h.forward_end:
            fn(self)
        return loss

    def _backward_from_to(self, start, end):
        h = self.hooks
        for fn in h.backward_start:
            fn(self)
        for i in range(start, end - 1, -1):
            if not self._layer_need_backward[i]:
                continue
            layer, b, t = self.layers[i], self._bottom_vecs[i], self._top_vecs[i]
            for fn in h.before_backward:
                fn(self, i, layer, b, t)
            layer.backward(t, self._bottom_need_backward[i], b)
            for fn in h.after_backward:
                fn(self, i, layer, b, t)
        for fn in h.backward_end:
            fn(self)

    def forward(self, blobs=None, start=None, end=None, **inputs):
        """Feed ``inputs`` (name=array), run layers ``start``..``end`` (names, inclusive) and return a dict of
        the output blobs' data (the net outputs, or the tops of ``end``), plus any names in ``blobs``."""
        for name, arr in inputs.items():
            if name not in self.blobs:
                raise NetError(f"forward: no blob named '{name}' in net '{self.name}'")
            blob = self.blobs[name]
            arr = self.xp.asarray(arr, dtype=self.dtype)
            if tuple(arr.shape) != blob.shape:
                blob.reshape(arr.shape)
            blob.data[...] = arr
        s = self._index(start, 0)
        e = self._index(end, len(self.layers) - 1)
        self.loss = self._forward_from_to(s, e)
        outs = self.outputs if end is None else self._top_ids[e]
        names = list(outs) + [b for b in (blobs or []) if b not in outs]
        return {n: self.blobs[n].data for n in names}

    def backward(self, diffs=None, start=None, end=None, **top_diffs):
        """Set ``top_diffs`` (name=array) and run backward from layer ``start`` down to ``end`` (names,
        inclusive); return a dict of the input blobs' diffs (or the bottoms of ``end``), plus ``diffs``."""
        for name, arr in top_diffs.items():
            if name not in self.blobs:
                raise NetError(f"backward: no blob named '{name}' in net '{self.name}'")
            self.blobs[name].diff[...] = self.xp.asarray(arr, dtype=self.dtype).reshape(self.blobs[name].shape)
        s = self._index(start, len(self.layers) - 1)
        e = self._index(end, 0)
        self._backward_from_to(s, e)
        outs = self.inputs if end is None else self._bottom_ids[e]
        names = list(outs) + [b for b in (diffs or []) if b not in outs]
        return {n: self.blobs[n].diff for n in names}

    def forward_backward(self) -> float:
        """One forward and one backward over the whole net; return the loss (Caffe's ForwardBackward)."""
        loss = self._forward_from_to(0, len(self.layers) - 1)
        self.loss = loss
        self._backward_from_to(len(self.layers) - 1, 0)
        return loss

    def update(self):
        """``data -= diff`` for every learnable param (Caffe's Net::Update, used by plain SGD scripts)."""
        for p in self.learnable_params:
            p.data -= p.diff

    @property
    def blob_loss_weights(self):
        """OrderedDict blob name -> loss weight (0 for blobs that carry no loss), as pycaffe's."""
        return collections.OrderedDict((n, self._blob_loss_weights.get(n, 0.0)) for n in self.blobs)

    @property
    def _blob_names(self):
        return list(self.blobs)

    def clear_param_diffs(self):
        """Zero the diff of every learnable param (shared ones once)."""
        for p in self.learnable_params:
            p.diff[...] = 0

    def add_hook(self, event, fn):
        """Call ``fn`` at ``event`` (see :mod:`caffelite.hooks`)."""
        self.hooks.add(event, fn)

    def remove_hook(self, event, fn):
        self.hooks.remove(event, fn)

    # ------------------------------------------------------------------------------------------------
    # weights
    # ------------------------------------------------------------------------------------------------
    def copy_from(self, weights):
        """Copy params by layer name from a caffemodel path or a NetParameter with blobs (Caffe's
        CopyTrainedLayersFrom); logs copied and ignored layers."""
        param, dialect_name = read_weights_param(weights)
        copy_trained_layers(self, param, None if hasattr(weights, "layer") else str(weights), dialect_name)

    def share_weights_from(self, other: Net):
        """Share param data with the same-named layers of ``other`` (Caffe's ShareTrainedLayersWith)."""
        for name, layer in other.layer_dict.items():
            mine = self.layer_dict.get(name)
            if mine is None or not layer.blobs:
                continue
            if len(mine.blobs) != len(layer.blobs):
                raise mine.error(f"Incompatible number of blobs for layer {name}: {len(layer.blobs)} vs "
                                 f"{len(mine.blobs)}")
            for j, (dst, src) in enumerate(zip(mine.blobs, layer.blobs, strict=True)):
                if dst.shape != src.shape:
                    raise mine.error(f"Cannot share param {j} weights from layer '{name}'; shape mismatch. "
                                     f"Source param shape is {list(src.shape)}; target param shape is "
                                     f"{list(dst.shape)}")
                dst.set_data_array(src.data)

    def to_proto(self, form="jacinto", write_diff=False):
        """A NetParameter of this net (every layer, Split layers included) with its blobs."""
        return to_proto(self, form, write_diff)

    def save(self, path, form="jacinto"):
        """Write the weights as a caffemodel (caffe-jacinto's form by default; ``form="bvlc"`` for BVLC)."""
        from .netweights import write_weights_param
        write_weights_param(self.to_proto(form), str(path), form)

    def __repr__(self):
        return f"<caffelite.Net '{self.name}' ({len(self.layers)} layers, phase " \
               f"{'TRAIN' if self.phase == TRAIN else 'TEST'})>"
