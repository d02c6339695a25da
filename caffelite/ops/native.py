"""The optional compiled convolution kernels (``caffelite/_native/cconv.c``), called through ctypes.

The shared library is built by ``pip install`` when a C compiler is present (an optional extension: without
one the install still succeeds and everything runs on the NumPy path). ``CAFFELITE_NATIVE=0`` turns it off;
``CAFFELITE_NATIVE_ISA=generic|avx2|avx512`` caps the instruction set (tests switch ``_LIB.isa`` to check each
one); a call uses the widest one whose vectors fit the output rows (AVX-512 16 floats, AVX2 8, portable 4;
narrower rows stay on NumPy). ``CAFFELITE_NUM_THREADS`` sets the thread count (default: ``OMP_NUM_THREADS``,
else the usable cores). :class:`KernelLibrary` and :func:`load_library` are shared with
:mod:`caffelite.ops.native_bn`.

What runs here (float32 NumPy arrays only; :mod:`caffelite.ops.conv` decides when and falls back otherwise):
- :func:`conv_forward`: a direct convolution for any kernel, stride, pad, dilation and group count (depthwise
  and stride-1 1x1 stay on their own paths), with an optional per-channel affine + ReLU epilogue
  (:mod:`caffelite.fusion`). Also used for stride-1 data gradients (a correlation with the flipped kernel).
- :func:`conv_weight_grad`: the weight gradient of kernels 1, 3 or 5 wide.

ctypes releases the GIL during a call, so the task range is split over a small thread pool (forward calls
hand out parts of it as threads free up, :data:`DYNAMIC`): the compiled one of ``caffelite/_native/cpool.c``
(:func:`pooled_run`), or Python's where that is not built. Each output value is computed by one task in a fixed
order: results do not depend on the number of threads. The forward kernels read the raw input: each task pads
the rows it reads into a small panel (``caffelite/_native/panel.h``, :data:`PANELS`) instead of the whole input
being padded first.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import operator
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .im2col import ConvGeometry, pad_into, workspace

_MAX_KW = 32
_ISAS = ("generic", "avx2", "avx512")


class _Geom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("N", "C", "Hp", "S", "Wq", "Cout", "G", "Cg", "Mg", "nmb", "kh", "kw", "sh", "dh", "Ho", "Wo",
                 "rg", "bg", "kc", "H", "W", "ph", "pw", "hl")]
    _fields_ += [("tap_off", ctypes.c_long * _MAX_KW)]


class _Epilogue(ctypes.Structure):
    _fields_ = [("bias", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("shift", ctypes.c_void_p),
                ("relu", ctypes.c_int), ("slope", ctypes.c_float)]


#: parts per thread of a dynamically scheduled call (:meth:`KernelLibrary.run`)
DYNAMIC_PARTS_PER_THREAD = 4

#: thread pools by thread count, shared by the kernel libraries
_POOLS: dict = {}
# a forked child (multiprocessing's default on Linux) inherits the pools without their threads: submitting there
# would wait forever, so the child starts pools of its own
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOLS.clear)


class KernelLibrary:
    """A loaded kernel library: the instruction sets this CPU runs, the one in use and the thread pool.

    Shared by the convolution kernels (here) and :mod:`caffelite.ops.native_bn`. ``CAFFELITE_NATIVE_ISA``
    forces an instruction set (ImportError, hence a warning and the NumPy path, when the CPU lacks it)."""

    label = "native kernel"

    def __init__(self, lib, isa_mask: int):
        self.lib = lib
        self.supported = [name for k, name in enumerate(_ISAS) if isa_mask >> k & 1]
        forced = os.environ.get("CAFFELITE_NATIVE_ISA")
        if forced:
            if forced not in self.supported:
                raise ImportError(f"CAFFELITE_NATIVE_ISA={forced}: not one this CPU runs "
                                  f"({', '.join(self.supported)})")
            self.isa = forced
        else:
            self.isa = self.supported[-1]
        self.threads = _thread_count()

    def run(self, fn, args, ntasks: int, isa: str | None = None, min_per_part: int = 1, dynamic: bool = False):
        """Call ``fn(isa, *args, t0, t1)`` over [0, ntasks), one contiguous range per thread (at least
        ``min_per_part`` tasks each; fewer run on the calling thread).

        ``dynamic`` (for kernels whose tasks write disjoint outputs, so that which thread runs a task cannot change
        a value): the range is cut into :data:`DYNAMIC_PARTS_PER_THREAD` parts per thread that the threads take in
        turn as they finish, so a thread the machine slows down (other processes on the cores) leaves its share
        to the others instead of holding up the call."""
        code = _ISAS.index(isa or self.isa)
        parts = max(1, min(self.threads, ntasks // max(1, min_per_part)))
        if parts <= 1:
            rc = [fn(code, *args, 0, ntasks)]
        else:  # not dynamic: one range per thread (the same ranges whichever thread takes them)
            rc = pooled_run(fn, (code, *args), ntasks, parts, None if dynamic else parts)
        if any(rc):
            raise RuntimeError(f"{self.label} failed (codes {rc})")


def shared_pool(threads: int) -> ThreadPoolExecutor:
    """The thread pool of ``threads`` threads that every kernel library shares (made on first use)."""
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(threads)
    return pool


class _CPool:
    """The compiled thread pool (``caffelite/_native/cpool.c``): runs a kernel ``fn(*args, t0, t1)`` over task
    ranges on the calling thread and pool threads that spin briefly between calls, a few microseconds a call
    where Python's pool takes tens. It takes kernels whose parameters are all pointers and integers (their
    ctypes ``argtypes`` say so); :func:`pooled_run` sends the others to Python's pool."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        self.ok = bool(lib.cp_available())
        lib.cp_run.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_long, ctypes.c_long,
                               ctypes.c_int, ctypes.c_int]
        lib.cp_config.argtypes = [ctypes.c_long]
        spin = os.environ.get("CAFFELITE_SPIN_US", "").strip()
        if spin.isdigit():
            lib.cp_config(int(spin))
        self.lib = lib
        self._fns = {}  # id(ctypes function) -> its address, or None when its parameters do not qualify

    def address(self, fn):
        """The address of ctypes function ``fn`` if every parameter is a pointer or an integer, else None."""
        key = id(fn)
        if key not in self._fns:
            types = getattr(fn, "argtypes", None)
            ok = types is not None and len(types) >= 2 and fn.restype in (ctypes.c_int, None) and all(
                t in _INT_TYPES or (isinstance(t, type) and issubclass(t, ctypes._Pointer)) for t in types)
            self._fns[key] = (fn, ctypes.cast(fn, ctypes.c_void_p).value if ok else None)
        return self._fns[key][1]

    def run(self, fn, args, ntasks: int, nparts: int, threads: int, shared: bool):
        """``fn(*args, t0, t1)`` over ``nparts`` ranges of [0, ntasks) (``shared``: ``fn(*args, 0, ntasks)``
        ``nparts`` times); returns [code], or None when ``fn`` or an argument does not qualify."""
        addr = self.address(fn)
        if addr is None or len(args) + 2 != len(fn.argtypes) or len(args) > 16:
            return None
        vals = []
        for a in args:
            if a is None:
                vals.append(0)
            elif type(a).__name__ == "CArgObject":  # ctypes.byref(obj)
                vals.append(ctypes.addressof(a._obj))
            elif isinstance(a, ctypes.c_void_p):
                vals.append(a.value or 0)
            else:
                try:
                    vals.append(operator.index(a))  # int, bool, NumPy integers
                except TypeError:
                    return None
        arr = (ctypes.c_long * max(1, len(vals)))(*vals)
        return [self.lib.cp_run(addr, len(vals), arr, ntasks, nparts, threads, int(shared))]


