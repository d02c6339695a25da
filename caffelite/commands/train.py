"""Train or fine-tune a model, as ``caffe train``: ``caffelite train --solver S [--weights A[,B]] [--snapshot X]``.

Flags are Caffe's (every gflags spelling: ``-solver x``, ``--solver=x``, ``--solver x``). ``--weights`` and
``--snapshot`` together is an error, as in Caffe. SIGINT and SIGHUP do what ``--sigint_effect`` (default stop)
and ``--sighup_effect`` (default snapshot) say, after the current iteration.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from .. import log as glog
from ..errors import CaffeliteError, DeviceError, SolverError

EFFECTS = ("stop", "snapshot", "none")


def add_arguments(p):
    p.add_argument("--solver", default="", help="the solver definition prototxt")
    p.add_argument("--weights", default="",
                   help="pretrained weights to fine-tune from (comma-separated caffemodels, applied in turn)")
    p.add_argument("--snapshot", default="", help="a .solverstate to resume training from")
    p.add_argument("--gpu", default="", help="GPU ids to use ('0', '0,1' or 'all'); CPU when empty")
    p.add_argument("--level", type=int, default=0, help="the NetState level")
    p.add_argument("--stage", default="", help="NetState stages, comma-separated")
    p.add_argument("--sigint_effect", default="stop", choices=EFFECTS, help="what SIGINT does (default stop)")
    p.add_argument("--sighup_effect", default="snapshot", choices=EFFECTS,
                   help="what SIGHUP does (default snapshot)")
    p.add_argument("--flavor", default="bvlc", choices=("bvlc", "jacinto", "jacinto016"),
                   help="log lines and initial test as BVLC Caffe (default), caffe-jacinto 0.17 or 0.16 print them")
    p.add_argument("--snapshot_format", dest="snapshot_form", default="", choices=("", "jacinto", "bvlc"),
                   help="blob encoding of snapshots (default: jacinto, or bvlc when the solver sets "
                        "store_blobs_in_old_format)")


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
        import cupy  # noqa: F401  (only reached when backend found it)
        return list(range(cupy.cuda.runtime.getDeviceCount()))
    try:
        return [int(t) for t in spec.replace(",", " ").split()]
    except ValueError:
        raise CaffeliteError(f"--gpu: expected device ids like '0' or '0,1' or 'all', got '{spec}'") from None


def select_device(gpus, solver_param=None, command="train"):
    """Set CPU or GPU mode as ``caffe`` does (``--gpu`` first, then an explicit ``solver_mode: GPU``)."""
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
        raise CaffeliteError(f"{command}: multi-GPU training (--gpu {','.join(map(str, gpus))}) is not available "
                             "in this build; use one device")
    backend.set_device(gpus[0])
    backend.set_mode_gpu()  # DeviceError (one clear line) without CuPy or a device
    glog.info(f"Using GPUs {gpus[0]}", "caffe.cpp:206")
    return gpus


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


def _stages(text):
    return [s for s in (text or "").split(",") if s]


def run(args) -> int:
    from ..solvers import get_solver, read_solver_param

    if not args.solver:
        raise SolverError("Need a solver definition to train.")
    if args.snapshot and args.weights:
        raise SolverError("Give a snapshot to resume training or weights to finetune but not both.")
    param = read_solver_param(args.solver)
    param.train_state.level = args.level
    for s in _stages(args.stage):
        param.train_state.stage.append(s)
    select_device(parse_gpus(args.gpu), param)
    handler = SignalHandler(args.sigint_effect, args.sighup_effect).install()
    try:
        solver = get_solver(param, flavor=args.flavor)
        solver.requested_action = handler
        solver.snapshot_form = args.snapshot_form or None
        attach_jacinto(solver.net, solver)
        if args.snapshot:
            glog.info(f"Resuming from {args.snapshot}", "caffe.cpp:252")
        elif args.weights:
            copy_weights(solver, args.weights)
        bar = _progress(solver)
        glog.info("Starting Optimization", "caffe.cpp:239")
        t0 = time.perf_counter()
        solver.solve(args.snapshot or None)
        if bar is not None:
            bar.close()
        if args.flavor == "bvlc":
            glog.info("Optimization Done.", "caffe.cpp:250")
        else:
            glog.info(f"Optimization Done in {_hms(time.perf_counter() - t0)}", "caffe.cpp:250")
    finally:
        handler.restore()
    return 0


def attach_jacinto(net, solver=None):
    """Install caffe-jacinto's sparsity/quantization hooks when the prototxts ask for them (issue 5)."""
    try:
        from .. import jacinto
    except ImportError:  # pragma: no cover - the jacinto package is optional while it is being written
        return None
    return jacinto.attach_from_proto(net, solver)


def copy_weights(solver, weights):
    """Caffe's CopyLayers: each comma-separated caffemodel into the train net and every test net, in turn."""
    for w in [w for w in weights.split(",") if w]:
        if not os.path.exists(w):
            raise FileNotFoundError(2, "No such file or directory", w)
        glog.info(f"Finetuning from {w}", "solver.cpp:72")
        solver.net.copy_from(w)
        for t in solver.test_nets:
            t.copy_from(w)


def _progress(solver):
    """A tqdm bar on a terminal only (logs stay plain when redirected)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    bar = tqdm(total=solver.param.max_iter, initial=solver.iter, unit="it", leave=False, file=sys.stderr)
    solver.add_hook("after_update", lambda s, **_: bar.update(1))
    return bar


def _hms(seconds):
    s = int(seconds)
    h, m = s // 3600, (s // 60) % 60
    return (f"{h}h " if h else "") + (f"{m}m " if h or m else "") + f"{s % 60}s"
