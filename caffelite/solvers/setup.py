"""Setting a solver up for a training run, as Caffe's ``caffe train`` does: shared by the ``caffelite train``
command and the data-parallel replica processes (:mod:`caffelite.parallel.worker`).

:func:`prepare_training` builds the solver and wires SIGINT/SIGHUP, the snapshot format, the feature hooks and
the initial weights; the callers keep what differs (argument parsing and printing; the replicas' communicator).
"""

from __future__ import annotations

import os
import signal

from .. import log as glog

__all__ = ["SignalHandler", "prepare_training", "copy_weights", "hms"]


class SignalHandler:
    """Caffe's SignalHandler: remember SIGINT/SIGHUP and report the configured effect once per signal."""

    def __init__(self, sigint_effect="stop", sighup_effect="snapshot"):
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self._got = []
        self._old = {}
        self.installed = False

    def _handle(self, signum, frame):
        self._got.append(signum)

    def install(self):
        """Catch the signals from now on (outside the main thread the defaults are left alone); returns self."""
        for s in self.effects:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not in the main thread: leave the defaults alone
                pass
        self.installed = True
        return self

    def restore(self):
        """Put back the handlers :meth:`install` replaced."""
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
        self.installed = False

    def __call__(self):
        """The requested action: "stop", "snapshot" or "none" (Caffe's GetRequestedAction)."""
        if not self._got:
            return "none"
        s = self._got.pop(0)
        return self.effects.get(s, "none")


def prepare_training(param, handler, *, flavor="bvlc", extensions=True, snapshot_format=None, attach=None,
                     snapshot=None, weights=None):
    """Build the solver ``param`` (a SolverParameter) describes and make it ready to train; returns
    ``(solver, what attach returned)``.

    ``handler``: a :class:`SignalHandler`, installed here once the solver exists unless the caller installed it
    already (to catch signals during the build too); the solver asks it for the requested action.
    ``flavor``/``extensions``: as :func:`caffelite.solvers.get_solver`. ``snapshot_format``: the blob encoding
    of snapshots (None: the solver's default). ``attach(solver)``: installs feature hooks (e.g.
    :func:`caffelite.jacinto.attach_from_proto`), before any weights are loaded; its result is returned (None
    without it). ``snapshot``: the solverstate the caller resumes from (logged here; the caller
    restores it when it needs to). ``weights``: comma-separated caffemodels to fine-tune from (not with
    ``snapshot``), see :func:`copy_weights`.
    """
    from . import get_solver

    solver = get_solver(param, flavor=flavor, extensions=extensions)
    if not handler.installed:
        handler.install()
    solver.requested_action = handler
    solver.snapshot_form = snapshot_format or None
    attached = attach(solver) if attach is not None else None
    if snapshot:
        glog.info(f"Resuming from {snapshot}", "caffe.cpp:252")
    elif weights:
        copy_weights(solver, weights)
    return solver, attached


def copy_weights(solver, weights):
    """Caffe's CopyLayers: each comma-separated caffemodel into the train net and every test net, in turn."""
    for w in [w for w in weights.split(",") if w]:
        if not os.path.exists(w):
            raise FileNotFoundError(2, "No such file or directory", w)
        glog.info(f"Finetuning from {w}", "solver.cpp:72")
        solver.net.copy_from(w)
        for t in solver.test_nets:
            t.copy_from(w)


def hms(seconds):
    """A duration as Caffe's tools print it: ``1h 2m 3s``, ``2m 3s`` or ``3s``."""
    s = int(seconds)
    h, m = s // 3600, (s // 60) % 60
    return (f"{h}h " if h else "") + (f"{m}m " if h or m else "") + f"{s % 60}s"