_INT_TYPES = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_long, ctypes.c_longlong, ctypes.c_int32,
              ctypes.c_int64, ctypes.c_size_t, ctypes.c_ssize_t, ctypes.c_uint, ctypes.c_ulong)


def _load_cpool(path: str):
    pool = _CPool(path)
    return pool if pool.ok else None  # another platform: Python's pool (no warning: nothing is wrong)


def pooled_run(fn, args, ntasks: int, threads: int, parts: int | None = None, shared: bool = False) -> list:
    """Run kernel ``fn(*args, t0, t1)`` over [0, ntasks) on ``threads`` threads in ``parts`` ranges taken as the
    threads come free (default :data:`DYNAMIC_PARTS_PER_THREAD` per thread; ``shared``: ``fn(*args, 0, ntasks)``
    ``parts`` times, for kernels that hand out their tasks themselves): on the compiled pool where it takes the
    call, else on Python's (:func:`run_dynamic`). The ranges are the same either way. Returns the return codes."""
    if parts is None:
        parts = min(ntasks, threads * DYNAMIC_PARTS_PER_THREAD)
    if _CPOOL_ON and _CPOOL is not None:
        rc = _CPOOL.run(fn, args, ntasks, parts, threads, shared)
        if rc is not None:
            return rc
    pool = shared_pool(threads)
    if shared:
        futs = [pool.submit(fn, *args, 0, ntasks) for _ in range(parts - 1)]
        return [fn(*args, 0, ntasks)] + [f.result() for f in futs]
    return run_dynamic(pool, lambda t0, t1: fn(*args, t0, t1), ntasks, threads, parts)


