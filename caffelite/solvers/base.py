"""The solver loop: Caffe's ``Solver::Step``/``Solve``/``Test`` and the shared part of the update.

A solver owns a TRAIN net, its TEST nets, the history arrays (one, or two for AdaDelta/Adam, per learnable
param, in ``net.learnable_params`` order) and the lr schedule. One iteration is Caffe's:
clear diffs → (test) → ``iter_size`` × forward/backward → display → ``on_gradients_ready`` hooks → lr →
clip (global L2 over the raw diffs) → per param: ÷ iter_size, weight decay (L2 or L1·sign) × decay_mult,
update (× lr × lr_mult) → ``w -= diff`` → ``after_update`` hooks → ++iter → snapshot.
Subclasses (sgd.py, adaptive.py) only implement ``compute_update`` on whole blobs.

Hooks (``add_hook(event, fn)``) are called as ``fn(solver, **info)``: ``on_start`` (each iteration, before the
forward passes), ``on_gradients_ready``, ``after_update``, ``on_snapshot`` (``path=`` the model file) and
``on_restore`` (``path=`` the state file). ``add_state_provider(name, get_fn, set_fn)`` adds named state to the
snapshot sidecar so resume is exact (see snapshot.py).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from .. import backend
from .. import log as glog
from ..errors import SolverError
from ..extensions import apply_solver_extensions
from . import display as display_mod
from . import netutil
from ..registry import Registry
from .lr_policy import LRSchedule

_SOLVERS = Registry("solver")
_LEGACY: dict[int, str] = {}

HOOK_EVENTS = ("on_start", "on_gradients_ready", "after_update", "on_snapshot", "on_restore", "on_solve_end")
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"


def register_solver(type_name, legacy=None):
    """Class decorator registering a solver under its ``type`` string (and legacy ``solver_type`` enum)."""

    def deco(cls):
        _SOLVERS.add(type_name, cls)
        cls.type = type_name
        if legacy is not None:
            _LEGACY[legacy] = type_name
        return cls

    return deco


def solver_class(param):
    """The solver class for a SolverParameter (``type``, or the legacy ``solver_type`` enum when set)."""
    name = param.type
    if param.HasField("solver_type") and not param.HasField("type"):
        name = _LEGACY.get(param.solver_type, str(param.solver_type))
    if name not in _SOLVERS:
        raise SolverError(f"Unknown solver type: '{name}' (known: {', '.join(_SOLVERS.names())})")
    return _SOLVERS[name]


class NonFiniteLossError(SolverError):
    """The training loss became NaN or infinite; the message names the iteration and the first bad layer."""


class Solver:
    """Base of all solvers (Caffe's ``Solver`` + ``SGDSolver``'s shared update path).

    Parameters
    ----------
    param : SolverParameter (caffe-jacinto 0.17 classes), or the path of a solver prototxt (as pycaffe)
    net, test_nets : optional pre-built nets (else built from the param's net fields)
    level, stages : the NetState level/stages (``caffe train --level --stage``)
    base_dir : directory against which relative net paths are tried when not found in the CWD
    flavor : "bvlc" (default), "jacinto" (0.17) or "jacinto016": log lines and the initial test (display.py)
    extensions : run the registered solver extensions (:mod:`caffelite.extensions`) once built (default True);
        the nets the solver builds itself skip the net extensions, so those run once, here
    """

    type = None
    history_factor = 1

    def __init__(self, param, net=None, test_nets=None, *, level=0, stages=(), base_dir=None, flavor="bvlc",
                 extensions=True):
        if isinstance(param, (str, os.PathLike)):  # pycaffe: caffe.SGDSolver("solver.prototxt")
            path = os.fspath(param)
            param = netutil.read_solver_param(path)
            base_dir = base_dir or os.path.dirname(os.path.abspath(path))
        self.param = param
        self.flavor = display_mod.check_flavor(flavor)
        netutil.check_solver_fields(param)
        self.check_param()
        if param.random_seed >= 0:  # Caffe seeds before building the nets (fillers draw from it)
            backend.set_random_seed(param.random_seed)
        self.net = net if net is not None else netutil.build_train_net(param, level, stages, base_dir)
        self.test_nets = list(test_nets) if test_nets is not None else \
            netutil.build_test_nets(param, level, stages, base_dir)
        self.iter = 0
        self.schedule = LRSchedule(param, emit=lambda m: glog.info(m, "sgd_solver.cpp:61"),
                                   jacinto_version="0.16" if flavor == "jacinto016" else "0.17")
        params = self.learnable_params
        self.dtype = np.dtype(params[0].dtype) if params else np.dtype(np.float32)
        self.delta = self.dtype.type(param.delta)
        self.lr_mults, self.decay_mults = netutil.param_mults(self.net)
        self.history = [[p.xp.zeros(p.shape, dtype=p.dtype) for _ in range(self.history_factor)] for p in params]
        self.hooks = {e: [] for e in HOOK_EVENTS}
        self.state_providers = {}
        self.requested_action = None  # callable returning NONE/STOP/SNAPSHOT (signal handlers)
        self.requested_early_exit = False
        self.last_snapshot = None
        self.snapshot_form = None  # "jacinto" / "bvlc" override of the snapshot blob encoding
        self.smoothed_loss = 0.0
        self._losses = []
        self.rate = self.dtype.type(0)
        self.last_loss = None  # the (iter_size-averaged) loss of the last iteration
        if extensions:
            apply_solver_extensions(self)

    # -- configuration --------------------------------------------------------------------------------
    def check_param(self):
        """Validate solver-type-specific fields (subclasses override)."""

    @property
    def learnable_params(self):
        return netutil.learnable_params(self.net)

    def add_hook(self, event, fn):
        """Call ``fn(solver, **info)`` at ``event`` (one of :data:`HOOK_EVENTS`)."""
        if event not in self.hooks:
            raise SolverError(f"unknown solver hook event '{event}' (known: {', '.join(HOOK_EVENTS)})")
        self.hooks[event].append(fn)

    def add_callback(self, on_start, on_gradients_ready=None):
        """pycaffe's ``Solver.add_callback``: call ``on_start()`` before each iteration's forward passes and
        ``on_gradients_ready()`` once its gradients are computed; or pass one object with those two methods
        (a :class:`caffelite.NCCL`, say)."""
        if on_gradients_ready is None and hasattr(on_start, "on_gradients_ready"):
            on_start, on_gradients_ready = on_start.on_start, on_start.on_gradients_ready
        self.add_hook("on_start", lambda solver, **info: on_start())
        if on_gradients_ready is not None:
            self.add_hook("on_gradients_ready", lambda solver, **info: on_gradients_ready())

    def share_weights(self, net):
        """Make ``net`` use this solver's training weights (pycaffe's ``Solver.share_weights``)."""
        net.share_weights_from(self.net)

    def add_state_provider(self, name, get_fn, set_fn):
        """Save ``get_fn()`` in every snapshot's sidecar and hand it to ``set_fn(state)`` on restore."""
        self.state_providers[name] = (get_fn, set_fn)

    def _run_hooks(self, event, **info):
        for fn in self.hooks[event]:
            fn(self, **info)

    # -- the loop -------------------------------------------------------------------------------------
    def step(self, iters):
        """Run ``iters`` iterations (Caffe's ``Solver::Step``)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        self._losses, self.smoothed_loss = [], 0.0
        t0, last_iter = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            netutil.clear_param_diffs(self.net)
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or self._test_initialization()):
                self.test_all(initial=self.iter == 0)
                if self.requested_early_exit:
                    break
            self._run_hooks("on_start")
            netutil.set_solver_iter(self.net, self.iter)
            display = display_mod.should_display(self, self.iter - start_iter, self.iter == stop_iter - 1)
            loss = 0.0
            with np.errstate(all="ignore"):  # overflow is reported once, by _non_finite, not as warnings
                for _ in range(max(p.iter_size, 1)):
                    loss += float(netutil.forward_backward(self.net))
            loss = float(np.float32(loss / max(p.iter_size, 1)))
            self.last_loss = loss
            if not math.isfinite(loss):
                self._non_finite(loss)
            self._update_smoothed_loss(loss, start_iter)
            if display:
                display_mod.log_iteration(self, time.perf_counter() - t0, self.iter - last_iter,
                                          self.iter - start_iter)
                t0, last_iter = time.perf_counter(), self.iter
                display_mod.log_outputs(netutil.output_scores(self.net), "Train")
            self._run_hooks("on_gradients_ready")
            self.apply_update()
            self._run_hooks("after_update")
            self.iter += 1
            action = self.requested_action() if self.requested_action else NONE
            if (p.snapshot and self.iter % p.snapshot == 0) or action == SNAPSHOT:
                self.snapshot()
            if action == STOP:
                self.requested_early_exit = True
                break

    def _test_initialization(self):
        # BVLC's default is true; caffe-jacinto declares false but never reads it and always tests at
        # iteration 0 (docs/jacinto-spec.md §c.3). bvlc flavor: test unless the solver says test_initialization: false.
        p = self.param
        if self.flavor != "bvlc":
            return True
        return p.test_initialization if p.HasField("test_initialization") else True

    def solve(self, resume_file=None):
        """Train to ``max_iter`` (Caffe's ``Solver::Solve``), optionally resuming from a solverstate."""
        p = self.param
        glog.info(f"Solving {netutil.net_name(self.net)}", "solver.cpp:289")
        glog.info(f"Learning Rate Policy: {p.lr_policy}", "solver.cpp:290")
        self.requested_early_exit = False
        if resume_file:
            glog.info(f"Restoring previous solver status from {resume_file}", "solver.cpp:297")
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        self._run_hooks("on_solve_end")
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            glog.info("Optimization stopped early.", "solver.cpp:311")
            return
        # Caffe's extra forward after the last update, logged with the smoothed loss (fixtures README §3).
        if p.display and self.iter % p.display == 0:
            netutil.set_solver_iter(self.net, self.iter)
            loss = float(netutil.forward(self.net))
            self._update_smoothed_loss(loss, start_iter)
            glog.info(f"Iteration {self.iter}, loss = {glog.fmt(self.smoothed_loss)}", "solver.cpp:327")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        glog.info("Optimization Done.", "solver.cpp:332")

    def _update_smoothed_loss(self, loss, start_iter):
        # Caffe's incremental float update, so the logged value matches to the last digit (fixtures README).
        avg = max(self.param.average_loss, 1)
        f = np.float32
        if len(self._losses) < avg:
            self._losses.append(f(loss))
            n = len(self._losses)
            self.smoothed_loss = float((f(self.smoothed_loss) * f(n - 1) + f(loss)) / f(n))
        else:
            idx = (self.iter - start_iter) % avg
            self.smoothed_loss = float(f(self.smoothed_loss) + (f(loss) - self._losses[idx]) / f(avg))
            self._losses[idx] = f(loss)

    def _non_finite(self, loss):
        layer, top = netutil.first_non_finite(self.net)
        where = f"; first non-finite output: layer '{layer}' top '{top}'" if layer else ""
        kept = f"; the last good snapshot is {self.last_snapshot}" if self.last_snapshot else "; no snapshot was taken"
        glog.error(f"Iteration {self.iter}, loss = {glog.fmt(loss)}{where}", "solver.cpp:239")
        raise NonFiniteLossError(f"training stopped at iteration {self.iter}: loss is {glog.fmt(loss)}{where}{kept}")

    # -- testing --------------------------------------------------------------------------------------
    def test_all(self, initial=False):
        """Run every test net (Caffe's ``TestAll``); returns a list of {output name: mean score}.

        caffe-jacinto's initial test (``initial=True``, jacinto flavors) runs one batch per test net."""
        jac = self.flavor != "bvlc"
        t0 = time.perf_counter()
        if jac and initial and self.flavor == "jacinto":
            glog.info("Initial Test started...", "solver.cpp:264")
        out = [self.test(i, 1 if jac and initial else None) for i in range(len(self.test_nets))]
        secs = glog.fmt(time.perf_counter() - t0)
        if jac and initial:
            glog.info(f"Initial Test completed in {secs}s" if self.flavor == "jacinto" else "Initial Test completed",
                      "solver.cpp:268")
        elif jac:
            glog.info(f"Tests completed in {secs}s", "solver.cpp:265")
        return out

    def test(self, k, iters=None):
        """Run test net ``k`` for ``test_iter[k]`` (or ``iters``) batches and log each output's mean (``Test``)."""
        p = self.param
        glog.info(f"Iteration {self.iter}, Testing net (#{k})", "solver.cpp:347")
        tnet = self.test_nets[k]
        netutil.share_weights(tnet, self.net)
        n = p.test_iter[k] if k < len(p.test_iter) else 0
        if iters is not None:
            n = iters
        acc = netutil.ScoreSum()
        for _ in range(n):
            action = self.requested_action() if self.requested_action else NONE
            if action == STOP:
                self.requested_early_exit = True
                glog.info("Test interrupted.", "solver.cpp:392")  # Caffe logs no scores then
                return {}
            acc.add(tnet)
        if p.test_compute_loss and acc.n:
            glog.info(f"Test loss: {glog.fmt(acc.loss / acc.n)}", "solver.cpp:398")
        means = acc.means()
        if not means:
            return {}
        display_mod.log_outputs(means, "Test")
        return {name: m for name, m, _ in means}

    # -- the update -----------------------------------------------------------------------------------
    def apply_update(self):
        """lr → clip → per param (normalise, regularise, compute update) → ``w -= diff`` (Caffe's ApplyUpdate)."""
        p = self.param
        rate = self.schedule.rate(self.iter)
        self.rate = rate
        momentum = self.schedule.momentum(self.iter, rate)
        wd = self.schedule.weight_decay(self.iter)
        if p.display and self.iter % p.display == 0:
            display_mod.log_rate(self, rate, momentum, wd)
        self.clip_gradients()
        f = self.dtype.type
        for i, blob in enumerate(self.learnable_params):
            g = blob.diff
            if p.iter_size > 1:
                g *= f(1) / f(p.iter_size)
            local_rate = f(rate) * f(self.lr_mults[i])
            if p.larc:  # ||g|| of the averaged gradient, before weight decay (§c.2)
                local_rate = self._larc_rate(blob, g, rate, i)
            self.regularize(i, blob, g, wd)
            self.compute_update(i, g, self.history[i], local_rate, momentum)
        netutil.update(self.net)

    def clip_gradients(self):
        """Scale all diffs by clip/‖g‖ when the global L2 norm of the raw diffs exceeds ``clip_gradients``."""
        clip = self.param.clip_gradients
        if clip < 0:
            return
        params = self.learnable_params
        sumsq = sum(float(b.xp.vdot(b.diff.ravel(), b.diff.ravel())) for b in params)
        norm = float(np.float32(math.sqrt(sumsq)))
        if norm > clip:
            scale = np.float32(clip) / np.float32(norm)
            glog.info(f"Gradient clipping: scaling down gradients (L2 norm {glog.fmt(norm)} > {glog.fmt(clip)}) "
                      f"by scale factor {glog.fmt(scale)}", "sgd_solver.cpp:99")
            for b in params:
                b.diff *= scale

    def regularize(self, i, blob, g, weight_decay):
        """Add ``weight_decay × decay_mult × (w | sign(w))`` to the gradient (L2 | L1), docs/jacinto-spec.md §c.2."""
        f = self.dtype.type
        local_decay = f(weight_decay) * f(self.decay_mults[i])
        if not local_decay:
            return
        kind = self.param.regularization_type
        xp = blob.xp
        tmp = self.scratch(g)
        if kind in ("L2", "L2_unitary"):
            xp.multiply(blob.data, local_decay, out=tmp)
        elif kind == "L1":
            xp.sign(blob.data, out=tmp)
            tmp *= local_decay
        else:
            raise SolverError(f"Unknown regularization type: {kind}")
        g += tmp

    def scratch(self, like, k=0):
        """A reusable temporary shaped like ``like`` (``k`` selects one of several), so updates of large blobs
        allocate nothing per iteration."""
        bufs = self.__dict__.setdefault("_scratch", {})
        key = (k, like.dtype.str, type(like))
        buf = bufs.get(key)
        if buf is None or buf.size < like.size:
            buf = backend.get_array_module(like).empty(like.size, dtype=like.dtype)
            bufs[key] = buf
        return buf[:like.size].reshape(like.shape)

    def _larc_rate(self, blob, g, rate, i):
        # §c.2 LARC: r = eta*||w||/||g|| (1 if a norm is 0); replaces lr_mult when lr_mult > 0.
        f = self.dtype.type
        if self.lr_mults[i] <= 0:
            return f(0)
        wn = float(blob.xp.linalg.norm(blob.data.ravel()))
        gn = float(blob.xp.linalg.norm(g.ravel()))
        r = self.param.larc_eta * wn / gn if wn > 0 and gn > 0 else 1.0
        if self.param.larc_policy == "clip":
            return f(min(float(rate), r))
        if self.param.larc_policy != "scale":
            raise SolverError(f"Unknown larc_policy: {self.param.larc_policy}")
        return f(rate) * f(r)

    def compute_update(self, i, g, hist, local_rate, momentum):
        """Turn the regularised gradient ``g`` of param ``i`` into the update, in place (subclasses)."""
        raise NotImplementedError

    # -- snapshots (snapshot.py does the files) -------------------------------------------------------
    def snapshot(self, form=None):
        """Write ``<prefix>_iter_<N>.caffemodel`` + ``.solverstate`` (+ sidecar); returns the state path.

        Weights holding a NaN or inf are never written: the run stops with :class:`NonFiniteLossError` and
        the previous snapshot stays the last one."""
        from . import snapshot as snap
        bad = netutil.first_non_finite_param(self.net)
        if bad is not None:
            kept = f"; the last good snapshot is {self.last_snapshot}" if self.last_snapshot else ""
            glog.error(f"Iteration {self.iter}: param '{bad}' is not finite; not snapshotting", "solver.cpp:458")
            raise NonFiniteLossError(f"training stopped at iteration {self.iter}: the update made param '{bad}' "
                                     f"non-finite (snapshot not written){kept}")
        path = snap.write_snapshot(self, form=form or self.snapshot_form)
        self.last_snapshot = path
        return path

    def restore(self, state_file):
        """Resume from a ``.solverstate`` (weights via its learned_net, history, iteration, sidecar state)."""
        from . import snapshot as snap
        snap.restore(self, state_file)
        self._run_hooks("on_restore", path=state_file)

