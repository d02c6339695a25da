"""One replica of a data-parallel run: a Solver whose hooks keep it in step with the others.

:class:`DataParallel` plugs into a built Solver without changing it (ARCHITECTURE.md, "Jacinto features as
hooks"):

* start — parameters (and solver history, so a resumed run stays identical) are broadcast from the root;
* ``on_gradients_ready`` — every learnable diff is all-reduced: summed, then divided by the number of
  replicas (jacinto.md §c.3), before clipping, iter_size normalisation, regularisation and the update, which
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
        self._sparsity_seen = None
        self._qhooks = []

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
        self._attach_quantization()
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
        for q in self._qhooks:  # quantization ranges are state that must agree too
            stats += [float(a.sum()) for group in (q.r_in, q.r_out, q.r_w) for a in group]
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
        self.sync_statistics()
        self._sync_sparsity(solver)

    def sync_statistics(self):
        """Average the BatchNorm running statistics over the replicas (each computed them on its own batch)."""
        stats = _batchnorm_statistics(self.solver.net)
        if stats:
            self.comm.allreduce_mean(stats)

    def _sync_sparsity(self, solver):
        # jacinto's SparsityHook (caffelite/jacinto/sparsity.py) keeps .factor and .masks; share them when
        # they change: the root's thresholding decision wins, and the masked weights follow it.
        hook = _find_sparsity_hook(solver)
        if hook is None or hook.masks is None:
            return
        seen = (float(hook.factor), id(hook.masks), len(hook.masks))
        changed = self.comm.broadcast_scalar(float(seen != self._sparsity_seen))
        if not changed:
            return
        order = sorted(hook.masks)
        hook.factor = np.float32(self.comm.broadcast_scalar(float(hook.factor)))
        masks = [hook.masks[i] for i in order]
        weights = [solver.net.layers[i].blobs[0].data for i in order]
        self.broadcast_state("sparsity masks", masks + weights)
        self._sparsity_seen = (float(hook.factor), id(hook.masks), len(hook.masks))

    def _attach_quantization(self):
        for net in [self.solver.net, *self.solver.test_nets]:
            hooks = getattr(net, "hooks", None)
            ends = list(getattr(hooks, "forward_end", []) or [])
            qhooks = [getattr(fn, "__self__", None) for fn in ends]
            qhooks = [q for q in qhooks if q is not None and hasattr(q, "r_in") and hasattr(q, "r_out")]
            for q in qhooks:
                self._qhooks.append(q)
                net.add_hook("forward_end", lambda _net, q=q: self._sync_ranges(q))

    def _sync_ranges(self, qhook):
        # QuantizationHook ranges are float64 host arrays [n, 2] per layer (jacinto/quantization.py).
        arrays = [a for group in (qhook.r_in, qhook.r_out, qhook.r_w) for a in group if a.size]
        if not arrays:
            return
        flat = np.concatenate([a.ravel() for a in arrays])
        buf = self.comm.host_or_device_array(flat)
        self.broadcast_state("quantization ranges", [buf])
        flat = backend.to_numpy(buf)
        off = 0
        for a in arrays:
            a[...] = flat[off:off + a.size].reshape(a.shape)
            off += a.size

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


def _find_sparsity_hook(solver):
    for fn in solver.hooks.get("after_update", []):
        owner = getattr(fn, "__self__", None)
        if owner is not None and hasattr(owner, "masks") and hasattr(owner, "factor"):
            return owner
    return None