def run_dynamic(pool, call, ntasks: int, threads: int, parts: int | None = None) -> list:
    """``call(t0, t1)`` over [0, ntasks) cut into :data:`DYNAMIC_PARTS_PER_THREAD` ranges per thread that
    ``threads`` threads (the calling one and ``threads - 1`` of ``pool``) take in turn as they finish, so that a
    thread that starts late (woken up slowly) or runs slowly (other processes on its core) leaves its share to
    the others. For kernels whose tasks write disjoint outputs, so that which thread runs a task cannot change a
    value. Returns the return codes."""
    parts = min(ntasks, threads * DYNAMIC_PARTS_PER_THREAD) if parts is None else parts
    bounds = [ntasks * k // parts for k in range(parts + 1)]
    todo = iter(range(parts))
    lock = threading.Lock()

    def worker():
        rc = []
        while True:
            with lock:
                k = next(todo, None)
            if k is None:
                return rc
            rc.append(call(bounds[k], bounds[k + 1]))

    # the calling thread works too (it would only wait)
    futs = [pool.submit(worker) for _ in range(threads - 1)]
    rc = worker()
    for f in futs:
        rc += f.result()
    return rc


def load_library(module: str, factory):
    """``factory(path)`` for the built extension ``module``; None when the kernels are turned off
    (``CAFFELITE_NATIVE=0``), not built, or fail to load (then with a warning saying why)."""
    if os.environ.get("CAFFELITE_NATIVE", "1").strip().lower() in ("0", "no", "off", "false"):
        return None
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return None
    try:
        return factory(spec.origin)
    except (OSError, ImportError, AttributeError) as e:
        # a stale or broken build (or a bad CAFFELITE_NATIVE_ISA) must not break `import caffelite`: say why
        # and run on the NumPy path
        warnings.warn(f"caffelite: compiled kernels not used: {e}", RuntimeWarning, stacklevel=3)
        return None


class _Lib(KernelLibrary):
    """The convolution library."""

    label = "native convolution kernel"

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        if lib.cl_geom_size() != ctypes.sizeof(_Geom) or lib.cl_epilogue_size() != ctypes.sizeof(_Epilogue):
            raise ImportError(f"{path}: struct layout mismatch (rebuild caffelite: pip install -e .)")
        ptr, lng = ctypes.c_void_p, ctypes.c_long
        lib.cl_conv_fwd.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, ptr, lng, lng]
        lib.cl_conv_dw.argtypes = [ctypes.c_int, ptr, ptr, ptr, ptr, lng, lng]
        super().__init__(lib, lib.cl_isa_mask())
        self.mb = lib.cl_tile_channels()

    def isa_for(self, width: int):
        """The widest instruction set, up to the chosen one, whose vectors fit in an output row of ``width``
        pixels (narrower rows would go through the kernels' scalar code); None below the portable width."""
        best = None
        for name in self.supported[:self.supported.index(self.isa) + 1]:
            if self.lib.cl_vector_width(_ISAS.index(name)) <= width:
                best = name
        return best


