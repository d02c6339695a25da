"""Parse training logs of BVLC Caffe, NVCaffe, caffe-jacinto and caffelite into train and test tables.

All of them write glog lines (``I0916 10:06:51.015508 19004 solver.cpp:319] ...``; newer glog puts the year
in the date: ``I20261125``). What we read:

* ``Iteration N (...), loss = L`` / ``Iteration N, loss = L`` (also NVCaffe's ``(0.44 s)`` and 0.17's
  ``a/b ep, `` forms) → train loss (the smoothed value Caffe displays);
* ``Train net output #k: name = v`` → train outputs of that iteration;
* ``Iteration N, lr = X[, m = M[, wd = W, gs = G]]`` → learning rate (and momentum etc.);
* ``Iteration N, Testing net (#k)`` followed by ``Test net output #j: name = v`` → one test row per block;
* ``caffe test`` logs (the reference ``test``/``test_quantize`` run.logs): ``Batch i, name = v`` → one row per
  batch, and the closing ``Loss: L`` + ``name = mean[ (* w = l loss)]`` lines → the final averages.

Everything else (layer setup, sparsity, quantization, multi-GPU chatter) is ignored. Timestamps become
seconds since the first line, as BVLC's ``tools/extra/parse_log.py`` does.
"""

from __future__ import annotations

import datetime as _dt
import math
import re

_PREFIX = re.compile(r"^([IWEF])(\d{8}|\d{4}) (\d\d):(\d\d):(\d\d)\.(\d+)\s+\S+\s+[^\]]*\] ?(.*)$")
_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|-?inf|NaN|-?Inf))"
_TRAIN_LOSS = re.compile(r"^Iteration (\d+)(?: \([^)]*\))?,? (?:[\d.]+/[\d.]+ ?ep, )?loss = " + _NUM)
_LR = re.compile(r"^Iteration (\d+), lr = " + _NUM + r"(?:, m = " + _NUM + r")?(?:, wd = " + _NUM + r")?")
_TESTING = re.compile(r"^(?:\[MultiGPU\] )?Iteration (\d+), Testing net \(#(\d+)\)")
_OUTPUT = re.compile(r"^\s*(Train|Test) net output #(\d+): (.+?) = " + _NUM)
_BATCH = re.compile(r"^Batch (\d+), (.+?) = " + _NUM + "$")
_FINAL_LOSS = re.compile(r"^Loss: " + _NUM + "$")
_FINAL = re.compile(r"^(\S[^=]*?) = " + _NUM + r"(?: \(\* .* loss\))?$")


def _seconds(m, state):
    """Seconds since the first timestamp; handles a year boundary in year-less glog dates."""
    date = m.group(2)
    year = int(date[:4]) if len(date) == 8 else 2000
    month, day = int(date[-4:-2]), int(date[-2:])
    try:
        t = _dt.datetime(year, month, day, int(m.group(3)), int(m.group(4)), int(m.group(5)),
                         int(m.group(6)[:6].ljust(6, "0")))
    except ValueError:
        return None
    if state.get("t0") is None:
        state["t0"] = t
    if len(date) == 4 and (t - state["t0"]).days < -180:  # Dec -> Jan without a year in the prefix
        t = t.replace(year=t.year + 1)
    return (t - state["t0"]).total_seconds()


def _float(s):
    try:
        return float(s)
    except ValueError:
        return math.nan


def parse_log(lines):
    """Parse log lines (an iterable of str, or a whole text) into ``(train_rows, test_rows)``.

    Each row is a dict: ``NumIters``, ``Seconds``, ``LearningRate`` then the outputs by name (train rows also
    ``loss`` from the ``Iteration N ..., loss =`` line under the key ``smoothed_loss``; test rows ``TestNet``).
    """
    parsed = parse_log_all(lines)
    return parsed["train"], parsed["test"]


def parse_log_all(lines):
    """Everything :func:`parse_log` reads plus a ``caffe test`` log's batches: a dict with ``train`` and
    ``test`` rows (as :func:`parse_log`), ``batches`` (``Batch``, ``Seconds`` and the outputs of each scored
    batch) and ``final`` (``{"Loss": L, output: mean}`` of the closing lines, empty when absent)."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    state = {}
    train, test, batches, final = {}, [], {}, {}
    lr = math.nan
    cur_iter = None
    test_row = None
    in_final = False
    for raw in lines:
        m = _PREFIX.match(raw.rstrip("\n"))
        if not m:
            continue
        msg = m.group(7)
        secs = _seconds(m, state)
        if in_final:
            mm = _FINAL.match(msg)
            if mm:
                final[mm.group(1)] = _float(mm.group(2))
                continue
            in_final = False
        mm = _BATCH.match(msg)
        if mm:
            b = int(mm.group(1))
            batches.setdefault(b, {"Batch": b, "Seconds": secs})[mm.group(2)] = _float(mm.group(3))
            continue
        mm = _FINAL_LOSS.match(msg)
        if mm and batches:
            final = {"Loss": _float(mm.group(1))}
            in_final = True
            continue
        mm = _TESTING.match(msg)
        if mm:
            test_row = {"NumIters": int(mm.group(1)), "Seconds": secs, "LearningRate": lr,
                        "TestNet": int(mm.group(2))}
            test.append(test_row)
            continue
        mm = _OUTPUT.match(msg)
        if mm:
            kind, name, val = mm.group(1), mm.group(3), _float(mm.group(4))
            if kind == "Test":
                if test_row is not None:
                    test_row[name] = val
            elif cur_iter is not None:
                train[cur_iter][name] = val
            continue
        mm = _TRAIN_LOSS.match(msg)
        if mm:
            cur_iter = int(mm.group(1))
            row = train.setdefault(cur_iter, {"NumIters": cur_iter, "Seconds": secs, "LearningRate": math.nan})
            row["smoothed_loss"] = _float(mm.group(2))
            test_row = None
            continue
        mm = _LR.match(msg)
        if mm:
            it = int(mm.group(1))
            lr = _float(mm.group(2))
            row = train.setdefault(it, {"NumIters": it, "Seconds": secs, "LearningRate": lr})
            row["LearningRate"] = lr
            if mm.group(3) is not None:
                row["momentum"] = _float(mm.group(3))
            if mm.group(4) is not None:
                row["weight_decay"] = _float(mm.group(4))
            continue
    rows = [train[k] for k in sorted(train)]
    last = math.nan
    for r in rows:  # the rate holds between display lines (BVLC's parse_log.py does the same)
        if math.isnan(r["LearningRate"]):
            r["LearningRate"] = last
        last = r["LearningRate"]
    return {"train": rows, "test": test, "batches": [batches[k] for k in sorted(batches)], "final": final}


def parse_log_file(path, everything=False):
    """``parse_log`` of a file (any encoding errors replaced); ``everything=True``: ``parse_log_all``'s dict."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_log_all(f) if everything else parse_log(f)


def columns(rows):
    """The column names of ``rows`` in first-seen order (the fixed ones first)."""
    cols = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def to_csv(rows, delimiter=","):
    """Rows as CSV text (missing values empty, floats with repr precision)."""
    cols = columns(rows)
    out = [delimiter.join(cols)]
    for r in rows:
        vals = []
        for c in cols:
            v = r.get(c)
            vals.append("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        out.append(delimiter.join(vals))
    return "\n".join(out) + "\n"
