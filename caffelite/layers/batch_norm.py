"""BatchNorm in both of its Caffe semantics, and conversion of its blobs between the file layouts.

**BVLC** (3 blobs ``[Σmean, Σvar, s]``, no scale/shift: a separate ``Scale`` layer follows):
``mean = b0/s``, ``var = b1/s`` (both 0 when ``s == 0``). ``use_global_stats`` defaults to ``phase == TEST``.
With batch statistics the sums are updated as ``s ← maf·s + 1``, ``b0 ← maf·b0 + μ``,
``b1 ← maf·b1 + m/(m−1)·σ²`` (m = N·H·W, σ² the biased two-pass variance); eps is added to the variance.

**caffe-jacinto / NVCaffe** (docs/jacinto-spec.md §d): blobs ``[mean, var, reserved(1)]`` plus ``[γ, β]`` with
``scale_bias`` (d.2). TEST always uses the running statistics, TRAIN always the batch's: ``use_global_stats``
is read but ignored (d.1, d.3). eps is floored at 1e-5 (d.1). Running averages (d.3) depend on the engine:
CUDNN (``DEFAULT`` too: the reference runs used cuDNN, d intro) blends with ``f = 1 − maf``, except that
``f = 1`` while the owning solver's iteration is 0, with the unbiased variance; CAFFE copies the batch
statistics on the layer's first two TRAIN forwards, then blends with maf, biased variance.

Which semantics: jacinto when ``scale_bias`` is true, a scale/bias filler is given (d.1: that forces
``scale_bias``) or ``engine`` is set (a jacinto-only field); BVLC otherwise. A Net that knows better (a 3-blob
BatchNorm of a caffe-jacinto net, say) sets ``layer.semantics = "jacinto"`` before ``setup``.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module, to_numpy
from ..blob import Blob
from ..errors import NetError
from ..fillers import fill
from ..layer import TEST, Layer, register
from ..ops import batch_norm as B
from .common import copy_into

#: caffe-jacinto's floor on eps (docs/jacinto-spec.md §d.1; also cuDNN's CUDNN_BN_MIN_EPSILON)
JACINTO_MIN_EPS = 1e-5
BVLC, JACINTO = "bvlc", "jacinto"


def is_jacinto_param(layer_param) -> bool:
    """Whether a BatchNorm LayerParameter asks for caffe-jacinto semantics (see the module docstring)."""
    bp = layer_param.batch_norm_param
    return bool(bp.scale_bias or bp.HasField("scale_filler") or bp.HasField("bias_filler")
                or bp.HasField("engine"))


def has_scale_bias(layer_param) -> bool:
    """docs/jacinto-spec.md §d.1: ``scale_bias``, forced true when either filler is given."""
    bp = layer_param.batch_norm_param
    return bool(bp.scale_bias or bp.HasField("scale_filler") or bp.HasField("bias_filler"))


def _as_vec(a):
    return np.asarray(to_numpy(a), dtype=np.float32).reshape(-1)


def _err(layer_param, message):
    return NetError(message, layer_param.name, "BatchNorm")


def convert_blobs(arrays, layer_param, *, source=None, scale=None, target=None):
    """Convert BatchNorm blobs read from a weight file to the layout of a layer built from ``layer_param``.

    Contract (for the Net's weight copy; call it whenever the file's BatchNorm blobs differ in count from
    the layer's, or come from the other dialect):

    * ``arrays``: the file's blobs in file order (any array-likes; legacy 4-D shapes are fine).
    * ``source``: ``"bvlc"`` (3 blobs ``[Σmean, Σvar, s]``) or ``"jacinto"`` (``[mean, var, reserved(, γ, β)]``);
      ``None`` means BVLC for 3 blobs and jacinto for 5.
    * ``scale``: optional ``(γ, β_or_None)`` of the BVLC ``Scale`` layer that follows a BVLC BatchNorm, to fill
      γ/β of a 5-blob layer (otherwise γ = 1, β = 0).
    * ``target``: the layer's semantics (``layer.semantics``), ``"bvlc"`` or ``"jacinto"``; ``None`` derives
      it from ``layer_param`` as :class:`BatchNormLayer` does (pass it when the Net overrode the semantics).
    * Returns a list of float32 NumPy arrays shaped ``[C], [C], [1]`` (+ ``[C], [C]`` when the layer has
      ``scale_bias``), in caffe-jacinto order.

    Mappings (docs/jacinto-spec.md §d.5): a 5-blob source whose ``blobs[4]`` has one element (and C > 1) is the legacy
    NVCaffe/DIGITS order ``[γ, β, mean, var, reserved]`` and is permuted first. BVLC → jacinto:
    ``mean = Σmean·k``, ``var = Σvar·k``, ``k = 0 if s == 0 else 1/s``. Any → 3-blob layer: plain statistics
    with ``s = [1]``, which both semantics read correctly (a 0.16 reserved 0 would zero them under BVLC);
    except that a 3-blob BVLC source into a BVLC-semantics layer is returned unchanged (its ``s`` weighs the
    history of the running sums in TRAIN). A 5-blob source into a 3-blob layer
    raises a NetError unless γ = 1 and β = 0 (they would be lost: add ``scale_bias: true`` or a Scale layer;
    :func:`split_for_bvlc` gives them for a BVLC writer).
    """
    src = [np.asarray(to_numpy(a), dtype=np.float32) for a in arrays]
    n = len(src)
    if n not in (3, 5):
        raise _err(layer_param, f"cannot read BatchNorm weights with {n} blobs (expected 3 or 5)")
    source = source or (BVLC if n == 3 else JACINTO)
    if source not in (BVLC, JACINTO) or (source == BVLC and n != 3):
        raise _err(layer_param, f"BatchNorm weights: bad source layout {source!r} for {n} blobs")
    vec = [a.reshape(-1) for a in src]
    if n == 5 and vec[4].size == 1 and vec[0].size != 1:
        vec = [vec[2], vec[3], vec[4], vec[0], vec[1]]  # legacy DIGITS order (§d.5)
    c = vec[0].size
    if vec[1].size != c or vec[2].size != 1 or (n == 5 and (vec[3].size != c or vec[4].size != c)):
        raise _err(layer_param, "BatchNorm weights: blob sizes " + ", ".join(str(v.size) for v in vec)
                   + f" do not fit {c} channels")
    one = np.ones(1, np.float32)
    if source == BVLC:
        s = float(vec[2][0])
        k = np.float32(0.0 if s == 0 else 1.0 / s)
        mean, var = vec[0] * k, vec[1] * k
        gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
        if scale is not None:
            gamma = _as_vec(scale[0])
            beta = np.zeros(c, np.float32) if len(scale) < 2 or scale[1] is None else _as_vec(scale[1])
        reserved = one
    else:
        mean, var, reserved = vec[0], vec[1], vec[2]
        gamma = vec[3] if n == 5 else np.ones(c, np.float32)
        beta = vec[4] if n == 5 else np.zeros(c, np.float32)
    if has_scale_bias(layer_param):
        return [mean.copy(), var.copy(), reserved.copy(), gamma.copy(), beta.copy()]
    if target is None:
        target = JACINTO if is_jacinto_param(layer_param) else BVLC
    if source == BVLC and target == BVLC:
        return [v.copy() for v in vec]
    if not (np.all(gamma == 1) and np.all(beta == 0)):
        raise _err(layer_param, "the weights hold a BatchNorm scale and bias (5 blobs) but the layer has no "
                   "scale_bias: set batch_norm_param { scale_bias: true } or follow it with a Scale layer")
    return [mean.copy(), var.copy(), one]


def split_for_bvlc(arrays):
    """A jacinto BatchNorm's blobs → ``([mean, var, s=[1]], γ, β)`` for BVLC's BatchNorm + Scale (§d.5)."""
    vec = [np.asarray(to_numpy(a), dtype=np.float32).reshape(-1) for a in arrays]
    if len(vec) == 5 and vec[4].size == 1 and vec[0].size != 1:
        vec = [vec[2], vec[3], vec[4], vec[0], vec[1]]
    c = vec[0].size
    gamma = vec[3] if len(vec) == 5 else np.ones(c, np.float32)
    beta = vec[4] if len(vec) == 5 else np.zeros(c, np.float32)
    return [vec[0].copy(), vec[1].copy(), np.ones(1, np.float32)], gamma.copy(), beta.copy()


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Caffe's BatchNorm, BVLC or caffe-jacinto semantics (module docstring).

    Attributes a Net or solver may set: ``semantics`` (``"bvlc"``/``"jacinto"``, before ``setup``) and
    ``solver_iter`` (the owning solver's iteration, read by the jacinto CUDNN running average, which
    overwrites the statistics throughout iteration 0, §d.3; :meth:`Net.set_iteration` sets it, and a solver
    calls that before each iteration's forwards, so ``iter_size > 1`` and resumed runs are right.
    While it is ``None`` the layer's own count of TRAIN forwards stands in: the first overwrites, later ones
    blend). ``needs_backward`` (set by the Net): in place in TEST, the input is copied for dγ only then.
    ``param_specs`` gives the forced ``(lr_mult, decay_mult)`` per blob (``decay_mult`` None = keep the
    prototxt's); ``setup`` also writes them into ``self.param.param`` as Caffe does, so a saved model
    carries them.
    """

    param_fields = {"batch_norm_param": ("use_global_stats", "moving_average_fraction", "eps", "scale_filler",
                                        "bias_filler", "scale_bias", "engine")}

    exact_num_bottom = 1
    exact_num_top = 1
    semantics = None
    solver_iter = None
    convert_blobs = staticmethod(convert_blobs)
    split_for_bvlc = staticmethod(split_for_bvlc)

    def setup(self, bottom, top):
        bp = self.param.batch_norm_param
        if self.semantics is None:
            self.semantics = JACINTO if is_jacinto_param(self.param) else BVLC
        if self.semantics not in (BVLC, JACINTO):
            raise self.error(f"unknown BatchNorm semantics {self.semantics!r}")
        shape = bottom[0].shape
        self.channels = shape[1] if len(shape) > 1 else 1
        self.maf = float(bp.moving_average_fraction)
        xp = get_array_module(bottom[0].data)
        dtype = bottom[0].dtype
        c = self.channels
        if self.semantics == BVLC:
            self.use_global = bool(bp.use_global_stats) if bp.HasField("use_global_stats") else self.phase == TEST
            self.eps = float(bp.eps)
            self.scale_bias = False
            self.blobs = [Blob((c,), dtype, xp), Blob((c,), dtype, xp), Blob((1,), dtype, xp)]
            self.param_specs = [(0.0, None)] * 3
            # BVLC: missing specs get lr_mult 0; a configured nonzero lr_mult is an error
            for i in range(3):
                if len(self.param.param) == i:
                    self.param.param.add().lr_mult = 0.0
                elif i < len(self.param.param) and self.param.param[i].lr_mult != 0:
                    raise self.error("Cannot configure batch normalization statistics as layer parameters.")
        else:
            self.use_global = self.phase == TEST  # §d.1/d.3: use_global_stats is ignored
            self.eps = max(float(bp.eps), JACINTO_MIN_EPS)
            self.scale_bias = has_scale_bias(self.param)
            self.engine = "caffe" if bp.engine == bp.CAFFE else "cudnn"
            self._forwards = 0  # layer-local count of TRAIN forwards (the CAFFE engine's counter, §d.3)
            n = 5 if self.scale_bias else 3
            self.blobs = [Blob((c,), dtype, xp), Blob((c,), dtype, xp), Blob((1,), dtype, xp)]
            self.blobs[2].data[...] = 1  # 0.17 initialises the reserved blob to 1 (§d.2)
            if self.scale_bias:
                gamma, beta = Blob((c,), dtype, xp), Blob((c,), dtype, xp)
                gamma.data[...] = 1
                if bp.HasField("scale_filler"):
                    fill(gamma, bp.scale_filler)
                if bp.HasField("bias_filler"):
                    fill(beta, bp.bias_filler)
                self.blobs += [gamma, beta]
            # §c.2: forced ParamSpecs, overriding the prototxt
            self.param_specs = [(0.0, 0.0)] * 3 + [(1.0, 1.0)] * (n - 3)
            while len(self.param.param) < n:
                self.param.param.add()
            for spec, (lr, decay) in zip(self.param.param, self.param_specs, strict=False):
                spec.lr_mult, spec.decay_mult = lr, decay
        self.param_propagate_down = [lr != 0 for lr, _ in self.param_specs]
        self._x, self._xbuf = None, None
        self.xhat = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        c = shape[1] if len(shape) > 1 else 1
        if c != self.channels:
            raise self.error(f"bottom has {c} channels, the layer was set up for {self.channels}")
        self.n = shape[0] if shape else 1
        self.m = bottom[0].count // max(self.channels, 1)  # values per channel, N·H·W
        top[0].reshape(shape)

    def _view(self, a):
        return a.reshape(self.n, self.channels, -1)

    def _vec(self, a):
        return a.reshape(1, self.channels, 1)

    def _running(self):
        """(mean, var) from the stored statistics."""
        b0, b1, b2 = (b.data.reshape(-1) for b in self.blobs[:3])
        if self.semantics == JACINTO:
            return b0, b1
        xp = get_array_module(b0)
        s = b2[0]
        k = xp.where(s == 0, xp.zeros_like(s), 1 / xp.where(s == 0, xp.ones_like(s), s))
        return b0 * k, b1 * k

    def _update_running(self, mean, var):
        b0, b1, b2 = (b.data.reshape(-1) for b in self.blobs[:3])
        m = self.m
        unbias = m / (m - 1) if m > 1 else 1.0
        if self.semantics == BVLC:
            b2[...] = b2 * self.maf + 1
            b0[...] = b0 * self.maf + mean
            b1[...] = b1 * self.maf + unbias * var
            return
        if self.engine == "cudnn":
            it = self._forwards if self.solver_iter is None else self.solver_iter
            f = 1.0 if it == 0 else 1.0 - self.maf
            var = var * unbias
        else:
            f = 1.0 if self._forwards <= 1 else 1.0 - self.maf
        self._forwards += 1
        if f == 1.0:
            b0[...], b1[...] = mean, var
        else:
            b0[...] = (1 - f) * b0 + f * mean
            b1[...] = (1 - f) * b1 + f * var

    def inference_affine(self, bottom):
        """Per-channel (scale, shift) with ``top = bottom * scale + shift`` when this layer uses the stored
        statistics now (TEST, or use_global_stats in BVLC semantics); None when it normalises with the batch's.
        Used by inference fusion (:mod:`caffelite.fusion`): the same mean, 1/sqrt(var + eps), γ and β as
        :meth:`forward`, folded into one affine."""
        if not self.use_global:
            return None
        xp = get_array_module(self.blobs[0].data)
        mean, var = self._running()
        scale = 1 / xp.sqrt(var + self.eps)
        if self.scale_bias:
            scale = scale * self.blobs[3].data.reshape(-1)
            shift = self.blobs[4].data.reshape(-1) - mean * scale
        else:
            shift = -mean * scale
        return scale, shift

    def forward(self, bottom, top):
        xp = get_array_module(bottom[0].data)
        x = self._view(bottom[0].data)
        y = self._view(top[0].data)
        gamma = self._vec(self.blobs[3].data) if self.scale_bias else None
        if self.use_global:
            mean, var = self._running()
            self.mean = self._vec(mean)
            self.inv_std = self._vec(1 / xp.sqrt(var + self.eps))
            self.xhat = None
            # dγ needs x̂, rebuilt from the input in backward: the bottom itself, or (in place, where a later
            # in-place layer such as ReLU may rewrite the top) a copy, kept only when backward will run
            if top[0] is not bottom[0]:
                self._x = x
            elif self.scale_bias and self.needs_backward:
                self._x = self._xbuf = copy_into(self._xbuf, x)
            else:
                self._x = None
            B.inference_forward(x, y, self.mean, self.inv_std, gamma,
                                None if gamma is None else self._vec(self.blobs[4].data))
            return
        self._train_forward(x, top[0].data)

    def _scratch(self, name, shape, like):
        """A work array kept on the layer across iterations (made anew when the shape or dtype changes)."""
        xp = get_array_module(like)
        buf = getattr(self, name, None)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or get_array_module(buf) is not xp:
            buf = xp.empty(shape, like.dtype)
            setattr(self, name, buf)
        return buf

    def _train_forward(self, x, top_data):
        """Batch statistics (:func:`caffelite.ops.batch_norm.train_forward`); x̂ is kept for backward (an in-place
        successor such as ReLU may rewrite the top before it)."""
        gamma = self.blobs[3].data.reshape(-1) if self.scale_bias else None
        beta = self.blobs[4].data.reshape(-1) if self.scale_bias else None
        self.xhat = self._scratch("_xhbuf", x.shape, x) if self.needs_backward else None
        mean, var, inv = B.train_forward(x, top_data, gamma, beta, self.eps, self.xhat, self._scratch)
        self._update_running(mean, var)
        self.inv_std = self._vec(inv)

    def _global_xhat(self):
        """x̂ under global statistics, rebuilt for dγ from the input kept by forward."""
        if self._x is None:
            raise self.error("backward after an in-place forward that kept no input (needs_backward was False)")
        return (self._x - self.mean) * self.inv_std

    def backward(self, top, propagate_down, bottom):
        if not self.use_global:
            self._train_backward(top, propagate_down, bottom)
            return
        xp = get_array_module(top[0].diff)
        dy = self._view(top[0].diff)
        scale = self.inv_std
        if self.scale_bias:
            xhat = self._global_xhat()
            self._param_diffs(B.chan_sum(dy * xhat), B.chan_sum(dy))
            scale = scale * self._vec(self.blobs[3].data)
        if propagate_down[0]:
            xp.multiply(dy, scale, out=self._view(bottom[0].diff))

    def _param_diffs(self, dgamma, dbeta):
        if self.engine == "caffe":  # §d.4: the CAFFE engine overwrites its param diffs
            self.blobs[3].diff[...], self.blobs[4].diff[...] = dgamma, dbeta
        else:
            self.blobs[3].diff[...] += dgamma
            self.blobs[4].diff[...] += dbeta

    def _train_backward(self, top, propagate_down, bottom):
        """Batch statistics (:func:`caffelite.ops.batch_norm.train_backward`), from the x̂ forward kept."""
        if self.xhat is None:
            raise self.error("backward after a TRAIN forward that kept nothing (needs_backward was False)")
        gamma = self.blobs[3].data.reshape(-1) if self.scale_bias else None
        dgamma, dbeta = B.train_backward(top[0].diff, self.xhat, self.inv_std.reshape(-1), gamma,
                                         bottom[0].diff if propagate_down[0] else None, self._scratch)
        if self.scale_bias:
            self._param_diffs(dgamma, dbeta)


__all__ = ["BatchNormLayer", "convert_blobs", "split_for_bvlc", "is_jacinto_param", "has_scale_bias"]