def _thread_count() -> int:
    for var in ("CAFFELITE_NUM_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_LIB = load_library("caffelite._native._cconv", _Lib)
#: the compiled thread pool (None: not built, another platform, or CAFFELITE_NATIVE=0); ``CAFFELITE_CPOOL=0``
#: keeps Python's pool (the same ranges, the same values)
_CPOOL = load_library("caffelite._native._cpool", _load_cpool)
_CPOOL_ON = os.environ.get("CAFFELITE_CPOOL", "1").strip().lower() not in ("0", "no", "off", "false")


_ENABLED = True


def available() -> bool:
    """Whether the compiled kernels are built and loaded (``CAFFELITE_NATIVE=0`` unloads them)."""
    return _LIB is not None


@contextlib.contextmanager
def enabled(flag: bool):
    """Within the block, use the compiled kernels (True, when available) or the NumPy path only (False)."""
    global _ENABLED
    old, _ENABLED = _ENABLED, bool(flag)
    try:
        yield
    finally:
        _ENABLED = old


def is_enabled() -> bool:
    """Whether compiled kernels may run now (False inside ``enabled(False)``); every native kernel module reads
    the switch through this function."""
    return _ENABLED


def info() -> str:
    """One line for logs and benchmarks: instruction set and thread count, or why the kernels are off."""
    if _LIB is None:
        return "native conv kernels: off (not built, CAFFELITE_NATIVE=0, or a load warning above)"
    return f"native conv kernels: {_LIB.isa} ({', '.join(_LIB.supported)} supported), {_LIB.threads} threads"


def usable(*arrays) -> bool:
    """The kernels take float32 NumPy arrays only."""
    return _LIB is not None and _ENABLED and all(isinstance(a, np.ndarray) and a.dtype == np.float32
                                                 for a in arrays)


def _ptr(a) -> int:
    return a.ctypes.data


#: forward calls schedule their tasks dynamically (:meth:`KernelLibrary.run`; each output value is computed by
#: one task whatever thread runs it, so the values do not change)
DYNAMIC = True

#: forward kernels pad per task (panel.h: each task copies the input rows it reads into a small padded panel)
#: instead of padding the whole input first; False pads first (the former path, kept to compare against)
PANELS = True


def set_panel(p, x_shape, g: ConvGeometry) -> None:
    """Panel fields of a kernel geometry ``p`` (dense or sparse) whose ``rg`` output rows per task are set: the
    raw input's size and padding, and the rows a task's panel holds."""
    p.H, p.W, p.ph, p.pw = x_shape[2], x_shape[3], g.ph, g.pw
    p.hl = (p.rg - 1) * g.sh + (g.kh - 1) * g.dh + 1


def _phase_split(x, g: ConvGeometry, ho: int, wo: int, slot: str):
    """Pad ``x`` and, for a column stride S > 1, split its columns into S phases so that every kernel tap
    reads contiguous pixels: returns (buffer (N, C, Hp, S, Wq), Hp, Wq)."""
    n, c, h, w = x.shape
    hb, wq = g.phase_extent(h, w, ho, wo)
    s = g.sw
    xpad = pad_into(np.ascontiguousarray(x), g.ph, g.pw, hb, wq * s, slot=slot)
    if s == 1:
        return np.ascontiguousarray(xpad), hb, wq
    buf = workspace(slot + "_ph", (n, c, hb, s, wq), x.dtype, np)
    buf[...] = xpad.reshape(n, c, hb, wq, s).transpose(0, 1, 2, 4, 3)
    return buf, hb, wq


def _geom(x_shape, hp: int, wq: int, cout: int, group: int, g: ConvGeometry, ho: int, wo: int, mb: int) -> _Geom:
    n, c = x_shape[:2]
    mg = cout // group
    p = _Geom(N=n, C=c, Hp=hp, S=g.sw, Wq=wq, Cout=cout, G=group, Cg=c // group, Mg=mg, nmb=-(-mg // mb),
              kh=g.kh, kw=g.kw, sh=g.sh, dh=g.dh, Ho=ho, Wo=wo)
    p.tap_off[:g.kw] = g.phase_tap_offsets(wq)
    return p


def _pack(w, group: int, mb: int):
    """(Cout, Cg, kh, kw) -> (G, nmb, Cg, kh, kw, MB), zero-filled past each group's channel count."""
    cout, cg, kh, kw = w.shape
    mg = cout // group
    nmb = -(-mg // mb)
    wg = w.reshape(group, mg, cg, kh, kw)
    if nmb * mb != mg:
        full = np.zeros((group, nmb * mb, cg, kh, kw), np.float32)
        full[:, :mg] = wg
        wg = full
    return np.ascontiguousarray(wg.reshape(group, nmb, mb, cg, kh, kw).transpose(0, 1, 3, 4, 5, 2))


#: cache budget of one forward chunk: its packed weights and the input rows it reads (about half of a
#: 1-2 MB L2, so both stay resident while the chunk's (block, row) pairs are computed)
CHUNK_WEIGHT_BYTES = 256 << 10
CHUNK_INPUT_BYTES = 384 << 10
#: input channels summed per pass over a forward chunk (partial sums are kept in the output between passes)
PASS_CHANNELS = 256


def split_tasks(n: int, rows: int, rg: int, blocks: int, bg: int, want: int) -> tuple[int, int, int]:
    """Tasks of ``rg`` output rows (of ``rows``) by ``bg`` channel blocks (of ``blocks``) for ``n`` images: halve the
    larger of the two until there are at least ``want`` tasks (so the threads finish together) or both are 1.
    Returns (rg, bg, number of tasks)."""
    while n * -(-rows // rg) * -(-blocks // bg) < want and (rg > 1 or bg > 1):
        if rg >= bg:
            rg = -(-rg // 2)
        else:
            bg = -(-bg // 2)
    return rg, bg, n * -(-rows // rg) * -(-blocks // bg)


def _chunking(p: _Geom, n: int, threads: int, mb: int) -> int:
    """Choose rows and channel blocks per forward chunk (p.rg, p.bg) and input channels per pass (p.kc);
    returns the number of chunks."""
    nblk = p.G * p.nmb
    p.bg = max(1, min(nblk, CHUNK_WEIGHT_BYTES // (p.Cg * p.kh * p.kw * mb * 4)))
    row_bytes = p.Cg * p.S * p.Wq * 4
    rows_in = max(1, CHUNK_INPUT_BYTES // row_bytes)
    p.rg = max(1, min(p.Ho, (rows_in - (p.kh - 1) * p.dh) // p.sh))
    # enough chunks that the threads finish together
    p.rg, p.bg, chunks = split_tasks(n, p.Ho, p.rg, nblk, p.bg, 4 * threads)
    # input channels per pass over a chunk (bounds a tile's working set for very wide layers; on jsegnet21v2,
    # A/B-interleaved, one pass over all channels is as fast as passes of 32 and 5-10% faster than 8 or 16)
    p.kc = max(1, min(p.Cg, PASS_CHANNELS))
    return chunks


def supports(g: ConvGeometry, out_width: int) -> bool:
    """Whether the forward kernel takes this geometry and output row width (rows narrower than a portable
    vector stay on the NumPy path: the kernel would run its scalar code)."""
    return _LIB is not None and g.kw <= _MAX_KW and _LIB.isa_for(out_width) is not None


def weight_grad_supported(g: ConvGeometry, out_width: int) -> bool:
    """Whether :func:`conv_weight_grad` takes this kernel width (1, 3 or 5) and output row width."""
    if _LIB is None:
        return False
    isa = _LIB.isa_for(out_width)
    return isa is not None and _LIB.lib.cl_dw_block(_ISAS.index(isa), g.kw) > 0


def conv_forward(x, w, b, g: ConvGeometry, group: int, out, slot: str = "pad_native", scale=None, shift=None,
                 relu_slope=None):
    """Convolution forward into ``out`` (N, Cout, Ho, Wo), C-contiguous float32; ``b`` (Cout,) or None.

    Optional epilogue per output channel m, in this order: ``* scale[m] + shift[m]`` (an inference BatchNorm
    or Scale folded in; both or neither), then a ReLU with ``relu_slope`` (0 for a plain ReLU).
    """
    lib = _LIB
    n, cout, ho, wo = out.shape
    if PANELS:
        xs = np.ascontiguousarray(x)
        hp, wq = g.phase_extent(x.shape[2], x.shape[3], ho, wo)  # (panel rows rounded up to cache lines: no gain)
    else:
        xs, hp, wq = _phase_split(x, g, ho, wo, slot)
    p = _geom(x.shape, hp, wq, cout, group, g, ho, wo, lib.mb)
    wpk = _pack(w, group, lib.mb)
    ntasks = _chunking(p, n, lib.threads, lib.mb)
    if PANELS:
        set_panel(p, x.shape, g)
    keep = [None if a is None else np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in (b, scale, shift)]
    if (keep[1] is None) != (keep[2] is None):
        raise ValueError("scale and shift go together")
    e = _Epilogue(*[None if a is None else _ptr(a) for a in keep], relu_slope is not None,
                  0.0 if relu_slope is None else float(relu_slope))
    lib.run(lib.lib.cl_conv_fwd, (_ptr(xs), _ptr(wpk), ctypes.byref(e), _ptr(out), ctypes.byref(p)), ntasks,
            _checked_isa(lib, wo), dynamic=DYNAMIC)
    return out


def _checked_isa(lib, width):
    isa = lib.isa_for(width)
    if isa is None:
        raise ValueError(f"output rows of {width} pixels are narrower than a vector: use the NumPy path")
    return isa


#: weight-gradient chunking: dy rows of one channel block read per pass (kept in L1) and the partial sums of
#: one task (its input channels x kh x block x kw vectors)
DW_DY_BYTES = 24 << 10
DW_ACC_BYTES = 96 << 10


def conv_weight_grad(x, dy, g: ConvGeometry, group: int, dw):
    """``dw`` (Cout, Cg, kh, kw), C-contiguous float32, += the weight gradient of a convolution (kw 1, 3, 5)."""
    lib = _LIB
    n, cout, ho, wo = dy.shape
    xs, hp, wq = _phase_split(x, g, ho, wo, "pad_native_dw")
    p = _geom(x.shape, hp, wq, cout, group, g, ho, wo, lib.mb)
    dyc = np.ascontiguousarray(dy)
    isa = _checked_isa(lib, wo)
    dm = lib.lib.cl_dw_block(_ISAS.index(isa), g.kw)
    p.rg = max(1, min(ho, DW_DY_BYTES // (dm * wo * 4)))
    per_c = g.kh * dm * g.kw * 64
    p.bg = max(1, min(p.Cg, DW_ACC_BYTES // per_c))
    nbw = -(-(cout // group) // dm)
    while group * nbw * -(-p.Cg // p.bg) < 4 * lib.threads and p.bg > 1:
        p.bg = -(-p.bg // 2)
    lib.run(lib.lib.cl_conv_dw, (_ptr(xs), _ptr(dyc), _ptr(dw), ctypes.byref(p)), group * nbw * -(-p.Cg // p.bg),
            isa)
