"""The optional compiled depthwise-deconvolution / MAX-pooling / ArgMax kernels (``caffelite/_native/cglue.c``),
called through ctypes.

Built by ``pip install`` beside the convolution kernels (:mod:`caffelite.ops.native`) and switched with them:
``CAFFELITE_NATIVE=0`` turns them off, ``native.enabled(False)`` forces the NumPy path within a block,
``CAFFELITE_NATIVE_ISA`` forces an instruction set, ``CAFFELITE_NUM_THREADS`` sets the thread count. When the
library is not built (no C compiler at install time) or fails to load, :func:`available` is False and every op
runs its NumPy path.

What runs here (C-contiguous float32 NumPy arrays only; :func:`usable` says so, and the ops choose):
- :func:`dw_deconv`: the depthwise transposed correlation of :mod:`.depthwise` (``_dw_scatter``), any kernel,
  stride, pad and dilation, an optional per-channel bias added after the sums.
- :func:`max_pool`: MAX pooling without the argmax (:mod:`.pool`), Caffe's window geometry.
- :func:`argmax_top1`: ArgMax top-1 indices along an axis (:mod:`.argmax`).

Each kernel repeats the float32 operations of its NumPy reference in the same order (the C file says which), so
the results are bitwise the same (in the deconvolution, a NaN made from two NaNs or from inf*0 may carry
another sign or payload, as the order of a commutative operation's operands decides that).

ctypes releases the GIL, so the task range (output rows, or blocks of positions) is split over the shared thread
pool; each value is computed by one task: results do not depend on the number of threads.
"""

from __future__ import annotations

import ctypes

import numpy as np

from . import native

#: fewest output values per thread: smaller calls run on the calling thread. These passes are memory-bound (about
#: 0.3 ns per output value on one core) and on the 2-core test machine a hand-off to the thread pool cost 0.1-0.4
#: ms; A/B-interleaved at jsegnet21v2's shapes two threads were no faster than one for every op up to the 4 M
#: outputs of the last upsampling (1.2 vs 1.3 ms), so only calls of that size are split
MIN_PER_THREAD = 1 << 21
#: ArgMax positions per task (the per-position best value and index stay in registers; a block keeps the n
#: slices' rows it reads short enough to stream)
ARGMAX_BLOCK = 4096
#: most (row tap, column tap) products of one deconvolution phase the kernel's scratch takes
MAX_PHASE_TAPS = 4096

_int_p = ctypes.POINTER(ctypes.c_int)


class _DwParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_long) for name in ("planes", "C", "Hs", "Ws", "H", "W")]
    _fields_ += [(name, ctypes.c_int) for name in ("kh", "kw", "sh", "sw")]
    _fields_ += [(name, ctypes.c_void_p) for name in ("hstart", "hi", "ho", "wstart", "wi", "wo", "zeros")]


class _PoolParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_long) for name in ("planes", "H", "W", "Ho", "Wo")]
    _fields_ += [(name, ctypes.c_int) for name in ("kh", "kw", "sh", "sw", "ph", "pw", "tiled")]


class _ArgParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_long) for name in ("outer", "n", "inner", "block")]


class _Lib(native.KernelLibrary):
    """The deconvolution/pooling/ArgMax library."""

    label = "native deconvolution/pooling/ArgMax kernel"

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        if (lib.cglue_dw_size() != ctypes.sizeof(_DwParams) or lib.cglue_pool_size() != ctypes.sizeof(_PoolParams)
                or lib.cglue_arg_size() != ctypes.sizeof(_ArgParams)):
            raise ImportError(f"{path}: struct layout mismatch (rebuild caffelite: pip install -e .)")
        ptr, lng = ctypes.c_void_p, ctypes.c_long
        lib.cglue_dw_deconv.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, ptr, lng, lng]
        lib.cglue_max_pool.argtypes = [ctypes.c_int, ptr, ptr, ptr, lng, lng]
        lib.cglue_argmax.argtypes = [ctypes.c_int, ptr, ptr, ptr, lng, lng]
        super().__init__(lib, lib.cglue_isa_mask())


_LIB = native.load_library("caffelite._native._cglue", _Lib)


def available() -> bool:
    """Whether the compiled kernels are built and loaded (``CAFFELITE_NATIVE=0`` unloads them)."""
    return _LIB is not None


def info() -> str:
    """One line for logs and benchmarks: instruction set and thread count, or why the kernels are off."""
    if _LIB is None:
        return "native deconv/pool/argmax kernels: off (not built, CAFFELITE_NATIVE=0, or a load warning above)"
    return f"native deconv/pool/argmax kernels: {_LIB.isa}, {_LIB.threads} threads"


