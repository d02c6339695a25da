"""The Net: layers wired as Caffe wires them, with pycaffe's Python API.

Construction follows Caffe's ``Net::Init``: filter by phase/level/stages (:func:`graph.filter_net`),
insert Split layers (:func:`graph.insert_splits`), create each layer from the registry, connect bottoms
and tops (in-place tops reuse the bottom's Blob), set up and reshape, record loss weights, share params by
``ParamSpec.name``, and work out which layers and bottoms need backward (:func:`graph.prune_backward`;
each layer learns it as ``layer.needs_backward``). Weight files are read through :mod:`caffelite.io`;
copying by layer name lives in :mod:`caffelite.io.netweights`. ``debug_info`` logs as Caffe's does
(:func:`hooks.add_debug_info_hooks`); a solver tells the net its iteration with :meth:`Net.set_iteration`.
"""

from __future__ import annotations

import collections
import logging

import numpy as np

from . import backend, fusion, graph
from .blob import Blob, BlobSizeError
from .errors import CaffeliteError, NetError
from .extensions import apply_net_extensions
from .hooks import HookSet, add_debug_info_hooks
from .layer import TEST, TRAIN, create_layer
from .net_pycaffe import PycaffeNetMixin
from .net_mixins import GraphAccess, WeightsAndEngines
from .io.netweights import append_params, load_net_param
from .ops import engine as _engine

log = logging.getLogger("caffelite")

__all__ = ["Net", "TRAIN", "TEST"]


def _info(msg, src):
    log.info(msg, extra={"src": src})


def fmt_float(v) -> str:
    """A float as C++ ostream prints it (``%g``): 1 -> "1", 0.5 -> "0.5"."""
    return f"{v:g}"


def _named(layer, fn, bottom, top):
    """Run a layer's setup/reshape; a bare Python error from bad shapes becomes a NetError naming the layer."""
    try:
        fn(bottom, top)
    except CaffeliteError:
        raise
    except BlobSizeError as e:
        raise layer.error(f"refusing to allocate: {e}") from None
    except MemoryError as e:  # a layer's own buffer: still a typed error naming the layer
        shapes = ", ".join(str(list(b.shape)) for b in bottom)
        raise layer.error(f"out of memory setting up the layer ({e or 'MemoryError'}; bottom shapes {shapes})") \
            from None
    except (ValueError, IndexError, TypeError, ZeroDivisionError) as e:
        shapes = ", ".join(str(list(b.shape)) for b in bottom)
        raise layer.error(f"{type(e).__name__}: {e} (bottom shapes {shapes})") from e


