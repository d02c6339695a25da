"""Which integer kernel a convolution runs: :class:`AutoConv` times the dense and the sparse kernel of one
convolution on its first calls and keeps the faster; :func:`sparse_worthwhile` says when the sparse kernel is worth
timing at all (the nonzero fractions below which it was faster on this project's measurements). Both kernels give
the same integers (:mod:`caffelite.ops.int8`).
"""

from __future__ import annotations

import time

import numpy as np

from .int8 import PackedConv, Requant
from .int8_lib import _LIB, SINGLES_ISAS, pack_weights
from .im2col import ConvGeometry


#: :class:`AutoConv` keeps the paired-singles sparse kernel unless the dense one (12-bit weights, 16-bit lanes)
#: was faster by more than this factor: at 20% nonzero weights the singles kernel took 0.5-0.65x the dense one's
#: time on every layer of jsegnet21v2, and a busy machine made two timings per kernel pick dense now and then
SINGLES_FAVOUR = 1.15


class AutoConv:
    """The dense and the sparse kernel of one convolution (same integers): the first calls alternate between
    them and time each; later calls run the faster (on this machine, for this layer and shape; the
    paired-singles kernel against dense 16-bit lanes wins ties within :data:`SINGLES_FAVOUR`).

    The choice is made once each kernel ran ``trials`` times if both the ratio of the fastest times and that of
    the median times are beyond :data:`AUTO_MARGIN` on the same side; else the trials go on (the two kernels
    being close, a trial costs little either way) until each ran ``max_trials`` times, and the median times
    decide. A single fast or slow timing (another process, a first call's page faults) thus cannot pick the
    slower kernel for good."""

    def __init__(self, w, g: ConvGeometry, group: int, rq: Requant, trials: int = 2, times: dict | None = None,
                 u8_input: bool = False, max_trials: int = 6, sparse_w=None, sparse_rq: Requant | None = None,
                 s8_input: bool = False, qmax: int | None = None):
        self.dense = PackedConv(w, g, group, rq, u8_input=u8_input, qmax=qmax)
        # the sparse kernel may take the weights on another zero point (one that keeps pruned weights zero, where
        # the dense u8 x s8 kernel needs them centred into int8), with that zero point's requantisation
        self.sparse_conv = PackedConv(w if sparse_w is None else sparse_w, g, group,
                                      rq if sparse_rq is None else sparse_rq, sparse=True, u8_input=u8_input,
                                      s8_input=s8_input, qmax=qmax)
        self.w, self.g, self.group, self.rq = self.dense.w, g, int(group), rq
        # ``times`` may be shared by the AutoConvs of one layer (e.g. under different output scales)
        self.times = times if times is not None else {}
        self.times.setdefault(False, [])
        self.times.setdefault(True, [])
        self.times.setdefault("favour", 1.0)  # SINGLES_FAVOUR once a trial ran the singles kernel against dense pairs
        self.trials = int(trials)
        self.max_trials = max(self.trials, int(max_trials))
        self._chosen = None  # the choice once made (no timing is added after it)

    @property
    def favour(self) -> float:
        """The factor the sparse kernel's time may exceed the dense one's by and still be kept."""
        return self.times["favour"]

    @property
    def choice(self):
        """True (sparse) / False (dense) once the timings decide (see the class), else None."""
        if self._chosen is None:
            self._chosen = self._decide()
        return self._chosen

    def _decide(self):
        ts, td = self.times[True], self.times[False]
        done = min(len(ts), len(td))
        if done < self.trials:
            return None
        fav = self.favour
        best, med = min(ts) / min(td), float(np.median(ts)) / float(np.median(td))
        if max(best, med) < fav / AUTO_MARGIN:
            return True
        if min(best, med) > fav * AUTO_MARGIN:
            return False
        if done < self.max_trials:
            return None
        return med < fav

    @property
    def sparse(self) -> bool:
        """Whether the sparse kernel was chosen (False until the choice is made)."""
        return bool(self.choice)

    def forward(self, q, isa: str | None = None, out=None):
        choice = self.choice
        if choice is not None:
            return (self.sparse_conv if choice else self.dense).forward(q, isa, out)
        use = len(self.times[True]) < len(self.times[False])
        singles = (self.sparse_conv if use else self.dense).prepare(q.shape, isa)  # tables, buffers: not timed
        if use and singles and not self.dense.quads:
            self.times["favour"] = SINGLES_FAVOUR
        t0 = time.perf_counter()
        res = (self.sparse_conv if use else self.dense).forward(q, isa, out)
        self.times[use].append(time.perf_counter() - t0)
        return res


#: :class:`AutoConv` decides after ``trials`` timings per kernel only when one kernel's time is below the other's
#: (times the favour) by this factor, both by their fastest and by their median times
AUTO_MARGIN = 1.15


def nonzero_pair_fraction(w, group: int) -> float:
    """The fraction of (two-channel) weight pairs with a nonzero weight: the sparse kernel's work relative to
    the dense one's multiply-adds."""
    pairs = pack_weights(np.asarray(w, np.int16), int(group), 1)
    return float(np.count_nonzero(pairs)) / max(1, pairs.size)


#: the channel-pairs sparse kernel does one load per multiply-add, the dense one shares a load among 8 output
#: channels; below this nonzero-pair fraction the sparse one was faster on jsegnet21v2's layers
#: (bench/int8_forward.py)
SPARSE_MAX_NONZERO_PAIRS = 0.4
#: the paired-singles kernel (AVX-512) against the dense 12-bit one on jsegnet21v2's layers: 0.5-0.65x the time
#: at 20% nonzero weights, 0.7-0.9x at 40%, 0.8-1.1x at 50% (one thread, random weights)
SINGLES_MAX_NONZERO = 0.4
#: the sparse quads kernels (VNNI, 8-bit inputs) against the dense kernel, sparse/dense time at 50/70/90% nonzero
#: weights (jsegnet21v2-like layers, 2 threads, 12-bit weights): conv1a (signed input) 0.73/0.75/0.79, conv1b
#: 0.87/0.93/0.97, res3a 0.65/0.79/0.98, ctx_final (8 outputs) 1.00/1.06/1.14; 8-bit weights: 0.71/0.72/0.75 on
#: conv1a, 1.14-1.6 on the others (the dense u8 x s8 kernel). Up to this fraction AutoConv times both and keeps
#: the faster
QUADS_MAX_NONZERO = 0.9


def sparse_worthwhile(w, group: int, quads: bool = False) -> bool:
    """Whether the sparse integer kernel should run (or, under :class:`AutoConv`, be timed on) these weights;
    ``quads``: the inputs fit 8 bits (unsigned, or signed run as x + 128), so on AVX-512 VNNI the sparse quads
    kernels can take the layer."""
    if _LIB is None:
        return False
    w = np.asarray(w)
    if quads and "vnni" in _LIB.supported:
        return np.count_nonzero(w) <= QUADS_MAX_NONZERO * w.size
    if set(SINGLES_ISAS) & set(_LIB.supported):
        return np.count_nonzero(w) <= SINGLES_MAX_NONZERO * w.size
    return nonzero_pair_fraction(w, group) <= SPARSE_MAX_NONZERO_PAIRS
