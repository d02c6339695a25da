"""Integer inference for a quantized net: what caffe-jacinto's float simulation computes, in integers.

jacinto (and :class:`~caffelite.jacinto.quantization.QuantizationHook`) simulates dynamic fixed point: float
blobs are rounded to ``q/scale`` grids (docs/jacinto-spec.md §b.5). :class:`Int8Net` runs the same net with the
integers ``q``:

- a Convolution with its merged in-place BatchNorm / Scale / ReLU followers (§b.3: only the chain's last output
  is quantized) becomes one integer convolution (int32 sums of activation x weight integers, exact) and a
  per-channel epilogue in float64 (:mod:`caffelite.ops.int8`): input, weight and output scales, the weights'
  zero point (jacinto's default weights are 12-bit with an offset; the correction uses the window sums of the
  activations), the bias and the folded normalisation, then ReLU, the output offset, clip and jacinto's
  rounding. The scales are jacinto's own (``scale_target``; with ``power2_scale_*`` they are powers of two).
  Weights are centred on the integer a float zero quantizes to (pruned weights stay zero); the kernel is the
  u8 x s8 one (vpdpbusd) when the input is unsigned 8-bit and the weights fit int8, else 16-bit lanes
  (vpdpwssd), and where enough weight pairs are zero a sparse variant is timed against it (the faster kept);
  The float simulation sums the same products exactly too (``exact_sums``), then rounds the sum to float32 and
  applies the bias and the normalisation layer by layer in float32, and jacinto's float32 weights are the
  offset integers rounded to float32; so the two can differ only where one of those float32 roundings moves a
  value across a rounding boundary of the output grid (:func:`compare` counts those elements);
- MAX Pooling, ArgMax, Split and a standalone ReLU only compare or select: they run on the integers and a
  lookup table requantizes to the output's grid (exact); a two-input Eltwise SUM is a 2-D lookup table of the
  float32 sum of the two dequantized values (exact);
- every other layer (Deconvolution, the Bias on the float input, average pooling, ...) runs its float forward
  on the dequantized inputs, which are bit for bit the simulation's blobs, and its flagged outputs are
  quantized as jacinto does (exact: the same code on the same values).

With ``native`` and the compiled glue kernels (:mod:`caffelite.ops.int8_glue`) built, MAX pooling, ArgMax, the
Eltwise table, a depthwise Deconvolution (the same float32 arithmetic as the float path, or exact int32 sums
where they provably give the same values; fused with a following ArgMax that alone reads it) and the float
Bias with its quantizer run compiled, with the same integers; without them, on NumPy as above.

The ranges must be known and fixed: measured by calibration forwards and frozen (``--quant-ranges freeze``),
loaded (``--quant-ranges load FILE``) or taken from a quantized caffemodel; :func:`check_ready` says what is
missing in one line. Each forward follows the hook's per-forward steps (flags at ``quantization_start``, the
parameters from the frozen ranges, the forward counter). jacinto quantizes the weights at the end of forward
``quantization_start``, so its forward ``quantization_start`` itself still uses the float weights; this engine
quantizes them first (in place, as jacinto leaves them) and always computes with the quantized weights.
Which layer runs how (the plan) is decided in :mod:`caffelite.jacinto.int8_plan`.
"""

from __future__ import annotations

import numpy as np

from .. import log as glog
from ..ops import int8 as i8op
from ..ops import int8_glue as glue
from .int8_grid import Int8Error, QGrid, check_ready, find_hook, simulation_ints  # noqa: F401 (public names)
from .int8_glue_steps import Deferred, GlueSteps, LazyInts, unfused_steps
from .int8_plan import out_grid, plan_steps


