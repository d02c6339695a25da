"""Flags shared by Caffe's tool subcommands (``train``, ``test``, ``time``), in gflags' manner.

* Boolean flags accept every gflags spelling: ``--flag``, ``--flag=true|false|1|0|yes|no`` and ``--noflag``
  (``-flag`` and ``-flag=x`` are normalised to ``--`` by :func:`caffelite.cli.main`).
* ``--quant-ranges freeze|save FILE|load FILE`` (beyond caffe-jacinto): quantized evaluation that does
  not depend on the order of the images (docs/jacinto-spec.md §b.4: its running ranges follow every batch).
* A progress bar on a terminal only; while it shows, log lines are written above it (``tqdm.write``), so
  redirected logs stay byte-for-byte Caffe's lines.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from .. import log as glog
from ..errors import CaffeliteError, DeviceError

_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")

QUANT_RANGES_HELP = (
    "quantized nets (quantize: true): 'freeze' measures the activation ranges on the first quantization_start "
    "batches, then keeps them fixed; 'save FILE' writes the final ranges (JSON) after the run; 'load FILE' uses "
    "the ranges of such a file, frozen. With frozen ranges every batch is quantized with the same parameters, "
    "so scores do not depend on the image order (caffe-jacinto updates them after every batch, "
    "docs/jacinto-spec.md §b.4). With several quantizing nets (train + test nets) net k>0 uses FILE.k")


def add_net_flags(parser, *, phase, weights_help, iterations_help):
    """The net flags ``caffe test`` and ``caffe time`` share: model, weights, iterations (50), phase, gpu,
    level, stage."""
    parser.add_argument("--model", default="", help="the net definition prototxt")
    parser.add_argument("--weights", default="", help=weights_help)
    parser.add_argument("--iterations", type=int, default=50, help=f"{iterations_help} (default 50)")
    parser.add_argument("--phase", default=phase, type=str.upper, choices=("TRAIN", "TEST"),
                        help=f"net phase (default {phase})")
    parser.add_argument("--gpu", default="", help="GPU id to use (the first of several); CPU when empty")
    parser.add_argument("--level", type=int, default=0, help="the NetState level")
    parser.add_argument("--stage", default="", help="NetState stages, comma-separated")


def build_net(args, command, what):
    """Check the shared flags, pick the device and build the Net (``--model`` as a NetParameter, read once),
    with ``--weights`` (comma-separated: each applied in turn) copied in; returns ``(net, model_param)``."""
    from .. import io
    from .. import jacinto  # noqa: F401  (registers its net extension and the int8 engine, as caffelite.Net does)
    from ..net import Net
    if not args.model:
        raise CaffeliteError(f"Need a model definition to {what}.")
    if args.iterations <= 0:
        raise CaffeliteError("--iterations must be positive")
    select_device(parse_gpus(args.gpu), command=command)
    model_param = io.read_net(args.model)
    net = Net(model_param, 0 if args.phase == "TRAIN" else 1, level=args.level, stages=stages(args.stage))
    for w in [w for w in args.weights.split(",") if w]:
        net.copy_from(w)
    return net, model_param


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


def stages(text):
    """``--stage a,b`` → ``["a", "b"]`` (Caffe splits on commas)."""
    return [s for s in (text or "").split(",") if s]


def _parse_bool(text):
    t = str(text).strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_bool_flag(parser, name, help, default=False):
    """A gflags boolean: ``--name``, ``--name=false`` (any of true/false/1/0/yes/no) and ``--noname``."""
    dest = name.replace("-", "_")
    parser.add_argument(f"--{name}", dest=dest, nargs="?", const=True, default=default, type=_parse_bool,
                        metavar="BOOL", help=f"{help} (default {str(default).lower()})")
    parser.add_argument(f"--no{name}", dest=dest, action="store_false", help=argparse.SUPPRESS)


class _QuantRanges(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        mode, rest = values[0], values[1:]
        if mode not in ("freeze", "save", "load"):
            parser.error(f"{option_string}: unknown mode '{mode}' (freeze, save FILE or load FILE)")
        if mode == "freeze" and rest:
            parser.error(f"{option_string} freeze takes no FILE")
        if mode != "freeze" and len(rest) != 1:
            parser.error(f"{option_string} {mode} needs exactly one FILE")
        setattr(namespace, self.dest, (mode, rest[0] if rest else None))


def add_quant_ranges(parser):
    """``--quant-ranges`` (also ``--quant_ranges``): ``freeze``, ``save FILE`` or ``load FILE``."""
    parser.add_argument("--quant-ranges", "--quant_ranges", dest="quant_ranges", nargs="+", action=_QuantRanges,
                        metavar=("MODE", "FILE"), default=None, help=QUANT_RANGES_HELP)


def apply_quant_ranges(hooks, option):
    """Apply a parsed ``--quant-ranges`` to ``hooks`` (the namespace ``jacinto.attach_from_proto`` returns);
    returns the function to call after the run (it writes the file for ``save``)."""
    if option is None:
        return lambda: None
    mode, path = option
    quant = list(getattr(hooks, "quantization", None) or [])
    if not quant:
        raise CaffeliteError(f"--quant-ranges {mode}: the net does not quantize (no 'quantize: true' and no "
                             "quantization_param)")
    from ..jacinto import quant_ranges_option
    try:
        finish = quant_ranges_option(quant, mode, path)
    except (OSError, ValueError, KeyError) as e:
        raise CaffeliteError(f"--quant-ranges {mode} {path or ''}: {e}".replace("  ", " ")) from None
    return finish


class _BarStream:
    """A stream for the log handler that prints above a tqdm bar instead of through it."""

    def __init__(self, tqdm_cls, file):
        self._tqdm, self._file = tqdm_cls, file

    def write(self, text):
        text = text.rstrip("\n")
        if text:
            self._tqdm.write(text, file=self._file)

    def flush(self):
        self._file.flush()


@contextlib.contextmanager
def progress_bar(total, initial=0, unit="it", desc=None):
    """A tqdm bar on stderr when stderr is a terminal, else None; log lines go above it meanwhile."""
    stream = sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a core dependency
        yield None
        return
    lg = glog.get_logger()
    handlers = [h for h in lg.handlers if getattr(h, "_caffelite", False)
                and getattr(h, "stream", None) in (stream, glog.STDERR)]
    bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, leave=False, file=stream, dynamic_ncols=True)
    old = [h.setStream(_BarStream(tqdm, stream)) for h in handlers]
    try:
        yield bar
    finally:
        for h, s in zip(handlers, old, strict=True):
            h.setStream(s)
        bar.close()
