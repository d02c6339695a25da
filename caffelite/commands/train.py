"""Train or fine-tune a model, as ``caffe train``: ``caffelite train --solver S [--weights A[,B]] [--snapshot X]``.

Flags are Caffe's (every gflags spelling: ``-solver x``, ``--solver=x``, ``--solver x``). ``--weights`` and
``--snapshot`` together is an error, as in Caffe. SIGINT and SIGHUP do what ``--sigint_effect`` (default stop)
and ``--sighup_effect`` (default snapshot) say, after the current iteration. ``--level``/``--stage`` go into the
solver's ``train_state`` (as BVLC's and caffe-jacinto's tool do; test nets keep their own ``test_state``).
``--gpu 0,1`` / ``--gpu all`` train data-parallel, one process per device (:func:`caffelite.parallel.launch`).

The test at iteration 0: BVLC runs it unless the solver says ``test_initialization: false`` (its default is
true); caffe-jacinto 0.16/0.17 declare the field (0.17 with default false) but never read it and always run
the initial test, with one batch (docs/jacinto-spec.md §c.3). ``--flavor bvlc`` (default) follows BVLC, so an explicit
``test_initialization: false`` skips it and an unset field (whatever the schema's default) runs it;
``--flavor jacinto``/``jacinto016`` always run the one-batch initial test, as the reference logs show.
"""

from __future__ import annotations

import os
import time

from .. import log as glog
from ..errors import CaffeliteError, SolverError
from ..solvers.setup import SignalHandler, hms, prepare_training
from .caffe_flags import add_quant_ranges, apply_quant_ranges, parse_gpus, progress_bar, select_device, stages

EFFECTS = ("stop", "snapshot", "none")


def add_arguments(p):
    p.add_argument("--solver", default="", help="the solver definition prototxt")
    p.add_argument("--weights", default="",
                   help="pretrained weights to fine-tune from (comma-separated caffemodels, applied in turn)")
    p.add_argument("--snapshot", default="", help="a .solverstate to resume training from")
    p.add_argument("--gpu", default="", help="GPU ids to use ('0', '0,1' or 'all'); CPU when empty")
    p.add_argument("--level", type=int, default=0, help="the train net's NetState level")
    p.add_argument("--stage", default="", help="the train net's NetState stages, comma-separated")
    p.add_argument("--sigint_effect", default="stop", choices=EFFECTS, help="what SIGINT does (default stop)")
    p.add_argument("--sighup_effect", default="snapshot", choices=EFFECTS,
                   help="what SIGHUP does (default snapshot)")
    p.add_argument("--flavor", default="bvlc", choices=("bvlc", "jacinto", "jacinto016"),
                   help="log lines and initial test as BVLC Caffe (default; iteration-0 test unless "
                        "test_initialization: false), caffe-jacinto 0.17 or 0.16 (always a one-batch "
                        "initial test, docs/jacinto-spec.md §c.3)")
    p.add_argument("--snapshot_format", dest="snapshot_form", default="", choices=("", "jacinto", "bvlc"),
                   help="blob encoding of snapshots (default: jacinto, or bvlc when the solver sets "
                        "store_blobs_in_old_format)")
    add_quant_ranges(p)
    from .. import jacinto

    jacinto.add_version_argument(p)


def run(args) -> int:
    from .. import jacinto
    from ..solvers import read_solver_param

    if not args.solver:
        raise SolverError("Need a solver definition to train.")
    if args.snapshot and args.weights:
        raise SolverError("Give a snapshot to resume training or weights to finetune but not both.")
    param = read_solver_param(args.solver)
    param.train_state.level = args.level
    for s in stages(args.stage):
        param.train_state.stage.append(s)
    gpus = parse_gpus(args.gpu)
    if len(gpus) > 1:
        return _train_parallel(args, gpus)
    select_device(gpus, param)
    handler = SignalHandler(args.sigint_effect, args.sighup_effect).install()
    try:
        # bare solver: the jacinto hooks are attached once, with the command's --jacinto_version, then the
        # --quant-ranges option applied to them (its result: what to call after the run)
        def attach(solver):
            hooks = jacinto.attach_from_proto(solver.net, solver, version=getattr(args, "jacinto_version", None))
            return apply_quant_ranges(hooks, args.quant_ranges)

        solver, finish_ranges = prepare_training(param, handler, flavor=args.flavor, extensions=False,
                                                 snapshot_format=args.snapshot_form, attach=attach,
                                                 snapshot=args.snapshot, weights=args.weights)
        glog.info("Starting Optimization", "caffe.cpp:239")
        t0 = time.perf_counter()
        with progress_bar(param.max_iter, unit="iter") as bar:
            if bar is not None:
                solver.add_hook("on_restore", lambda s, **_: bar.update(s.iter - bar.n))
                solver.add_hook("after_update", lambda s, **_: bar.update(1))
            solver.solve(args.snapshot or None)
        finish_ranges()
        if args.flavor == "bvlc":
            glog.info("Optimization Done.", "caffe.cpp:250")
        else:
            glog.info(f"Optimization Done in {hms(time.perf_counter() - t0)}", "caffe.cpp:250")
    finally:
        handler.restore()
    return 0


def _train_parallel(args, gpus):
    """``--gpu 0,1`` / ``--gpu all``: one replica process per device (caffelite.parallel), root logs/snapshots."""
    if args.quant_ranges is not None:
        raise CaffeliteError("--quant-ranges is not supported with several GPUs; train on one device")
    from .. import jacinto
    from ..parallel import launch

    if getattr(args, "jacinto_version", None):  # the replicas attach the hooks without arguments
        os.environ[jacinto.ENV_VERSION] = args.jacinto_version
    rc = launch(args.solver, gpus, weights=args.weights or None, snapshot=args.snapshot or None,
                backend="nccl", level=args.level, stages=stages(args.stage), flavor=args.flavor,
                snapshot_format=args.snapshot_form or None, sigint_effect=args.sigint_effect,
                sighup_effect=args.sighup_effect)
    if rc:
        raise CaffeliteError(f"data-parallel training on GPUs {','.join(map(str, gpus))} failed "
                             f"(exit status {rc}; see the replicas' messages above)")
    return 0