def usable(*arrays) -> bool:
    """Whether the kernels may take these arrays now: loaded, switched on, C-contiguous float32 NumPy arrays."""
    return _LIB is not None and native.is_enabled() and all(
        type(a) is np.ndarray and a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)


def _rows_per_part(row_elems: int) -> int:
    return max(1, -(-MIN_PER_THREAD // max(1, row_elems)))


def _table(phases):
    """CSR tap table of the phases: (start (P+1,), kernel index, source offset), int32 arrays."""
    start = np.zeros(len(phases) + 1, np.int32)
    start[1:] = np.cumsum([len(ph) for ph in phases])
    flat = [t for ph in phases for t in ph] or [(0, 0)]
    return start, np.array([k for k, _ in flat], np.int32), np.array([o for _, o in flat], np.int32)


def dw_deconv(src, wk, phases_h, phases_w, kernel, out, bias=None):
    """``out`` (N, C, H, W) = the depthwise transposed correlation of ``src`` (N, C, Hs, Ws) with ``wk`` (C, kh,
    kw), (+ ``bias`` (C,) per channel when given). ``phases_h[r]`` lists the (kernel row, source row offset) taps
    of output rows r + sh*m in summation order (``depthwise._phase_taps``), ``phases_w`` the columns'; ``kernel``
    is (kh, kw). Arrays as :func:`usable` requires."""
    n, c, hs, ws = src.shape
    h, w = out.shape[2:]
    kh, kw = kernel
    tables = [_table(phases_h), _table(phases_w)]
    wkc = np.ascontiguousarray(wk, dtype=np.float32).reshape(c, kh * kw)
    zeros = np.zeros(max(1, ws), np.float32)
    b = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(c)
    (hst, hi, ho), (wst, wi, wo) = tables
    p = _DwParams(planes=n * c, C=c, Hs=hs, Ws=ws, H=h, W=w, kh=kh, kw=kw, sh=len(phases_h), sw=len(phases_w),
                  hstart=hst.ctypes.data, hi=hi.ctypes.data, ho=ho.ctypes.data, wstart=wst.ctypes.data,
                  wi=wi.ctypes.data, wo=wo.ctypes.data, zeros=zeros.ctypes.data)
    _LIB.run(_LIB.lib.cglue_dw_deconv, (src.ctypes.data, wkc.ctypes.data, None if b is None else b.ctypes.data,
                                        out.ctypes.data, ctypes.byref(p)), n * c * h,
             min_per_part=_rows_per_part(w), dynamic=True)
    return out


def dw_deconv_supported(phases_h, phases_w) -> bool:
    """Whether the kernel's scratch takes these phases (at most :data:`MAX_PHASE_TAPS` products per phase)."""
    most_h = max((len(ph) for ph in phases_h), default=0)
    most_w = max((len(ph) for ph in phases_w), default=0)
    return most_h * most_w <= MAX_PHASE_TAPS


def max_pool(x, k, s, p, ho: int, wo: int, out, tiled: bool):
    """MAX pooling of ``x`` (N, C, H, W) into ``out`` (N, C, ho, wo) with Caffe's windows (kernel ``k``, stride
    ``s``, pad ``p``, each (h, w)); ``tiled``: the windows tile the input (no pad, kernel == stride) and are
    reduced rows first, as :func:`caffelite.ops.pool._tiled_max`."""
    n, c, h, w = x.shape
    prm = _PoolParams(planes=n * c, H=h, W=w, Ho=ho, Wo=wo, kh=k[0], kw=k[1], sh=s[0], sw=s[1], ph=p[0], pw=p[1],
                      tiled=bool(tiled))
    _LIB.run(_LIB.lib.cglue_max_pool, (x.ctypes.data, out.ctypes.data, ctypes.byref(prm)), n * c * ho,
             min_per_part=_rows_per_part(wo), dynamic=True)
    return out


def argmax_top1(x, axis: int, out):
    """``out`` (``x``'s shape with ``axis`` of size 1) = the index (as float) of the largest value along ``axis``,
    ties to the larger index; where a NaN is present, the largest index holding a NaN."""
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    n, inner = x.shape[axis], int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    blk = min(ARGMAX_BLOCK, max(1, inner))
    prm = _ArgParams(outer=outer, n=n, inner=inner, block=blk)
    tasks = outer * -(-inner // blk)
    _LIB.run(_LIB.lib.cglue_argmax, (x.ctypes.data, out.ctypes.data, ctypes.byref(prm)), tasks,
             min_per_part=-(-MIN_PER_THREAD // blk), dynamic=True)
    return out
