"""Sparse convolution forward: the nonzero weights of each output channel packed once, run by a compiled kernel.

Packing (:func:`pack_weights`): weights (Cout, Cg, kh, kw) become, per output channel m, the list of its
nonzero taps in (input channel, ky, kx) order: ``ptr`` (Cout+1, int32) delimits channel m's taps, ``idx``
(uint16) is the tap's position c*kh*kw + i*kw + j inside the group, ``val`` (float32) its weight. That is 6
bytes per nonzero weight plus 4 per channel: at 80% zeros about 0.3x the dense float32 weights. The table of
input offsets per tap position depends on the input size; it is built on the first forward at a size and
cached on the pack (one entry per position, not per weight), as are the row-block kernel's per-tap block offsets
(uint16: 2 more bytes per nonzero weight, about 0.42x in all on jsegnet21v2) and the direct kernel's per-tap
input offsets (int64: 8 more bytes per nonzero weight of the layers it runs, jsegnet21v2's conv1b and ctx_final).

Two compiled kernels (``caffelite/_native/csparse.c``), chosen per layer by :func:`choose_kernel`:

- the row-block kernel (``sparse_cols_kernel.h``): per tile of output rows x pixel vectors and input-channel
  chunk, the input the tile reads is copied once into an aligned L1 block (one row per channel, kernel column
  and input row), then every output channel sums its taps x aligned block vectors. Used when a group has
  enough output channels to share the copy (:data:`COLS_MIN_CHANNEL_DENSITY`) and for depthwise layers;
- the direct kernel (``sparse_kernel.h``): tap x shifted (unaligned) input vectors, no copy; for groups with
  few output channels.

Both sum each output channel's taps in the dense kernel's order, with the dense kernel's fused
BatchNorm/Scale/ReLU epilogue; skipping zero products leaves float sums of finite values unchanged, so the
result equals the dense kernel's to the bit (and the NumPy reference to float rounding). Each output value is
computed by one task: results do not depend on the thread count (``CAFFELITE_NUM_THREADS``, shared with the
dense kernels).

When the layer runs sparse is decided by :mod:`caffelite.ops.engine`; whether sparse pays off for a layer is
its zero fraction against :data:`AUTO_MIN_ZERO_FRACTION`, measured by ``bench/sparse_breakeven.py``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import numpy as np

from . import native
from .depthwise import is_depthwise
from .im2col import ConvGeometry

#: zero fraction from which ``auto`` runs a layer sparse, by kind of layer: the largest break-even measured by
#: bench/sparse_breakeven.py (jsegnet21v2's layer shapes at 512x1024, 2 threads, AVX-512, against the path dense
#: takes: the direct kernel, BLAS for 1x1, NumPy shifts for depthwise; sparse with the kernel choose_kernel picks)
#: rounded up to the next 0.1. Measured break-evens (two runs): direct <=0.30-0.61 (conv1a's 3-channel input,
#: conv1b's and ctx_final's 8-channel groups on the direct sparse kernel the latest: 0.54-0.61), pointwise
#: <=0.30, depthwise <=0.30 (0.3 is the lowest fraction measured).
AUTO_MIN_ZERO_FRACTION = {"direct": 0.7, "pointwise": 0.4, "depthwise": 0.4}
#: largest Cg*kh*kw a pack can index (uint16 tap positions); wider layers run dense
MAX_TAP_POSITIONS = 1 << 16


class _Taps(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("off", ctypes.c_void_p), ("val", ctypes.c_void_p)]


class _ColsTaps(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("off", ctypes.c_void_p), ("val", ctypes.c_void_p),
                ("otab", ctypes.c_void_p)]


class _SGeom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("N", "C", "Hp", "S", "Wq", "Cout", "Cg", "Mg", "sh", "Ho", "Wo", "rg", "mb", "nch", "kc", "kh",
                 "kw", "dh", "ni", "rt", "vt", "H", "W", "ph", "pw", "hl")]


class _Lib(native.KernelLibrary):
    """The sparse kernel library."""

    label = "native sparse convolution kernel"

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        if (lib.cs_geom_size() != ctypes.sizeof(_SGeom) or lib.cs_taps_size() != ctypes.sizeof(_Taps)
                or lib.cs_cols_taps_size() != ctypes.sizeof(_ColsTaps)
                or lib.cs_epilogue_size() != ctypes.sizeof(native._Epilogue)):
            raise ImportError(f"{path}: struct layout mismatch (rebuild caffelite: pip install -e .)")
        ptr, lng = ctypes.c_void_p, ctypes.c_long
        lib.cs_sparse_fwd.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, ptr, lng, lng]
        lib.cs_sparse_cols_fwd.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, ptr, lng, lng]
        super().__init__(lib, lib.cs_isa_mask())

    def isa_for(self, width: int):
        """The widest instruction set up to the chosen one whose vectors fit an output row (None: too narrow)."""
        best = None
        for name in self.supported[:self.supported.index(self.isa) + 1]:
            if self.lib.cs_vector_width(native._ISAS.index(name)) <= width:
                best = name
        return best


_LIB = native.load_library("caffelite._native._csparse", _Lib)


def available() -> bool:
    """Whether the compiled sparse kernel is built and loaded (``CAFFELITE_NATIVE=0`` turns it off)."""
    return _LIB is not None


def why_unavailable() -> str:
    """Why :func:`available` is False, in a few words."""
    import os
    if os.environ.get("CAFFELITE_NATIVE", "1").strip().lower() in ("0", "no", "off", "false"):
        return "CAFFELITE_NATIVE turns the compiled kernels off"
    return "caffelite._native._csparse is not built or failed to load"


def info() -> str:
    """One line for logs and benchmarks."""
    if _LIB is None:
        return f"native sparse kernel: off ({why_unavailable()})"
    return f"native sparse kernel: {_LIB.isa} ({', '.join(_LIB.supported)} supported), {_LIB.threads} threads"


@dataclass
class SparsePack:
    """The nonzero taps of a convolution's weights (see the module docstring) and where they came from."""

    ptr: np.ndarray
    idx: np.ndarray
    val: np.ndarray
    shape: tuple
    group: int
    source: int = 0          # address of the weight array packed (a replaced array is repacked)
    otabs: dict = field(default_factory=dict)
    chunk_ptrs: dict = field(default_factory=dict)
    col_offs: dict = field(default_factory=dict)
    tap_offs: dict = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        return int(self.val.size)

    @property
    def nbytes(self) -> int:
        """Bytes held by the pack: tap lists plus the cached per-chunking pointers and per-size offset tables."""
        cached = sum(a.nbytes for a in (*self.otabs.values(), *self.chunk_ptrs.values(), *self.col_offs.values(),
                                        *self.tap_offs.values()))
        return int(self.ptr.nbytes + self.idx.nbytes + self.val.nbytes + cached)

    def matches(self, w) -> bool:
        return self.source == w.__array_interface__["data"][0] and tuple(w.shape) == self.shape

    def chunk_ptr(self, kc: int) -> np.ndarray:
        """(Cout, nch + 1) int32: where each channel's taps of input channels q*kc.. start (the kernel's ptr)."""
        tab = self.chunk_ptrs.get(kc)
        if tab is None:
            cout, cg, kh, kw = self.shape
            k = cg * kh * kw
            nch = -(-cg // kc)
            counts = np.diff(self.ptr)
            keys = np.repeat(np.arange(cout, dtype=np.int64), counts) * k + self.idx
            bounds = np.minimum(np.arange(nch + 1) * kc * kh * kw, k)
            bounds[-1] = k
            tab = np.searchsorted(keys, np.arange(cout, dtype=np.int64)[:, None] * k + bounds[None, :]
                                  ).astype(np.int32)
            self.chunk_ptrs[kc] = tab
        return tab

    def block_off(self, kc: int, ni: int, dh: int, row: int) -> np.ndarray:
        """uint16 per tap (c, i, j): its first row in the row-block kernel's block, ((c % kc) * kw + j) * ni + i * dh,
        times ``row`` floats (the caller keeps blocks within 64K floats)."""
        key = (kc, ni, dh, row)
        tab = self.col_offs.get(key)
        if tab is None:
            kh, kw = self.shape[2:]
            c, rest = np.divmod(self.idx.astype(np.int64), kh * kw)
            i, j = np.divmod(rest, kw)
            tab = ((((c % kc) * kw + j) * ni + i * dh) * row).astype(np.uint16)
            self.col_offs = {key: tab}  # one chunking at a time
        return tab

    def tap_offsets(self, g: ConvGeometry, hp: int, wq: int) -> np.ndarray:
        """int64 per tap: :meth:`otab` at the tap's position (the direct kernel's ``off``)."""
        key = (hp, wq, g.sw, g.dh, g.dw)
        tab = self.tap_offs.get(key)
        if tab is None:
            tab = np.ascontiguousarray(self.otab(g, hp, wq)[self.idx], dtype=np.int64)
            self.tap_offs = {key: tab}  # one input size at a time
        return tab

    def otab(self, g: ConvGeometry, hp: int, wq: int) -> np.ndarray:
        key = (hp, wq, g.sw, g.dh, g.dw)
        tab = self.otabs.get(key)
        if tab is None:
            cg, kh, kw = self.shape[1:]
            plane, rowlen = hp * g.sw * wq, g.sw * wq
            tap_off = np.array(g.phase_tap_offsets(wq), np.int64)
            tab = (np.arange(cg)[:, None, None] * plane + np.arange(kh)[None, :, None] * (g.dh * rowlen)
                   + tap_off[None, None, :]).astype(np.int64).reshape(-1)
            self.otabs = {key: tab}  # one input size at a time (a reshape replaces it)
        return tab


def pack_weights(w, group: int) -> SparsePack:
    """Pack float32 weights (Cout, Cg, kh, kw) into nonzero tap lists (ValueError if too many positions)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    cout = w.shape[0]
    k = int(np.prod(w.shape[1:]))
    if k > MAX_TAP_POSITIONS:
        raise ValueError(f"{k} tap positions per channel: more than a sparse pack indexes ({MAX_TAP_POSITIONS})")
    flat = w.reshape(cout, k)
    rows, cols = np.nonzero(flat)  # row-major: each channel's taps in ascending position, the dense order
    ptr = np.zeros(cout + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=cout), out=ptr[1:])
    return SparsePack(ptr=ptr, idx=cols.astype(np.uint16), val=flat[rows, cols].astype(np.float32),
                      shape=tuple(w.shape), group=int(group), source=w.__array_interface__["data"][0])


@dataclass
class LayerStats:
    """Zero fraction and kind ("direct", "pointwise", "depthwise") of a convolution layer's weights."""

    zero_fraction: float
    kind: str
    count: int


def layer_kind(layer) -> str:
    if is_depthwise(layer.channels, layer.num_output, layer.group):
        return "depthwise"
    if layer.geom.is_pointwise:
        return "pointwise"
    return "direct"


def layer_stats(layer) -> LayerStats:
    w = np.asarray(native_array(layer.blobs[0].data))
    count = int(w.size)
    zeros = count - int(np.count_nonzero(w))
    return LayerStats(zeros / count if count else 0.0, layer_kind(layer), count)


def native_array(a):
    """The NumPy array behind a blob's data (CuPy arrays are copied to the host: stats only)."""
    from ..backend import to_numpy
    return to_numpy(a)


def auto_threshold(kind: str) -> float:
    return AUTO_MIN_ZERO_FRACTION[kind]


def packable(layer) -> bool:
    """Whether the sparse kernel can hold this layer's weights (float32 NumPy, uint16 tap positions)."""
    w = layer.blobs[0].data
    return (_LIB is not None and isinstance(w, np.ndarray) and w.dtype == np.float32
            and int(np.prod(w.shape[1:])) <= MAX_TAP_POSITIONS)


def pack_layer(layer):
    """The layer's :class:`SparsePack`, or None when :func:`packable` says no."""
    if not packable(layer):
        return None
    return pack_weights(layer.blobs[0].data, layer.group)


def usable(x, out) -> bool:
    """Whether the kernel takes this call: float32 NumPy arrays, a C-contiguous output, rows wide enough."""
    return (_LIB is not None and isinstance(x, np.ndarray) and isinstance(out, np.ndarray)
            and x.dtype == np.float32 and out.dtype == np.float32 and out.flags.c_contiguous
            and _LIB.isa_for(out.shape[3]) is not None)


#: cache budget of the input rows one task reads (the dense kernel's figure) and output channels per task
TASK_INPUT_BYTES = 384 << 10
TASK_CHANNELS = 32
#: L1 budget of the input one input-channel chunk reads for one output tile (reused by all the task's channels)
CHUNK_L1_BYTES = 24 << 10
#: row-block kernel: L1 budget of one chunk's block, output rows and pixel vectors per tile (measured best of
#: 16-32 KB, 2x2 / 4x2 / 8x1 tiles with bench/sparse_breakeven.py's layers)
BLOCK_L1_BYTES = 32 << 10
TILE_ROWS = 4
TILE_VECTORS = 2
#: row-block kernel with panels: the most bytes of input rows one task pads into its panel (about an L2)
PANEL_MAX_BYTES = 1 << 20
#: the row-block kernel runs a layer whose groups have at least this many output channels (they share the
#: copy into the block), and depthwise layers (the direct kernel's per-tile costs dominate their one-channel
#: groups); measured with bench/sparse_breakeven.py at 50-90% zeros: groups of 8 channels (conv1b, ctx_final)
#: run faster on the direct kernel, groups of 16 and more and depthwise layers on the row-block kernel
COLS_MIN_GROUP_CHANNELS = 16


def choose_kernel(pack: SparsePack) -> str:
    """"cols" (row-block kernel) or "direct" (direct sparse kernel) for this pack: see
    :data:`COLS_MIN_GROUP_CHANNELS`."""
    cout, cg = pack.shape[:2]
    return "cols" if cg == 1 or cout // pack.group >= COLS_MIN_GROUP_CHANNELS else "direct"


def _epilogue(b, scale, shift, relu_slope):
    keep = [None if a is None else np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in (b, scale, shift)]
    if (keep[1] is None) != (keep[2] is None):
        raise ValueError("scale and shift go together")
    e = native._Epilogue(*[None if a is None else a.ctypes.data for a in keep], relu_slope is not None,
                         0.0 if relu_slope is None else float(relu_slope))
    return e, keep


def _otab(pack: SparsePack, g: ConvGeometry, p: _SGeom, x_shape) -> np.ndarray:
    """The row-block kernel's tap offsets for the input layout it reads: the whole padded input, or (panels, once
    ``p.rg`` is set) a task's panel of ``p.hl`` rows."""
    if not native.PANELS:
        return pack.otab(g, p.Hp, p.Wq)
    native.set_panel(p, x_shape, g)
    return pack.otab(g, p.hl, p.Wq)


def _run_cols(lib, xs, pack: SparsePack, g: ConvGeometry, p: _SGeom, e, x_shape, out, isa: str) -> bool:
    """The row-block kernel's forward; False (nothing done) when one channel's block would not fit the uint16
    tap offsets (kernels of some 40+ taps per row)."""
    n, _, ho, wo = out.shape
    code = native._ISAS.index(isa)
    vw = lib.lib.cs_vector_width(code)
    nvmax = lib.lib.cs_tile_pixels(code) // vw
    p.vt = max(1, min(TILE_VECTORS, wo // vw, nvmax))
    p.rt = max(1, min(TILE_ROWS, nvmax // p.vt, ho))
    if p.rt > 4:
        p.rt = 8 if p.rt == 8 else 4
    p.ni = (p.rt - 1) * g.sh + (g.kh - 1) * g.dh + 1
    slab = g.kw * p.ni * p.vt * vw  # floats per input channel
    if slab > 1 << 16:
        return False
    p.kc = max(1, min(p.Cg, BLOCK_L1_BYTES // (slab * 4), (1 << 16) // slab))
    p.nch = -(-p.Cg // p.kc)
    p.rg = ho
    while n * -(-ho // p.rg) * pack.group < 8 * lib.threads and p.rg > p.rt:
        p.rg = max(p.rt, -(-p.rg // 2))
    # with panels, a task's panel (its group's input rows) stays within an L2 (batches would otherwise keep whole
    # images per task)
    halo = (g.kh - 1) * g.dh + 1 - g.sh
    while (native.PANELS and p.rg > p.rt
           and p.Cg * (p.rg * g.sh + halo) * p.S * p.Wq * 4 > PANEL_MAX_BYTES):
        p.rg = max(p.rt, -(-p.rg // 2))
    ntasks = n * -(-ho // p.rg) * pack.group
    otab = _otab(pack, g, p, x_shape)
    cptr = pack.chunk_ptr(p.kc)
    off = pack.block_off(p.kc, p.ni, g.dh, p.vt * vw)
    taps = _ColsTaps(cptr.ctypes.data, off.ctypes.data, pack.val.ctypes.data, otab.ctypes.data)
    lib.run(lib.lib.cs_sparse_cols_fwd, (xs.ctypes.data, ctypes.byref(taps), ctypes.byref(e), out.ctypes.data,
                                         ctypes.byref(p)), ntasks, isa, dynamic=native.DYNAMIC)
    return True


def conv_forward(x, pack: SparsePack, b, g: ConvGeometry, out, scale=None, shift=None, relu_slope=None,
                 kernel=None):
    """Sparse convolution forward into ``out`` (N, Cout, Ho, Wo) with the dense kernel's optional epilogue
    (``* scale + shift`` per channel, then a ReLU with ``relu_slope``). Call only when :func:`usable`.
    ``kernel``: "direct", "cols" or None (:func:`choose_kernel`); both give the same values."""
    lib = _LIB
    n, cout, ho, wo = out.shape
    if native.PANELS:
        xs = np.ascontiguousarray(x)
        hp, wq = g.phase_extent(x.shape[2], x.shape[3], ho, wo)
    else:
        xs, hp, wq = native._phase_split(x, g, ho, wo, "pad_sparse")
    cin = x.shape[1]
    p = _SGeom(N=n, C=cin, Hp=hp, S=g.sw, Wq=wq, Cout=cout, Cg=cin // pack.group, Mg=cout // pack.group,
               sh=g.sh, Ho=ho, Wo=wo, kh=g.kh, kw=g.kw, dh=g.dh)
    isa = lib.isa_for(wo)
    e, keep = _epilogue(b, scale, shift, relu_slope)  # keep: the arrays e points into, alive during the call
    kernel = kernel or choose_kernel(pack)
    if kernel == "cols" and _run_cols(lib, xs, pack, g, p, e, x.shape, out, isa):
        return out
    row_bytes = p.Cg * p.S * p.Wq * 4
    p.rg = max(1, min(ho, (max(1, TASK_INPUT_BYTES // row_bytes) - (g.kh - 1) * g.dh) // g.sh))
    # a task stays inside one group: its panel then holds that group's input channels only (conv1b's 4 groups of 8
    # in one task made a 1.5 MB panel, past L2; one group's is 0.4 MB)
    p.mb = min(cout, TASK_CHANNELS, p.Mg) if native.PANELS else min(cout, TASK_CHANNELS)
    p.rg, p.mb, ntasks = native.split_tasks(n, ho, p.rg, cout, p.mb, 4 * lib.threads)
    if native.PANELS:
        native.set_panel(p, x.shape, g)
    toff = pack.tap_offsets(g, p.hl if native.PANELS else p.Hp, p.Wq)
    # input one channel contributes to a tile: its rows (a tile may cover several output rows) x their span
    tile = lib.lib.cs_tile_pixels(native._ISAS.index(isa))
    rows = min(ho, -(-tile // wo)) * g.sh + (g.kh - 1) * g.dh
    span = min(wo, tile) * g.sw + (g.kw - 1) * g.dw
    kc = max(1, min(p.Cg, CHUNK_L1_BYTES // (rows * span * 4)))
    p.nch = -(-p.Cg // kc)
    cptr = pack.chunk_ptr(kc)
    taps = _Taps(cptr.ctypes.data, toff.ctypes.data, pack.val.ctypes.data)
    lib.run(lib.lib.cs_sparse_fwd, (xs.ctypes.data, ctypes.byref(taps), ctypes.byref(e), out.ctypes.data,
                                    ctypes.byref(p)), ntasks, isa, dynamic=native.DYNAMIC)
    return out