class Int8Net(GlueSteps):
    """Runs a quantized TEST net (a :class:`~caffelite.net.Net` with its quantization hook) in integers.

    ``native``: use the compiled integer kernel when it takes a layer (default), else the NumPy reference.
    After :meth:`forward`, :attr:`ints` maps blob names to the integers of the quantized blobs and
    ``sparse``: None (default): where enough weight pairs are zero (:func:`caffelite.ops.int8.sparse_worthwhile`)
    the first forwards time the dense and the sparse integer kernel and later ones run the faster
    (:class:`caffelite.ops.int8.AutoConv`); True/False forces one. The integers are the same either way.
    :attr:`engine_used` maps layer names to "int8" / "int8-sparse" (integer convolution, dense or sparse kernel),
    "int8-lut" (integer compare/select or table) or "float-exact" (float forward on the simulation's exact
    values, on NumPy or compiled with the same float32 operations); a Deconvolution on exact int32 sums is
    "int8". ``fuse_argmax``: a Deconvolution whose only reader is an ArgMax computes the labels directly,
    without storing its integers: :attr:`ints` computes them when they are first read (forwards with a
    ``teacher`` run the two unfused).
    ``compiled``: run the non-convolution steps in the compiled glue kernels (default: with ``native``, when
    built; False: their NumPy steps, e.g. to compare). ``fuse_packing``: a convolution whose output only the next
    convolution reads, both on the sparse kernels, writes it straight into that convolution's planar uint8 input
    (:meth:`caffelite.ops.int8.PackedConv.packed_input`) instead of int16 that the next one packs again;
    :attr:`ints` reads such a blob from those planes, valid until the next forward (forwards with a ``teacher``
    run unfused).
    """

    def __init__(self, net, hook=None, native=True, isa=None, sparse=None, fuse_argmax=True, compiled=None,
                 fuse_packing=True):
        self.net = net
        self.sparse = sparse  # None: per layer, the sparse kernel where enough weight pairs are zero
        self.hook = check_ready(net, hook)
        self.native = bool(native)
        self.fuse_argmax = bool(fuse_argmax)
        self.fuse_packing = bool(fuse_packing)
        self._fusion_plans = {}  # id(steps) -> (steps, {producer conv's first layer: the consumer conv step})
        self._fuse = {}
        self._prepacked = {}  # this forward: consumer conv's first layer -> the input shape its producer wrote
        self._forward_id = 0
        self.planes_written = []  # last forward: convolutions that wrote the next one's planar input
        # the compiled non-convolution steps
        self.glue = glue.available() and (self.native if compiled is None else bool(compiled))
        self.isa = isa
        self.ties = self.hook.ties
        self._plans = {}
        self._state_keys = {}  # the hook's ParamState -> plan key (see _begin)
        self._auto_times = {}
        self._steps = None
        self.ints = {}
        self.engine_used = {}
        self._logged = False
        self._warned_hooks = False

    # -- per-forward hook steps ------------------------------------------------------------------------
    def _begin(self):
        h = self.hook
        k = h.infer_count
        if k == h.start:  # flags are switched on at forward `start` (ranges loaded into a fresh net: this forward)
            h.enable_selected_layers(k)
        h.set_params(k)
        # the hook's remembered parameter set (frozen ranges): the same object means the same ranges and the same
        # quantization_param of every layer (but quantized_infer_count), so the range check passed and the plan
        # key is known
        state = getattr(h, "param_state", None)
        key = self._state_keys.get(state) if state is not None else None
        if key is None:
            self._check_ranges()
            # jacinto's scale_applied chaining makes some scales alternate between two float32 neighbours from one
            # forward to the next: plans are kept per parameter set
            key = tuple((q.quantize, q.scale_target, q.offset, q.bitwidth, q.unsigned_quant)
                        for ly in self.net.layers if ly.param.HasField("quantization_param")
                        for q in (*ly.param.quantization_param.qparam_w, *ly.param.quantization_param.qparam_out))
            if state is not None:
                self._state_keys[state] = key
                while len(self._state_keys) > 16:
                    self._state_keys.pop(next(iter(self._state_keys)))
        steps = self._plans.get(key)
        if steps is None:
            self._quantize_weights()
            steps = self._plans[key] = self._plan()
            while len(self._plans) > 4:
                self._plans.pop(next(iter(self._plans)))
            if not self._logged:
                self._log_plan(steps)
                self._logged = True
        self._steps = steps

    def _check_ranges(self):
        """Every quantized output needs a measured range: a zero one means the ranges came from another net."""
        h = self.hook
        for i, ly in enumerate(self.net.layers):
            if not ly.param.HasField("quantization_param"):
                continue
            for j, qo in enumerate(ly.param.quantization_param.qparam_out):
                if qo.quantize and j < len(h.r_out[i]) and not np.any(h.r_out[i][j]):
                    raise Int8Error(f"net '{self.net.name}': no quantization range for the output of layer "
                                    f"'{ly.param.name}' (ranges of another net? layer names or blob counts "
                                    "differ): calibrate this net or load ranges saved from it")

    def _quantize_weights(self):
        """Quantize in place the flagged weights that are not on their grid yet: jacinto does it once, at the end
        of forward ``quantization_start`` (§b.5); this engine computes with the quantized weights from the start."""
        h = self.hook
        for ly in self.net.layers:
            if not ly.param.HasField("quantization_param"):
                continue
            qp = ly.param.quantization_param
            for b, qw in enumerate(qp.qparam_w):
                if not qw.quantize or b >= len(ly.blobs):
                    continue
                w = ly.blobs[b].data
                y = w.astype(np.float64) * np.float32(qw.scale_target) + np.float32(qw.offset)
                if qp.quantized_infer_count == 0 or (y.size and np.abs(y - np.rint(y)).max() > 1e-2):
                    h._apply(w, qw, qp.rounding_scheme, b == 0)

    def _end(self):
        self.hook.infer_count += 1  # ranges are frozen: nothing else of FinishQuantization applies

    # -- planning --------------------------------------------------------------------------------------
    def _out_grid(self, i, j):
        return out_grid(self.net, i, j)

    def _plan(self):
        """The steps for the current quantization parameters (:func:`caffelite.jacinto.int8_plan.plan_steps`)."""
        return plan_steps(self.net, self.ties, native=self.native, sparse=self.sparse, auto_times=self._auto_times,
                          fuse_argmax=self.fuse_argmax, compiled=self.glue)

    def _log_plan(self, steps):
        kinds = {"pool": "int8-lut", "lut": "int8-lut", "split": "int8-lut", "argmax": "int8-lut",
                 "eltwise": "int8-lut", "float": "float-exact", "bias": "float-exact"}
        self.engine_used = {}
        for st in steps:
            if st[0] == "deconv":  # a fused ArgMax is still a select on the integers
                kind = "int8" if st[3].mode == "int" else "float-exact"
                for k in range(st[1], st[2] + 1):
                    self.engine_used[self.net.layers[k].param.name] = kind if k == st[1] else "int8-lut"
                continue
            kind = _conv_kind(st[3]) if st[0] == "conv" else kinds[st[0]]
            for k in range(st[1], st[2] + 1):
                self.engine_used[self.net.layers[k].param.name] = kind
        counts = {}
        for v in self.engine_used.values():
            counts[v] = counts.get(v, 0) + 1
        glog.info(f"int8 engine for net '{self.net.name}': " + ", ".join(f"{v} {c} layers" for v, c in
                                                                          sorted(counts.items())) +
                  f" ({i8op.info() + '; ' + glue.info() if self.native else 'NumPy reference'})")
        for name, v in self.engine_used.items():
            glog.info(f"  {name}: {v}")

    # -- forward ---------------------------------------------------------------------------------------
    def run_step(self, st, ints):
        """Run one planned step ``st`` (``self._steps``) on ``ints`` ({blob: (integers, grid)}), in place."""
        kind, i, last = st[0], st[1], st[2]
        net = self.net
        bots, tops = net.bottom_ids(i), net.top_ids(last)
        if kind == "conv":
            ints[tops[0]] = (self._conv(st, ints, bots[0]), self._out_grid(last, 0))
        elif kind == "split":
            for t in tops:
                ints[t] = ints[bots[0]]
        elif kind == "pool" and self.glue and self._glue_pool(st, ints):
            pass
        elif kind in ("lut", "pool"):
            q = ints[bots[0]][0]
            if kind == "pool":
                q = self._run_on_ints(i, q)
            ints[tops[0]] = (st[3][q.astype(np.intp) - st[4]], self._out_grid(i, 0))
        elif kind == "argmax":
            if not (self.glue and self._glue_argmax(i, ints[bots[0]][0])):
                self._run_on_ints(i, ints[bots[0]][0])
            for t in tops:
                ints.pop(t, None)
        elif kind == "eltwise":
            lut, g1, g2 = st[3], st[4], st[5]
            if self.glue:
                out = glue.lut2(ints[bots[0]][0], ints[bots[1]][0], lut, g1.lo, g2.lo)
            else:
                q1 = ints[bots[0]][0].astype(np.intp) - g1.lo
                q2 = ints[bots[1]][0].astype(np.intp) - g2.lo
                out = lut[q1, q2]
            ints[tops[0]] = (out, self._out_grid(i, 0))
        elif kind == "deconv":
            self._glue_deconv(st, ints)
        elif kind == "bias" and self._glue_bias(i, ints):
            pass
        else:
            self._float_step(i, ints)

    def _conv(self, st, ints, bottom):
        """The integer convolution step ``st`` on blob ``bottom`` of ``ints``, or on the planes the convolution
        before wrote (:attr:`_prepacked`): its output, or, when it writes the next convolution's planes
        (:attr:`_fuse`), a :class:`Deferred` read of those."""
        pc = st[3]
        shape_in = self._prepacked.pop(st[1], None)
        prepacked = shape_in is not None
        if not prepacked:
            q = ints[bottom][0]
            if not self.native:
                return i8op.conv_int_reference(q, pc.w, None, pc.g, pc.group, pc.rq)
            shape_in = q.shape
        nxt = self._fuse.get(st[1])
        prod = _settled(pc, sparse_only=prepacked) if nxt is not None or prepacked else None
        cons = _settled(nxt[3], sparse_only=True) if nxt is not None and prod is not None else None
        tgt = None
        if cons is not None:
            shape = (shape_in[0], prod.w.shape[0], *prod.g.out_shape(*shape_in[2:]))
            tgt = cons.packed_input(shape, self.isa)
        if prepacked:
            out = prod.forward_prepacked(shape_in, isa=self.isa, pack_into=tgt)
        elif tgt is not None:
            out = prod.forward(q, isa=self.isa, pack_into=tgt)
        else:
            out = pc.forward(q, isa=self.isa)
        if out is not None:  # not written into planes (another kernel, or no planes to write)
            return out
        self._prepacked[nxt[1]] = shape
        self.planes_written.append(self.net.layers[st[1]].param.name)
        return Deferred(_planes_reader(self, tgt, shape))

    def weight_zeros(self) -> dict:
        """{convolution layer name: the fraction of zeros among the integer weights its kernel runs} for the
        current plan's convolutions. jacinto's weight offset moves a pruned float weight off zero once it is
        quantized (the float blob then has no zeros left); the integer weights keep it at zero."""
        out = {}
        for st in self._steps or ():
            if st[0] == "conv":
                pc = _settled(st[3]) or st[3].sparse_conv  # an AutoConv still timing: its sparse kernel's weights
                out[self.net.layers[st[1]].param.name] = 1.0 - np.count_nonzero(pc.w) / max(1, pc.w.size)
        return out

    def _fusions(self, steps):
        """{first layer of a conv step: the conv step that alone reads its output} (:attr:`fuse_packing`)."""
        plan = self._fusion_plans.get(id(steps))
        if plan is None or plan[0] is not steps:
            net = self.net
            readers = {}
            for st in steps:
                for b in net.bottom_ids(st[1]):
                    readers.setdefault(b, []).append(st)
            m = {}
            for st in steps:
                if st[0] != "conv":
                    continue
                t = net.top_ids(st[2])[0]
                r = readers.get(t, [])
                if t not in net.outputs and len(r) == 1 and r[0][0] == "conv":
                    m[st[1]] = r[0]
            plan = self._fusion_plans[id(steps)] = (steps, m)
        return plan[1]

    def forward(self, teacher=None, **inputs):
        """Run the net in integers on ``inputs`` (name=array); returns the net outputs (float, as Net.forward).

        ``teacher``: optional {blob: integers} (e.g. :func:`simulation_ints` of the float simulation): each
        step then reads the teacher's integers for its inputs, and :attr:`mismatch` maps each blob a step
        computed to (elements differing from the teacher's, elements): the per-layer exactness check.
        """
        net = self.net
        for name, arr in inputs.items():
            blob = net.blobs[name]
            arr = np.asarray(arr, dtype=net.dtype)
            if tuple(arr.shape) != blob.shape:
                blob.reshape(arr.shape)
            blob.data[...] = arr
        self._begin()
        ints = {}  # blob name -> (integers, grid)
        mismatch = {}
        steps = self._steps if teacher is None else [u for st in self._steps for u in unfused_steps(st)]
        self._forward_id += 1
        self._prepacked = {}
        self.planes_written = []
        self._fuse = self._fusions(steps) if teacher is None and self.native and self.fuse_packing else {}
        watch = _watchers(net)
        others = [] if self._warned_hooks else _others(net, self.hook)
        if others:
            self._warned_hooks = True
            glog.warning(f"net '{net.name}': the int8 engine does not run per-layer forward hooks that are not "
                         f"observers ({', '.join(others)}): its integer steps neither call them nor write the "
                         "float blobs they would read; run the float simulation (engine dense) to apply them")
        for st in steps:
            kind, i, last = st[0], st[1], st[2]
            bots, tops = net.bottom_ids(i), net.top_ids(last)
            if teacher is not None:
                for b in bots:
                    if b in ints and b in teacher:
                        ints[b] = (teacher[b], ints[b][1])
            if watch:  # a step's time goes to its first layer; the layers it merges follow at once
                _notify(net, watch[0], i)
                self.run_step(st, ints)
                _notify(net, watch[1], i)
                for k in range(i + 1, last + 1):
                    _notify(net, watch[0], k)
                    _notify(net, watch[1], k)
            else:
                self.run_step(st, ints)
            if teacher is not None:
                for t in tops:
                    if t in ints and t in teacher and kind != "split":
                        a = ints[t][0]
                        mismatch[t] = (int(np.count_nonzero(a != teacher[t])), int(a.size))
        self._end()
        for st in self._steps:  # the dense/sparse choice of timed convolutions is made during the first forwards
            if st[0] == "conv":
                kind = _conv_kind(st[3])
                for k in range(st[1], st[2] + 1):
                    self.engine_used[net.layers[k].param.name] = kind
        self.ints = LazyInts({k: v[0] for k, v in ints.items()})
        self.mismatch = mismatch
        out = {}
        for name in net.outputs:
            if name in ints:
                net.blobs[name].data[...] = ints[name][1].dequantize(ints[name][0])
            out[name] = net.blobs[name].data
        return out

    def _run_on_ints(self, i, q):
        """A compare/select layer (MAX pooling, ArgMax) run on the integers themselves (exact in float32: the
        order of the integers is the order of their dequantized values, ties included)."""
        layer, b, t = self.net.layers[i], self.net.bottom_vecs(i), self.net.top_vecs(i)
        k = _tiling_pool(layer, q.shape)
        if k:  # non-overlapping windows tiling the input exactly: element-wise maxima of strided views, in int16
            out = q[:, :, ::k[0], ::k[1]].copy()
            for i in range(k[0]):
                for j in range(k[1]):
                    if i or j:
                        np.maximum(out, q[:, :, i::k[0], j::k[1]], out=out)
            layer.reshape(b, t)
            if t[0].shape == out.shape:
                return out
        b[0].data[...] = q
        layer.reshape(b, t)
        layer.forward(b, t)
        return t[0].data.astype(np.int16) if self.net.layers[i].type != "ArgMax" else t[0].data

    def _float_step(self, i, ints):
        """The layer's float forward on the dequantized inputs; flagged outputs are quantized (§b.5)."""
        net = self.net
        layer, b, t = net.layers[i], net.bottom_vecs(i), net.top_vecs(i)
        for j, name in enumerate(net.bottom_ids(i)):
            if name in ints:
                q, g = ints[name]
                b[j].data[...] = g.dequantize(q)
        layer.reshape(b, t)
        layer.forward(b, t)
        for j, name in enumerate(net.top_ids(i)):
            g = self._out_grid(i, j)
            if g is not None:
                ints[name] = (g.quantize(t[j].data, self.ties), g)
            else:
                ints.pop(name, None)


