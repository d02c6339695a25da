"""caffe-jacinto's training-time sparsity as a solver hook (docs/jacinto-spec.md §a).

:class:`SparsityHook` reads every sparsity field of the SolverParameter (§a.1), freezes the connectivity of the
loaded weights (exact zeros stay zero, §a.2 step 1), runs ThresholdNet after every update (§a.2): per-output-
channel thresholding every ``sparsity_step_iter`` iterations while the mask sparsity is below the target, the
factor growing by ``sparsity_step_factor`` each time, and the weights re-masked after every update
(SPARSE_UPDATE, §a.5). Log lines are jacinto's.

Iteration ordering and eligibility (§a.2, §a.3): ``version="0.17"`` (the default, the project's dialect:
thresholding after the display block, before the counter is incremented; 1x1/2x2 and depthwise convs are never
pruned) or ``"0.16"`` (what produced the reference logs: the counter is incremented first, so "iter=1000"
follows exactly 1000 updates; no kernel-size rule, and the search runs silently).
Beyond jacinto: the masks and the factor go into the snapshot sidecar (``solver.add_state_provider``), so a
resumed run continues exactly; when the target is not reached, one line per layer says why; and in a
data-parallel run the root's factor, masks and thresholded weights are broadcast to every replica each time
the schedule may threshold (``caffelite.parallel.broadcast_state``; a no-op on one device), where jacinto
pruned the root's copy only (§a.5).

End of training (§a.2 step 3): the final ThresholdNet + ``Sparsity after training:`` run on the solver's
``on_solve_end`` event when it has one (called by ``Solver.solve`` after the training loop, before the closing
forward), else after the update of iteration ``max_iter - 1``.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import log as glog
from ..errors import SolverError
from . import sparsity_stats as st
from . import threshold as th
from .validate import check_sparsity_param

SPARSE_NONE, SPARSE_UPDATE = 0, 1
#: the caffe-jacinto behaviours caffelite reproduces; "0.17" is the default (the project's dialect)
VERSIONS = ("0.16", "0.17")
DEFAULT_VERSION = "0.17"
#: the solver event fired once after the training loop, when the solver offers it
END_EVENT = "on_solve_end"


class SparsityHook:
    """The sparsity state of one training run (root solver): masks, factor, schedule.

    ``version``: iteration ordering and eligibility rule, "0.17" (default) or "0.16" (the reference logs).
    ``threshold_mode``: "exact" (jacinto's grid thresholds) or "direct" (no grid, see threshold.py).
    """

    def __init__(self, solver_param, version=DEFAULT_VERSION, threshold_mode="exact"):
        if version not in VERSIONS:
            raise ValueError(f"sparsity version must be one of {VERSIONS}, not {version!r}")
        check_sparsity_param(solver_param)
        p = solver_param
        self.param = p
        self.version = version
        self.threshold_mode = threshold_mode
        self.mode = int(p.sparse_mode)
        f32 = np.float32
        self.target = f32(p.sparsity_target)
        self.target_max = f32(min(f32(self.target + f32(0.15)), f32(0.95)))
        self.factor = f32(p.sparsity_start_factor)
        self.masks = None  # {layer index: 0/1 array of the weight dtype}
        self.net = None
        self.explained = False
        self.end_event = False  # True when the solver calls _on_solve_end (else the end is detected by iteration)

    # -- wiring ---------------------------------------------------------------------------------------
    def attach(self, solver):
        """Install the hooks on ``solver`` (``on_start``, ``after_update``) and the snapshot state provider."""
        self.net = solver.net
        solver.add_hook("on_start", self._on_start)
        solver.add_hook("after_update", self._after_update)
        hooks = getattr(solver, "hooks", None)
        if isinstance(hooks, dict) and END_EVENT in hooks:
            solver.add_hook(END_EVENT, self._on_solve_end)
            self.end_event = True
        solver.add_state_provider("jacinto_sparsity", self.get_state, self.set_state)
        solver._sparsity_hook = self
        return self

    def detach(self, solver):
        """Remove what :meth:`attach` installed on ``solver``."""
        for fns in getattr(solver, "hooks", {}).values():
            for fn in list(fns):
                if getattr(fn, "__self__", None) is self:
                    fns.remove(fn)
        getattr(solver, "state_providers", {}).pop("jacinto_sparsity", None)
        if getattr(solver, "_sparsity_hook", None) is self:
            solver._sparsity_hook = None

    @property
    def enabled(self):
        return self.mode != SPARSE_NONE

    def _on_start(self, solver, **_):
        if self.enabled and self.masks is None:
            self.store_connectivity(solver.net)

    def _after_update(self, solver, **_):
        if not self.enabled:
            return
        net = solver.net
        if self.masks is None:
            self.store_connectivity(net)
        incr_first = self.version == "0.16" and self.param.sparsity_itr_increment_bfr_applying
        it = solver.iter + 1 if incr_first else solver.iter
        self.threshold_net(net, it)
        d = self.param.display_sparsity
        if d > 0 and it % d == 0:
            glog.info("Sparsity after update:", "solver.cpp:352")
            st.display_sparsity(net)
        if not self.end_event and solver.iter + 1 == self.param.max_iter:  # no end event: the last update
            self.finish(net, solver.iter + 1)

    def _on_solve_end(self, solver, **_):
        if self.enabled:
            self.finish(solver.net, solver.iter)

    def finish(self, net, it):
        """The end of Solve (§a.2 step 3): ThresholdNet once more, ``Sparsity after training:``, and why the
        target was missed, if it was (beyond jacinto)."""
        if self.masks is None:
            self.store_connectivity(net)
        self.threshold_net(net, it)
        if self.param.display_sparsity > 0:
            glog.info("Sparsity after training:", "solver.cpp:376")
            st.display_sparsity(net)
        if st.sparsity(net, self.masks) < self.target:
            self.explain(net)

    # -- state ----------------------------------------------------------------------------------------
    def get_state(self):
        """Masks (host bool arrays by layer name) and the factor, for the snapshot sidecar."""
        masks = {}
        if self.masks is not None and self.net is not None:
            for i, m in self.masks.items():
                masks[self.net.layers[i].param.name] = backend.to_numpy(m).astype(bool)
        return {"factor": float(self.factor), "masks": masks, "have_masks": self.masks is not None}

    def set_state(self, state):
        """Restore :meth:`get_state`'s dict (the net must be attached)."""
        self.factor = np.float32(state["factor"])
        if not state.get("have_masks"):
            self.masks = None
            return
        by_name = {ly.param.name: (i, ly) for i, ly in st.conv_layers(self.net)}
        self.masks = {}
        for name, m in state["masks"].items():
            if name not in by_name:
                raise SolverError(f"sparsity state: no Convolution layer '{name}' in net '{self.net.name}' "
                                  "(the snapshot belongs to another net)")
            i, ly = by_name[name]
            w = ly.blobs[0].data
            xp = backend.get_array_module(w)
            self.masks[i] = xp.asarray(np.asarray(m).reshape(w.shape)).astype(w.dtype)

    # -- jacinto's operations -------------------------------------------------------------------------
    def store_connectivity(self, net):
        """mask = (w != 0) for every Convolution weight blob (Net::StoreSparseModeConnectivity, §a.2)."""
        self.net = net
        self.masks = {}
        for i, ly in st.conv_layers(net):
            w = ly.blobs[0].data
            self.masks[i] = (w != 0).astype(w.dtype)
        glog.info("All zero weights of convolution layers are frozen", "net.cpp:2253")

    def apply_connectivity(self, net):
        """w *= mask for every Convolution weight blob (Net::ApplySparseModeConnectivity, §a.5)."""
        for i, m in self.masks.items():
            w = net.layers[i].blobs[0].data  # the array itself: `blob.data *= m` would also copy via the setter
            w *= m

    def threshold_net(self, net, it):
        """Solver::ThresholdNet at iteration counter ``it`` (§a.2): maybe threshold, then always mask."""
        if not self.enabled:
            return
        if self.masks is None:
            self.store_connectivity(net)
        p = self.param
        if self.target > 0 and it >= p.sparsity_start_iter and it % p.sparsity_step_iter == 0:
            achieved = st.sparsity(net, self.masks)
            if achieved < self.target and self.factor > self.target_max:
                self.explain(net)  # the schedule gave up below the target: say why, once
            if self.factor <= self.target_max and achieved < self.target:
                glog.info(f"Finding and applying sparsity: sparsity_target={glog.fmt(self.target)} "
                          f"sparsity_factor={glog.fmt(self.factor)} sparsity_achieved={glog.fmt(achieved)} "
                          f"iter={it}", "solver.cpp:428")
                self.find_and_apply(net, self.factor)
                self.store_connectivity(net)
                self.factor = np.float32(self.factor + np.float32(p.sparsity_step_factor))
            self.share(net)  # at every iteration that may threshold: the same on every replica, no deadlock
        self.apply_connectivity(net)

    def share(self, net):
        """Broadcast the root's factor, masks and Convolution weights to every replica of a data-parallel run
        (identical masks everywhere); does nothing on one device."""
        from .. import parallel
        if parallel.current() is None or not self.masks:
            return
        order = sorted(self.masks)
        w0 = net.layers[order[0]].blobs[0].data
        xp = backend.get_array_module(w0)
        factor = xp.asarray([self.factor], dtype=w0.dtype)  # in the weights' array module (NCCL: device)
        masks = [self.masks[i] for i in order]
        weights = [net.layers[i].blobs[0].data for i in order]
        parallel.broadcast_state("sparsity masks", [factor, *masks, *weights])
        self.factor = np.float32(backend.to_numpy(factor)[0])

    def find_and_apply(self, net, factor):
        """Net::FindAndApplyChannelThresholdNet (§a.3) over every eligible Convolution."""
        p = self.param
        verbose = self.version == "0.17"  # the 0.16 build behind the reference logs ran it silently
        for _i, ly in st.conv_layers(net):
            ni, no, g, kh, kw = st.layer_geometry(ly)
            if verbose:
                glog.warning(f"{ly.param.name} ni={ni} no={no}", "net.cpp:2188")
            if not th.is_eligible(ni, no, g, kh, kw, self.version):
                continue
            w = ly.blobs[0].data
            fraction = th.channel_fraction(ni, no, factor)
            t = th.channel_thresholds(w, fraction, p.sparsity_threshold_maxratio,
                                      p.sparsity_threshold_value_max, self.threshold_mode)
            th.apply_thresholds(w, t)
            if verbose:
                xp = backend.get_array_module(w)
                z = np.float32(int(xp.count_nonzero(w == 0))) / np.float32(w.size)
                glog.warning(f"{ly.param.name} ZeroWeightsFraction={glog.fmt(z)}", "net.cpp:2230")

    def explain(self, net):
        """One line per counted layer saying why it stays below the target (beyond jacinto)."""
        if self.explained:
            return
        self.explained = True
        counts = st.zero_counts(net, self.masks)
        p = self.param
        stopped = " (sparsity_factor passed its maximum min(target+0.15, 0.95): no more thresholding)" \
            if self.factor > self.target_max else ""
        glog.info(f"Sparsity target {glog.fmt(self.target)} not reached (achieved {glog.fmt(st.totals(counts)[2])}, "
                  f"sparsity_factor {glog.fmt(self.factor)}){stopped}:")
        f = np.float32(self.factor - np.float32(p.sparsity_step_factor))  # the last factor applied
        for _i, ly in sorted(st.count_candidates(net), key=lambda x: st.param_key(x[1])):
            z, n = counts[st.param_key(ly)]
            ni, no, g, kh, kw = st.layer_geometry(ly)
            ratio = z / n if n else 0.0
            if not th.is_eligible(ni, no, g, kh, kw, self.version):
                why = (f"not pruned: ineligible kernel (ni={ni} no={no} group={g} kernel={kh}x{kw}; jacinto prunes "
                       f"only convs with ni or no >= 32, group < no and kernels larger than 2x2)")
            else:
                fraction = th.channel_fraction(ni, no, f)
                w = ly.blobs[0].data
                xp = backend.get_array_module(w)
                per_ch = backend.to_numpy(xp.count_nonzero(w.reshape(w.shape[0], -1) == 0, axis=1))
                k = int(w.size // w.shape[0])
                capped = int(np.count_nonzero(per_ch < th.max_allowed_count(k, fraction)))
                if capped:
                    why = (f"cap reached in {capped}/{w.shape[0]} output channels: thresholds are capped at "
                           f"min({glog.fmt(p.sparsity_threshold_maxratio)}*max|w|, "
                           f"{glog.fmt(p.sparsity_threshold_value_max)}) per channel")
                else:
                    why = f"reached its allowed fraction {glog.fmt(fraction)} (factor{'/2' if fraction < f else ''})"
            glog.info(f"  {st.param_key(ly)} ({ratio:.3g}): {why}")


def attach_sparsity(solver, version=DEFAULT_VERSION, threshold_mode="exact"):
    """Create a :class:`SparsityHook` for ``solver.param`` and attach it; None if ``sparse_mode`` is SPARSE_NONE.

    Idempotent: a solver that already has a hook with the same settings keeps it (its nets quantize and
    prune once, whether the solver extension or the caller attached first); other settings replace it."""
    p = solver.param
    check_sparsity_param(p)
    old = getattr(solver, "_sparsity_hook", None)
    if old is not None:
        if old.version == version and old.threshold_mode == threshold_mode and old.param is p:
            return old
        old.detach(solver)
    if p.sparse_mode == SPARSE_NONE:
        if p.sparsity_target > 0:
            glog.warning(f"sparsity_target={glog.fmt(p.sparsity_target)} is ignored: sparse_mode is SPARSE_NONE "
                         "(set sparse_mode: SPARSE_UPDATE to prune)")
        return None
    return SparsityHook(p, version, threshold_mode).attach(solver)
