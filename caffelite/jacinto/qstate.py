"""The range state of a quantization hook beyond the forward pass (beyond caffe-jacinto): freezing,
saving and loading the running ranges (``--quant-ranges``), seeding them from a quantized caffemodel, the snapshot
state that makes a resumed quantized run exact, and sharing the root's ranges in a data-parallel run.

:class:`RangeState` is a mixin of :class:`~caffelite.jacinto.quantization.QuantizationHook`; it uses the hook's
``net``, ``graph``, ``start``, ``infer_count``, ``frozen``/``freeze_at``, ``flags_on`` and the range tables
``r_in``/``r_out``/``r_w`` (float64 host arrays ``[count, 2]`` of (min, max) per bottom / top / param blob).
"""

from __future__ import annotations

import json

import numpy as np

from .. import backend
from ..errors import NetError


class RangeState:
    """Range persistence and sharing for :class:`~caffelite.jacinto.quantization.QuantizationHook`."""

    def set_ranges_from_layers(self, layer_params):
        """Ranges from the qparam min/max of LayerParameters matched by name (a quantized caffemodel's layers,
        say: jacinto itself reads them only from the target prototxt). Returns the number of layers used."""
        index = {n: i for i, n in enumerate(self.graph.names)}
        used = 0
        for lp in layer_params:
            i = index.get(lp.name)
            if i is None or not lp.HasField("quantization_param"):
                continue
            qp = lp.quantization_param
            for arr, group in ((self.r_in[i], qp.qparam_in), (self.r_w[i], qp.qparam_w),
                               (self.r_out[i], qp.qparam_out)):
                for j, q in enumerate(group):
                    if j < len(arr):
                        arr[j] = (q.min, q.max)
            used += 1
        return used

    def load_ranges_from_caffemodel(self, path, freeze=True):
        """Seed the ranges from a quantized caffemodel written by jacinto or caffelite (beyond jacinto)."""
        from .. import io
        n = self.set_ranges_from_layers(io.read_weights(str(path)).layer)
        self.infer_count = max(self.infer_count, self.start)
        if freeze:
            self.freeze_ranges(True)
        return n

    def freeze_ranges(self, frozen=True, after=None):
        """Stop (or resume) updating the running ranges, now or ``after`` that many forwards have measured them.

        Frozen ranges make every later batch quantize with the same parameters, whatever the image order.
        """
        if after is not None:
            self.freeze_at = int(after)
            self.frozen = self.infer_count >= self.freeze_at
        else:
            self.freeze_at = None
            self.frozen = bool(frozen)

    def ranges(self):
        """``{layer name: {"in": [[min, max]...], "w": [...], "out": [...]}}``."""
        return {self.graph.names[i]: {"in": self.r_in[i].tolist(), "w": self.r_w[i].tolist(),
                                      "out": self.r_out[i].tolist()} for i in range(len(self.net.layers))}

    def set_ranges(self, ranges):
        """Load :meth:`ranges` output (layers absent from it keep their values)."""
        for i, name in enumerate(self.graph.names):
            r = ranges.get(name)
            if r is None:
                continue
            for key, arr in (("in", self.r_in[i]), ("w", self.r_w[i]), ("out", self.r_out[i])):
                vals = np.asarray(r.get(key, []), np.float64).reshape(-1, 2)
                if len(vals) == len(arr):
                    arr[...] = vals

    def save_ranges(self, path):
        """Write the running ranges (and the forward counter) as JSON."""
        from ..io.files import atomic_write
        atomic_write(path, json.dumps({"infer_count": self.infer_count, "ranges": self.ranges()}, indent=1))

    def load_ranges(self, path, freeze=True):
        """Read :meth:`save_ranges` output; by default freeze them and skip the measuring forwards.

        A net that has not reached ``quantization_start`` yet moves there, whatever counter the file holds: its
        next forward is then jacinto's forward ``quantization_start`` after calibration (flags switched on,
        weights quantized at its end) with these ranges. A net already past it keeps its counter (its flags are
        on and its weights quantized)."""
        with open(path) as f:
            data = json.load(f)
        self.set_ranges(data["ranges"])
        # not the file's counter: the flags switch on only at forward == quantization_start (§b.3)
        self.infer_count = max(self.infer_count, self.start)
        if freeze:
            self.freeze_ranges(True)

    # -- snapshot state (beyond jacinto: a resumed quantized training run continues exactly) ----------
    def get_state(self):
        """The forward counter, the range tables and every layer's runtime quantization_param (flags and the
        persistent scale_applied), for the solver's snapshot sidecar."""
        qparams = {ly.param.name: np.frombuffer(ly.param.quantization_param.SerializeToString(), np.uint8)
                   for ly in self.net.layers if ly.param.HasField("quantization_param")}
        return {"infer_count": self.infer_count, "frozen": self.frozen, "freeze_at": self.freeze_at,
                "flags_on": list(self.flags_on), "tables": self.range_tables(), "qparams": qparams}

    def set_state(self, state):
        """Restore :meth:`get_state`'s dict into this (freshly built) net's hook."""
        tables = self.range_tables()
        if len(state["tables"]) != len(tables):
            raise NetError(f"quantization state: {len(state['tables'])} range tables for net '{self.net.name}', "
                           f"which has {len(tables)} (the snapshot belongs to another net)")
        for a, v in zip(tables, state["tables"], strict=True):
            a[...] = np.asarray(v, np.float64).reshape(a.shape)
        self.infer_count, self.frozen = int(state["infer_count"]), bool(state["frozen"])
        self.freeze_at = None if state["freeze_at"] is None else int(state["freeze_at"])
        self.flags_on = [bool(f) for f in state["flags_on"]]
        for ly in self.net.layers:
            raw = state["qparams"].get(ly.param.name)
            ly.param.ClearField("quantization_param")
            if raw is not None:
                ly.param.quantization_param.ParseFromString(np.asarray(raw, np.uint8).tobytes())

    # -- data-parallel runs ---------------------------------------------------------------------------
    def range_tables(self):
        """Every running-range array of this hook (host float64, updated in place by :meth:`share_ranges`)."""
        return [a for group in (self.r_in, self.r_out, self.r_w) for a in group if a.size]

    def share_ranges(self):
        """Replace the ranges by the root's in a data-parallel run (each replica measured its own batch): the
        ranges, hence every scale and offset, are decided once. A no-op on one device."""
        from .. import parallel
        from ..parallel.comm import flatten, unflatten
        if parallel.current() is None:
            return
        tables = self.range_tables()
        if not tables:
            return
        flat = backend.current_xp().asarray(flatten(tables, np))  # NCCL needs device arrays
        parallel.broadcast_state("quantization ranges", [flat])
        unflatten(backend.to_numpy(flat), tables)

    def share_weights(self):
        """Broadcast the weights quantized with STOCHASTIC rounding during this forward (TRAIN nets, at
        forward ``quantization_start``): each replica drew its own random numbers. A no-op on one device."""
        touched, self._touched = list({id(a): a for a in self._touched}.values()), []
        from .. import parallel
        if touched and parallel.current() is not None:
            parallel.broadcast_state("quantized weights", touched)