def _tiling_pool(layer, shape):
    """(kh, kw) of a MAX Pooling whose windows tile its input exactly (kernel = stride, no pad, sizes divisible,
    not global), else None."""
    if layer.type != "Pooling" or len(shape) != 4:
        return None
    pp = layer.param.pooling_param
    if pp.global_pooling or pp.pool != pp.MAX:
        return None
    kh, kw = pp.kernel_h or pp.kernel_size, pp.kernel_w or pp.kernel_size
    sh, sw = pp.stride_h or pp.stride, pp.stride_w or pp.stride
    pad = pp.pad_h or pp.pad_w or pp.pad
    if not kh or not kw or (kh, kw) != (sh, sw) or pad or shape[2] % kh or shape[3] % kw:
        return None
    return kh, kw


def _watchers(net):
    """(before, after) per-layer forward hooks marked ``observer`` (timers such as ``caffelite time``'s), or None.
    They are called around each step; hooks that may change blobs or weights do not apply to integer steps."""
    before = [fn for fn in net.hooks.before_forward if getattr(fn, "observer", False)]
    after = [fn for fn in net.hooks.after_forward if getattr(fn, "observer", False)]
    return (before, after) if before or after else None


def _others(net, own):
    """Names of the per-layer forward hooks not marked ``observer`` (those the integer steps cannot apply), other
    than those of the quantization hook ``own`` (whose simulation the integer steps replace)."""
    return [getattr(fn, "__qualname__", repr(fn)) for fn in (*net.hooks.before_forward, *net.hooks.after_forward)
            if not getattr(fn, "observer", False) and getattr(fn, "__self__", None) is not own]