class Net(GraphAccess, WeightsAndEngines, PycaffeNetMixin):
    """A Caffe network (pycaffe-compatible).

    ``Net(prototxt, weights, phase)``, ``Net(prototxt, phase, weights=...)`` or ``Net(net_param, phase)``;
    keywords ``level``, ``stages``, ``dtype`` (float32 by default; float64 for gradient checks) and
    ``extensions`` (default True: the registered net extensions, :mod:`caffelite.extensions`, install what the
    prototxt asks for, e.g. quantization; False builds the bare net).
    """

    def __init__(self, model, *args, weights=None, phase=None, level=None, stages=None, dtype=np.float32,
                 extensions=True):
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
        self.iter = None  # the owning solver's iteration (set_iteration)
        self._iter_layers = None  # the layers that read it (found on the first set_iteration)
        self._engine = None  # set below, once the weights are in (caffelite.ops.engine)
        self._build(param, extras, phase, level, stages)
        if any(len(layer.param.blobs) for layer in self.layers):
            # blobs inside the net definition (a NetParameter read from a caffemodel, say) initialise the
            # layers, as in Caffe's Layer constructor; then dropped so the net does not hold them twice
            self.copy_from(self._param)
            for lp in (*self._param.layer, *(layer.param for layer in self.layers)):
                del lp.blobs[:]
        if weights is not None:
            self.copy_from(weights)
        self.engine = None  # CAFFELITE_ENGINE, else "auto"
        if extensions:
            apply_net_extensions(self)

    # ------------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------------
    def _build(self, param, extras, phase, level, stages):
        state = graph.make_state(param, phase, level, stages)
        self.phase = state.phase
        filtered = graph.filter_net(param, state)
        verbose = log.isEnabledFor(logging.INFO)
        if verbose:
            from google.protobuf import text_format
            _info("Initializing net from parameters: \n" + text_format.MessageToString(filtered), "net.cpp:53")
        self._param = graph.insert_splits(filtered)
        memory = 0
        self.name = self._param.name
        self.force_backward = bool(self._param.force_backward)
        graph.check_math_types(self._param, prefix="default_")
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
            graph.check_math_types(lp)
            if verbose:
                _info(f"Creating layer {lp.name}", "layer_factory.hpp:77")
                _info(f"Creating Layer {lp.name}", "net.cpp:86")
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
                if verbose:
                    _info(f"{lp.name} <- {bname}", "net.cpp:408")
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
                if verbose:
                    ip = j < len(lp.bottom) and lp.bottom[j] == tname
                    _info(f"{lp.name} -> {tname}" + (" (in-place)" if ip else ""),
                          "net.cpp:369" if ip else "net.cpp:382")
            self._bottom_vecs.append(bottoms)
            self._top_vecs.append(tops)
            self._bottom_ids.append(list(lp.bottom))
            self._top_ids.append(list(lp.top))
            self._bottom_need_backward.append(bneed)
            layer.check_blob_counts(bottoms, tops)
            _named(layer, layer.setup, bottoms, tops)
            self._convert_param_dtype(layer)
            _named(layer, layer.reshape, bottoms, tops)
            self._setup_loss_weights(layer, lp)
            need_backward |= self._setup_param_backward(layer)
            for tname in lp.top:
                self._blob_need_backward[tname] = need_backward
            self._layer_need_backward.append(need_backward)
            if verbose:
                _info(f"Setting up {lp.name}", "net.cpp:124")
                for j, t in enumerate(tops):
                    _info(f"Top shape: {' '.join(str(d) for d in t.shape)}{' ' if t.shape else ''}({t.count})",
                          "net.cpp:131")
                    if layer.loss_weights[j]:
                        _info(f"    with loss weight {fmt_float(layer.loss_weights[j])}", "net.cpp:134")
                    memory += t.count * self.dtype.itemsize
                _info(f"Memory required for data: {memory}", "net.cpp:139")
        self._analyse_backward()
        append_params(self)
        if self._param.debug_info:
            add_debug_info_hooks(self)
        self.outputs = sorted(available)  # Caffe keeps them in a std::set: sorted by name
        self.inputs = list(self._input_names)
        self.layer_dict = collections.OrderedDict(zip(self._layer_names, self.layers, strict=True))
        self.top_names = collections.OrderedDict(zip(self._layer_names, self._top_ids, strict=True))
        self.bottom_names = collections.OrderedDict(zip(self._layer_names, self._bottom_ids, strict=True))
        self.params = collections.OrderedDict(
            (n, l.blobs) for n, l in zip(self._layer_names, self.layers, strict=True) if len(l.blobs))
        self._blob_loss_weights = {self._top_ids[i][j]: w for i, lt in enumerate(self._loss_tops) for j, w in lt}
        #: inference fusion of conv -> BatchNorm/Scale -> ReLU chains (caffelite.fusion); TEST phase only
        self.fusion = self.phase == TEST
        self._chains = fusion.plan(self) if self.phase == TEST else {}
        self._fused_chains = []  # chains the last forward ran fused (re-run unfused before a backward)
        if verbose:
            for name in self.outputs:
                _info(f"This network produces output {name}", "net.cpp:244")
            _info("Network initialization done.", "net.cpp:257")

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
        graph.prune_backward(self._layer_need_backward, self._bottom_need_backward, self._top_ids,
                             self._bottom_ids, [{j for j, _ in lt} for lt in self._loss_tops])
        if log.isEnabledFor(logging.INFO):
            for li in range(len(self.layers) - 1, -1, -1):
                need = self._layer_need_backward[li]
                _info(f"{self._layer_names[li]} {'needs' if need else 'does not need'} backward computation.",
                      "net.cpp:200" if need else "net.cpp:202")
        if self.force_backward:
            graph.force_backward(self.layers, self._layer_need_backward, self._bottom_need_backward)
        self._no_backward = graph.layers_without_backward(self.layers, self._layer_need_backward,
                                                          self._bottom_need_backward, self._bottom_ids)
        for layer, need in zip(self.layers, self._layer_need_backward, strict=True):
            layer.needs_backward = need

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
            _named(layer, layer.reshape, b, t)

    def _forward_from_to(self, start, end):
        """Run layers start..end (inclusive); return the weighted loss of those layers."""
        loss = 0.0
        h = self.hooks
        if _engine.run_whole_net(self, start, end):  # a whole-net engine (int8 for quantized nets) ran it all
            return loss
        _engine.begin_forward(self)
        for fn in h.forward_start:
            fn(self)
        chains = self._chains if (self.fusion and not h.before_forward and not h.after_forward) else {}
        self._fused_chains = []
        i = start
        while i <= end:
            ch = chains.get(i)
            if ch is not None and ch.last <= end and fusion.run(self, ch):
                self._fused_chains.append(ch)
                i = ch.last + 1
                continue
            layer, b, t = self.layers[i], self._bottom_vecs[i], self._top_vecs[i]
            _named(layer, layer.reshape, b, t)  # Caffe's Layer::Forward reshapes first
            for fn in h.before_forward:
                fn(self, i, layer, b, t)
            layer.forward(b, t)
            for fn in h.after_forward:
                fn(self, i, layer, b, t)
            for j, w in self._loss_tops[i]:
                top = t[j]
                top.diff[...] = w  # the top's diff carries the loss weight into backward (Caffe)
                loss += w * float(top.data.sum())
            i += 1
        for fn in h.forward_end:
            fn(self)
        return loss

    def _refresh_fused(self):
        """Run the chains the last forward fused layer by layer, so each layer holds the state its backward
        reads (the convolution's bottom is unchanged: a blob read by two layers goes through a split)."""
        for ch in self._fused_chains:
            for k in range(ch.conv, ch.last + 1):
                layer, b, t = self.layers[k], self._bottom_vecs[k], self._top_vecs[k]
                _named(layer, layer.reshape, b, t)
                layer.forward(b, t)
        self._fused_chains = []

    def _backward_from_to(self, start, end):
        if self._fused_chains:
            self._refresh_fused()
        h = self.hooks
        for fn in h.backward_start:
            fn(self)
        for i in range(start, end - 1, -1):
            if not self._layer_need_backward[i]:
                continue
            if i in self._no_backward:
                raise self._no_backward[i]
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
        self._check_inputs(inputs)
        for name, arr in inputs.items():
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

    def set_iteration(self, it):
        """Tell the net (and the layers that read it) the owning solver's iteration, before its forwards.

        caffe-jacinto's CUDNN BatchNorm overwrites its running statistics throughout iteration 0 and blends
        them afterwards (docs/jacinto-spec.md §d.3), so with ``iter_size > 1`` or after a resume it must know the
        solver's iteration, not count its own forwards. ``None`` (the default) lets such layers count.
        """
        self.iter = None if it is None else int(it)
        if self._iter_layers is None:  # found once: this runs before every forward of a training step
            self._iter_layers = [layer for layer in self.layers if hasattr(layer, "solver_iter")]
        for layer in self._iter_layers:
            layer.solver_iter = self.iter

    def add_hook(self, event, fn):
        """Call ``fn`` at ``event`` (see :mod:`caffelite.hooks`)."""
        self.hooks.add(event, fn)

    def remove_hook(self, event, fn):
        self.hooks.remove(event, fn)

    def __repr__(self):
        return f"<caffelite.Net '{self.name}' ({len(self.layers)} layers, phase " \
               f"{'TRAIN' if self.phase == TRAIN else 'TEST'})>"