def quant_ranges_option(hooks, mode, path=None, calibration=None):
    """The ``--quant-ranges freeze|save FILE|load FILE`` option on a list of quantization hooks.

    * ``freeze``: measure the ranges on the first ``calibration`` forwards (default: quantization_start, i.e.
      only the float forward 0), then keep them fixed;
    * ``load FILE``: use the ranges of a :meth:`QuantizationHook.save_ranges` file, frozen;
    * ``save FILE``: nothing now; call the returned function after the run to write the final ranges.

    Returns a callable to run after scoring (writes the file for ``save``; no-op otherwise). With several
    nets, ``FILE`` gets ``.<k>`` appended for net k > 0.
    """
    if mode not in ("freeze", "save", "load"):
        raise ValueError(f"--quant-ranges: unknown mode {mode!r} (freeze, save FILE or load FILE)")
    if mode != "freeze" and not path:
        raise ValueError(f"--quant-ranges {mode}: a FILE is required")
    names = [path if k == 0 else f"{path}.{k}" for k in range(len(hooks))] if path else [None] * len(hooks)
    for h, name in zip(hooks, names, strict=True):
        if mode == "freeze":
            h.freeze_ranges(after=calibration if calibration is not None else max(h.start, 1))
        elif mode == "load":
            h.load_ranges(name)

    def finish():
        if mode == "save":
            for h, name in zip(hooks, names, strict=True):
                h.save_ranges(name)
    return finish
