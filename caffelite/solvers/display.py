"""The solver's log lines, in the dialect of the Caffe whose logs a user compares against.

``flavor`` "bvlc" (default; what the fixtures' real Caffe prints), "jacinto" (caffe-jacinto 0.17 / NVCaffe)
or "jacinto016" (0.16, which produced the reference run.logs). Differences (docs/jacinto-spec.md §i, §c.3):

* display: BVLC every ``display`` iterations as ``Iteration N (x iter/s, ys/D iters), loss = L``; jacinto also
  for the first three iterations of a run (``Iteration N (t s), loss = L``) and the last, with ``n iter``;
* the rate line: BVLC ``Iteration N, lr = X``; 0.16 adds ``, m = M``; 0.17 adds ``, m = M, wd = W, gs = G``;
* tests: jacinto always runs the initial test with one batch and logs ``Initial Test started...`` /
  ``Initial Test completed in ts`` (0.17) and ``Tests completed in ts`` after each test.
"""

from __future__ import annotations

import numpy as np

from .. import log as glog
from ..errors import SolverError

FLAVORS = ("bvlc", "jacinto", "jacinto016")


def check_flavor(flavor):
    if flavor not in FLAVORS:
        raise SolverError(f"unknown solver flavor '{flavor}' (known: {', '.join(FLAVORS)})")
    return flavor


def loss_msg(weight, value):
    """`` (* w = w·v loss)`` for loss outputs, as Caffe appends it."""
    if not weight:
        return ""
    return f" (* {glog.fmt(weight)} = {glog.fmt(np.float32(weight) * np.float32(value))} loss)"


def should_display(solver, rel_iter, last):
    d = solver.param.display
    if not d:
        return False
    if solver.iter % d == 0:
        return True
    return solver.flavor != "bvlc" and (rel_iter <= 2 or last)


def log_iteration(solver, lapse, n, rel_iter):
    """The ``Iteration N (...), loss = L`` line."""
    loss = glog.fmt(solver.smoothed_loss)
    if solver.flavor == "bvlc":
        per_s = n / lapse if lapse > 0 else 0.0
        glog.info(f"Iteration {solver.iter} ({glog.fmt(per_s)} iter/s, {glog.fmt(lapse)}s/{solver.param.display} "
                  f"iters), loss = {loss}", "solver.cpp:239")
    elif rel_iter <= 2:
        glog.info(f"Iteration {solver.iter} ({glog.fmt(lapse)} s), loss = {loss}", "solver.cpp:319")
    else:
        per_s = n / lapse if lapse > 0 else 0.0
        glog.info(f"Iteration {solver.iter} ({glog.fmt(per_s)} iter/s, {glog.fmt(lapse)}s/{n} iter), loss = {loss}",
                  "solver.cpp:314")


def log_outputs(scores, kind="Train"):
    """``    Train net output #k: name = v (* w = l loss)`` lines."""
    src = "solver.cpp:258" if kind == "Train" else "solver.cpp:414"
    for k, (name, val, w) in enumerate(scores):
        glog.info(f"    {kind} net output #{k}: {name} = {glog.fmt(val)}{loss_msg(w, val)}", src)


def log_rate(solver, rate, momentum, weight_decay):
    """The ``Iteration N, lr = X`` line (only when ``iter % display == 0``, in every flavor)."""
    line = f"Iteration {solver.iter}, lr = {glog.fmt(rate)}"
    if solver.flavor == "jacinto016":
        line += f", m = {glog.fmt(momentum)}"
    elif solver.flavor == "jacinto":
        line += f", m = {glog.fmt(momentum)}, wd = {glog.fmt(weight_decay)}, gs = 1.00"
    glog.info(line, "sgd_solver.cpp:112" if solver.flavor == "bvlc" else "sgd_solver.cpp:136")
