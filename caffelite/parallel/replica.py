"""One replica of a data-parallel run: a Solver whose hooks keep it in step with the others.

:class:`DataParallel` plugs into a built Solver without changing it (ARCHITECTURE.md, "Jacinto features as
hooks"):

* start — parameters (and solver history, so a resumed run stays identical) are broadcast from the root;
* ``on_gradients_ready`` — every learnable diff is all-reduced: summed, then divided by the number of
  replicas (docs/jacinto-spec.md §c.3), before clipping, iter_size normalisation, regularisation and the update, which
  therefore compute the same thing on every replica;
* ``after_update`` — BatchNorm running statistics (computed from each replica's own batch) are averaged, and
  jacinto's sparsity masks are broadcast from the root whenever they change: caffe-jacinto thresholds on
  the root only and lets the replicas drift; we decide once and broadcast, so every replica holds identical
  weights;
* quantization ranges are broadcast from the root after every forward (they come from activations, which
  differ per replica);
* testing — each replica tests its share of the test set; per-output means are summed over the replicas
  and divided by their number (§c.3), and only the root logs;
* snapshots and logging happen on the root only; the signal action (stop/snapshot) is the root's, broadcast
  so every replica leaves the loop at the same iteration.

:func:`current` returns the active replica (None outside a data-parallel run), and
:meth:`DataParallel.broadcast_state` is the entry point for any other hook whose decisions must be shared.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import log as glog
from ..errors import DeviceError
from ..solvers import netutil
from .shard import shard_data_layers

__all__ = ["DataParallel", "current"]

_ACTIVE = {"replica": None}
_ACTIONS = ("none", "stop", "snapshot")


def current():
    """The :class:`DataParallel` of this process, or None when training on one device."""
    return _ACTIVE["replica"]


class DataParallel:
    """Keeps ``solver`` identical to the other replicas reached through ``comm`` (a Communicator)."""

    def __init__(self, solver, comm):
        self.solver = solver
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size

    # -- wiring ---------------------------------------------------------------------------------------
    def attach(self, shard_data=True):
        """Install the hooks and overrides on the solver; returns self. Call after weights are loaded."""
        s = self.solver
        _ACTIVE["replica"] = self
        if shard_data:
            for net in [s.net, *s.test_nets]:
                shard_data_layers(net, self.rank, self.size)
        if self.size == 1:
            return self
        s.add_hook("on_gradients_ready", self._reduce_gradients)
        s.add_hook("after_update", self._after_update)
        s.test = self.test
        inner = s.requested_action
        s.requested_action = lambda: self._shared_action(inner)
        if not self.comm.is_root:
            s.snapshot = _no_snapshot
        return self

    def detach(self):
        """Forget this replica as the active one (the hooks stay on the solver)."""
        if _ACTIVE["replica"] is self:
            _ACTIVE["replica"] = None

    # -- state sharing --------------------------------------------------------------------------------
    def broadcast_state(self, name, arrays):
        """Overwrite ``arrays`` (a list of host or device arrays) with the root's values, in place.

        ``name`` says what is shared (for errors and logs); the jacinto hooks call this so masks and ranges
        are decided once. Returns the list."""
        arrays = list(arrays)
        try:
            return self.comm.broadcast(arrays, root=0)
        except DeviceError as e:
            raise DeviceError(f"broadcasting '{name}' from the root failed: {e}") from e

    def broadcast_parameters(self):
        """Root's learnable params, solver history and iteration on every replica (the start of a run)."""
        s = self.solver
        arrays = [b.data for b in netutil.learnable_params(s.net)]
        arrays += [h for hist in s.history for h in hist]
        self.broadcast_state("parameters", arrays)
        s.iter = int(self.comm.broadcast_scalar(s.iter))

    def check_identical(self):
        """True when every replica holds the root's parameters bit for bit (a cheap end-of-run check).

        Each replica compares float64 (sum, sum of squares, sum × index) of its params, and the sums of its
        quantization ranges, with the root's."""
        stats = []
        for b in netutil.learnable_params(self.solver.net):
            d = backend.to_numpy(b.data).astype(np.float64).ravel()
            stats += [d.sum(), (d * d).sum(), (d * np.arange(d.size)).sum()]
        # Hook state (sparsity masks and factor, quantization ranges...) must agree too: every numeric value
        # of the solver's snapshot state providers is summed into the comparison.
        for name in sorted(self.solver.state_providers):
            stats += _numeric_sums(self.solver.state_providers[name][0]())
        mine = np.asarray(stats, dtype=np.float64)
        root = self.comm.host_or_device_array(mine.copy())
        self.comm.broadcast([root])
        same = np.array_equal(backend.to_numpy(root), mine)
        differs = self.comm.host_or_device_array(np.asarray([0.0 if same else 1.0]))
        self.comm.allreduce_sum([differs])
        return float(backend.to_numpy(differs)[0]) == 0.0

    def _reduce_gradients(self, solver, **_):
        self.comm.allreduce_mean([b.diff for b in netutil.learnable_params(solver.net)])

    def _after_update(self, solver, **_):
        # Sparsity masks and quantization ranges are shared by the jacinto hooks themselves through
        # broadcast_state (decided once on the root); only BatchNorm statistics need averaging here.
        self.sync_statistics()

    def sync_statistics(self):
        """Average the BatchNorm running statistics over the replicas (each computed them on its own batch)."""
        stats = _batchnorm_statistics(self.solver.net)
        if stats:
            self.comm.allreduce_mean(stats)

    def _shared_action(self, inner):
        # A signal reaches every process of the group, but not necessarily in the same iteration: the
        # root's reading is the one everybody follows, so no replica waits in a collective alone.
        action = inner() if inner is not None else "none"
        code = _ACTIONS.index(action) if action in _ACTIONS else 0
        return _ACTIONS[int(self.comm.broadcast_scalar(code))]

    # -- testing --------------------------------------------------------------------------------------
    def test(self, k, iters=None):
        """Test net ``k`` on this replica's share; log (root) and return the replicas' mean of each output."""
        s = self.solver
        p = s.param
        if self.comm.is_root:
            glog.info(f"Iteration {s.iter}, Testing net (#{k})", "solver.cpp:347")
        tnet = s.test_nets[k]
        netutil.share_weights(tnet, s.net)
        n = iters if iters is not None else (p.test_iter[k] if k < len(p.test_iter) else 0)
        sums, names, weights, loss = None, [], [], 0.0
        for _ in range(n):
            if s.requested_action() == "stop":
                s.requested_early_exit = True
                break
            loss += float(netutil.forward(tnet))
            res = netutil.output_scores(tnet)
            vals = np.array([v for _, v, _ in res], dtype=np.float32)
            if sums is None:
                sums, names, weights = vals, [r[0] for r in res], [r[2] for r in res]
            else:
                sums = sums + vals
        if sums is None:
            return {}
        means = (sums / np.float32(n)).astype(np.float32)
        buf = self.comm.host_or_device_array(np.concatenate([means, np.asarray([loss], np.float32)]))
        self.comm.allreduce_mean([buf])
        means = backend.to_numpy(buf)
        out = {}
        if p.test_compute_loss and self.comm.is_root:
            glog.info(f"Test loss: {glog.fmt(float(means[-1]) / n)}", "solver.cpp:398")
        for j, (name, w) in enumerate(zip(names, weights, strict=True)):
            mean = float(means[j])
            out[name] = mean
            if self.comm.is_root:
                extra = f" (* {glog.fmt(w)} = {glog.fmt(np.float32(w) * np.float32(mean))} loss)" if w else ""
                glog.info(f"    Test net output #{j}: {name} = {glog.fmt(mean)}{extra}", "solver.cpp:414")
        return out


def _no_snapshot(*_args, **_kwargs):
    """Non-root replicas never write files (the root's snapshot holds the shared state)."""
    return None


def _batchnorm_statistics(net):
    out = []
    for layer in getattr(net, "layers", []) or []:
        if getattr(layer, "type", None) == "BatchNorm" or layer.param.type == "BatchNorm":
            out.extend(b.data for b in layer.blobs[:3])
    return out


def _numeric_sums(state):
    """Float sums of every number/array inside ``state`` (nested dicts, lists, arrays), in a fixed order."""
    if isinstance(state, dict):
        return [v for k in sorted(state, key=str) for v in _numeric_sums(state[k])]
    if isinstance(state, (list, tuple)):
        return [v for item in state for v in _numeric_sums(item)]
    if isinstance(state, (bool, int, float, np.number, np.ndarray)) or hasattr(state, "__array__"):
        arr = backend.to_numpy(state)
        if arr.dtype.kind in "biuf":
            return [float(arr.astype(np.float64).sum())]
    return []
