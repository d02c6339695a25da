"""Logging in glog's line format, so caffelite's logs read (and parse) like Caffe's.

Every line looks like Caffe's::

    I1125 14:23:38.123456 12345 solver.cpp:239] Iteration 0 (0 iter/s, 0s/1 iters), loss = 1.85316

Callers pass the Caffe source location the line imitates (``src="solver.cpp:239"``) so tools written for
Caffe logs (grep for ``solver.cpp``, BVLC's parse_log.py) keep working; without it the Python module and
line are used. Output goes to stderr, like glog's default for the ``caffe`` tool.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

LOGGER_NAME = "caffelite"
_LEVEL_CHAR = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
               logging.CRITICAL: "F"}


class GlogFormatter(logging.Formatter):
    """``<L><mmdd> <HH:MM:SS.uuuuuu> <thread id> <file>:<line>] <message>``, one prefix per text line."""

    def format(self, record):
        lt = time.localtime(record.created)
        micro = int((record.created - int(record.created)) * 1e6)
        src = getattr(record, "src", None) or f"{os.path.basename(record.pathname)}:{record.lineno}"
        tid = getattr(record, "tid", None) or (threading.get_native_id() if hasattr(threading, "get_native_id")
                                              else os.getpid())
        prefix = (f"{_LEVEL_CHAR.get(record.levelno, 'I')}{lt.tm_mon:02d}{lt.tm_mday:02d} "
                  f"{lt.tm_hour:02d}:{lt.tm_min:02d}:{lt.tm_sec:02d}.{micro:06d} {tid:>5} {src}] ")
        msg = record.getMessage()
        if record.exc_info:
            msg = msg + "\n" + self.formatException(record.exc_info)
        lines = msg.split("\n")
        # glog prints multi-line messages (e.g. a dumped prototxt) with the prefix on the first line only
        return prefix + "\n".join(lines)


def get_logger() -> logging.Logger:
    """caffelite's logger (configured lazily with a glog-format stderr handler; level from the environment,
    see :func:`setup_logging`)."""
    lg = logging.getLogger(LOGGER_NAME)
    if not getattr(lg, "_caffelite_configured", False):
        setup_logging()
    return lg


#: glog severities (GLOG_minloglevel, caffe.init_log) -> logging levels
_GLOG_SEVERITY = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def glog_level(severity) -> int:
    """The logging level of glog severity ``severity`` (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL)."""
    try:
        sev = int(severity)
    except (TypeError, ValueError):
        raise ValueError(f"glog severity must be 0-3 (INFO, WARNING, ERROR, FATAL), got {severity!r}") from None
    return _GLOG_SEVERITY[min(max(sev, 0), 3)]


def env_level() -> int:
    """The level glog's environment variables ask for: ``GLOG_minloglevel`` (0-3), and ``GLOG_v`` > 0 adds
    caffelite's DEBUG lines (glog's VLOG); INFO when neither is set."""
    level = logging.INFO
    raw = os.environ.get("GLOG_minloglevel", "").strip()
    if raw:
        try:
            level = glog_level(raw)
        except ValueError:
            raise ValueError(f"GLOG_minloglevel must be 0-3 (INFO, WARNING, ERROR, FATAL), got {raw!r}") from None
    v = os.environ.get("GLOG_v", "").strip()
    if v and level == logging.INFO and v.lstrip("-").isdigit() and int(v) > 0:
        level = logging.DEBUG
    return level


def set_log_level(level) -> None:
    """Set how much caffelite logs: a logging level (``logging.WARNING``) or its name (``"WARNING"``).

    Same as ``logging.getLogger("caffelite").setLevel(level)``; caffelite never overrides a level set
    either way (only the ``GLOG_minloglevel`` / ``GLOG_v`` environment applies when none was set)."""
    if isinstance(level, str):
        name = level.upper()
        if not isinstance(logging.getLevelName(name), int):
            raise ValueError(f"unknown log level {level!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
        level = logging.getLevelName(name)
    logging.getLogger(LOGGER_NAME).setLevel(int(level))


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (test captures and progress bars replace it)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()

    def isatty(self):
        return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


STDERR = _Stderr()


def _truthy(name) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "y", "t")


def setup_logging(stream=None, level=None) -> logging.Logger:
    """(Re)configure caffelite's logger to write glog-format lines to ``stream`` (default: the current
    ``sys.stderr`` at each line).

    ``level=None`` keeps a level the user set on ``logging.getLogger("caffelite")`` and otherwise takes it
    from the environment (:func:`env_level`). ``GLOG_log_dir`` (unless ``GLOG_logtostderr`` is true) also
    writes the lines to ``<dir>/caffelite.<host>.<user>.log.INFO.<yyyymmdd-hhmmss>.<pid>``, as glog does.
    """
    lg = logging.getLogger(LOGGER_NAME)
    for h in list(lg.handlers):
        if getattr(h, "_caffelite", False):
            lg.removeHandler(h)
            if isinstance(h, logging.FileHandler):
                h.close()
    h = logging.StreamHandler(stream if stream is not None else STDERR)
    h._caffelite = True
    h.setFormatter(GlogFormatter())
    lg.addHandler(h)
    log_dir = os.environ.get("GLOG_log_dir", "").strip()
    if log_dir and not _truthy("GLOG_logtostderr"):
        import getpass
        import socket

        stamp = time.strftime("%Y%m%d-%H%M%S")
        fname = f"caffelite.{socket.gethostname()}.{getpass.getuser()}.log.INFO.{stamp}.{os.getpid()}"
        fh = logging.FileHandler(os.path.join(log_dir, fname))
        fh._caffelite = True
        fh.setFormatter(GlogFormatter())
        lg.addHandler(fh)
    ours = getattr(lg, "_caffelite_level", None)
    user_set = lg.level != logging.NOTSET and lg.level != ours
    if level is not None or not user_set:
        lg.setLevel(level if level is not None else env_level())
        lg._caffelite_level = lg.level
    lg.propagate = False
    lg._caffelite_configured = True
    return lg


def info(msg, src=None):
    """Log ``msg`` at INFO, attributing it to the Caffe source location ``src`` (e.g. ``"solver.cpp:239"``)."""
    get_logger().info(msg, extra={"src": src}, stacklevel=2)


def warning(msg, src=None):
    """Log ``msg`` at WARNING (glog ``W`` line)."""
    get_logger().warning(msg, extra={"src": src}, stacklevel=2)


def error(msg, src=None):
    """Log ``msg`` at ERROR (glog ``E`` line)."""
    get_logger().error(msg, extra={"src": src}, stacklevel=2)


def fmt(v) -> str:
    """A number as C++ ``ostream <<`` prints a float/double by default (``%g``, 6 significant digits)."""
    if isinstance(v, (bool, int)) and not isinstance(v, bool):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f != f:
        return "nan"
    if f in (float("inf"), float("-inf")):
        return "inf" if f > 0 else "-inf"
    return f"{f:.6g}"


class capture:
    """Context manager collecting the messages logged through caffelite's logger (tests, tools)::

        with capture() as messages:
            solver.step(1)
    """

    def __enter__(self):
        self.messages = []
        outer = self

        class _H(logging.Handler):
            def emit(self, record):
                outer.messages.append(record.getMessage())

        self._h = _H(level=logging.DEBUG)
        get_logger().addHandler(self._h)
        return self.messages

    def __exit__(self, *exc):
        get_logger().removeHandler(self._h)
        return False
