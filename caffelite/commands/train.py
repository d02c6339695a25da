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
import signal
import time

from .. import log as glog
from ..errors import CaffeliteError, DeviceError, SolverError
from .caffe_flags import add_quant_ranges, apply_quant_ranges, progress_bar, stages

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


def parse_gpus(spec):
    """``"0,1"`` → [0, 1]; ``"all"`` → every visible device; ``""`` → []. Space or comma separated."""
    spec = (spec or "").strip()
    if not spec:
        return []
    from .. import backend
    if spec == "all":
        if not backend.cupy_available():
            raise DeviceError("--gpu all: no CUDA GPU is available (CuPy missing or no device); "
                                      "train on the CPU by leaving out --gpu")
        return list(range(backend.device_count()))
    try:
        return [int(t) for t in spec.replace(",", " ").split()]
    except ValueError:
        raise CaffeliteError(f"--gpu: expected device ids like '0' or '0,1' or 'all', got '{spec}'") from None


def select_device(gpus, solver_param=None, command="train"):
    """Set CPU or GPU mode as ``caffe`` does (``--gpu`` first, then an explicit ``solver_mode: GPU``).

    Single-device commands (test, time) use the first of several ids, as caffe-jacinto does (§i)."""
    from .. import backend
    if not gpus and solver_param is not None and solver_param.HasField("solver_mode") \
            and solver_param.solver_mode == 1:
        if backend.cupy_available():
            gpus = [solver_param.device_id]
        else:
            glog.warning("The solver asks for GPU mode but no CUDA GPU is available; using the CPU.",
                         "caffe.cpp:197")
    if not gpus:
        glog.info("Use CPU.", "caffe.cpp:197")
        backend.set_mode_cpu()
        return []
    if len(gpus) > 1:
        if command == "train":  # run() hands several devices to the launcher before getting here
            raise CaffeliteError("train: several GPUs are trained by caffelite.parallel.launch")
        for g in reversed(gpus[1:]):
            glog.info(f"Not using GPU #{g} for single-GPU function", "caffe.cpp:269")
    backend.set_device(gpus[0])
    backend.set_mode_gpu()  # DeviceError (one clear line) without CuPy or a device
    glog.info(f"Use GPU with device ID {gpus[0]}" if command != "train" else f"Using GPUs {gpus[0]}",
              "caffe.cpp:281" if command != "train" else "caffe.cpp:206")
    return gpus[:1]


class SignalHandler:
    """Caffe's SignalHandler: remember SIGINT/SIGHUP and report the configured effect once per signal."""

    def __init__(self, sigint_effect="stop", sighup_effect="snapshot"):
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self._got = []
        self._old = {}

    def _handle(self, signum, frame):
        self._got.append(signum)

    def install(self):
        for s in self.effects:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not in the main thread: leave the defaults alone
                pass
        return self

    def restore(self):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def __call__(self):
        """The requested action: "stop", "snapshot" or "none" (Caffe's GetRequestedAction)."""
        if not self._got:
            return "none"
        s = self._got.pop(0)
        return self.effects.get(s, "none")


def run(args) -> int:
    from ..solvers import get_solver, read_solver_param

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
        # bare solver: the jacinto hooks are attached once, below, with the command's --jacinto_version
        solver = get_solver(param, flavor=args.flavor, extensions=False)
        solver.requested_action = handler
        solver.snapshot_form = args.snapshot_form or None
        hooks = attach_jacinto(solver.net, solver, getattr(args, "jacinto_version", None))
        finish_ranges = apply_quant_ranges(hooks, args.quant_ranges)
        if args.snapshot:
            glog.info(f"Resuming from {args.snapshot}", "caffe.cpp:252")
        elif args.weights:
            copy_weights(solver, args.weights)
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
            glog.info(f"Optimization Done in {_hms(time.perf_counter() - t0)}", "caffe.cpp:250")
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


def attach_jacinto(net, solver=None, version=None):
    """Install caffe-jacinto's sparsity/quantization hooks when the prototxts ask for them.

    ``version`` ("0.16"/"0.17", from ``--jacinto_version``) picks jacinto's behaviour; None lets the
    environment / solver flavor decide (see :func:`caffelite.jacinto.attach_from_proto`)."""
    from .. import jacinto

    return jacinto.attach_from_proto(net, solver, version=version)


def copy_weights(solver, weights):
    """Caffe's CopyLayers: each comma-separated caffemodel into the train net and every test net, in turn."""
    for w in [w for w in weights.split(",") if w]:
        if not os.path.exists(w):
            raise FileNotFoundError(2, "No such file or directory", w)
        glog.info(f"Finetuning from {w}", "solver.cpp:72")
        solver.net.copy_from(w)
        for t in solver.test_nets:
            t.copy_from(w)


def _hms(seconds):
    s = int(seconds)
    h, m = s // 3600, (s // 60) % 60
    return (f"{h}h " if h else "") + (f"{m}m " if h or m else "") + f"{s % 60}s"