def _notify(net, hooks, i):
    for fn in hooks:
        fn(net, i, net.layers[i], net.bottom_vecs(i), net.top_vecs(i))


def _conv_kind(pc):
    """"int8" or "int8-sparse" (the kernel a convolution runs), "int8-auto" while its choice is being timed."""
    if isinstance(pc, i8op.AutoConv) and pc.choice is None:
        return "int8-auto"
    return "int8-sparse" if pc.sparse else "int8"


def run_net(net, start, end):
    """The whole-net entry point of the ``int8`` engine (:func:`caffelite.ops.engine.register_net`): run the
    forward of ``net`` in integers on the inputs already in its blobs; sets ``engine_used`` on every layer."""
    if start != 0 or end != len(net.layers) - 1:
        raise Int8Error(f"net '{net.name}': the int8 engine runs whole forwards only (no start/end layer)")
    eng = getattr(net, "net_engine_state", None)
    if not isinstance(eng, Int8Net):
        eng = Int8Net(net)
        net.net_engine_state = eng
    eng.forward()
    for ly in net.layers:
        ly.engine_used = eng.engine_used.get(ly.param.name)
    return True


def _settled(pc, sparse_only=False):
    """The PackedConv a conv step runs now: an AutoConv's chosen kernel (None while it is still timing both, or,
    with ``sparse_only``, when it chose dense), else ``pc`` itself (None with ``sparse_only`` if it is dense)."""
    if isinstance(pc, i8op.AutoConv):
        if pc.choice is None or (sparse_only and not pc.choice):
            return None
        return pc.sparse_conv if pc.choice else pc.dense
    return None if sparse_only and not pc.sparse else pc


def _planes_reader(eng, tgt, shape):
    """A function returning, as int16 (N, C, H, W), the integers a convolution wrote into planes ``tgt``
    (:meth:`caffelite.ops.int8.PackedConv.packed_input`) during forward ``eng._forward_id``; an error after a
    later forward has written the planes again."""
    planes, ps, row, off = tgt
    n, c, h, w = shape
    fid = eng._forward_id

    def read():
        if eng._forward_id != fid:
            raise Int8Error(f"net '{eng.net.name}': these integers were overwritten by a later forward of the int8 "
                            "engine: read Int8Net.ints before the next forward (or pass fuse_packing=False)")
        flat = planes.reshape(-1)[off:]
        view = np.lib.stride_tricks.as_strided(flat, (n, c, h, w), (c * ps, ps, row, 1), writeable=False)
        return view.astype(np.int16)
    return read
