"""NumPy ↔ CuPy parity, and the CUDA kernel sources checked on the CPU.

Two layers of checks:

* ``pytest -m gpu`` (skipped without CuPy and a GPU): every named kernel, every layer fixture, every solver
  trajectory and the jsegnet21v2 TRAIN step on CuPy against the CPU results, float32, rtol 1e-4.
* Always (needs a C++ compiler): each kernel's CUDA source string is compiled as plain C++ with a tiny
  emulation of ElementwiseKernel/RawKernel (one thread per element; one thread per block) and run through
  the very same dispatch code with NumPy standing in for CuPy. That checks every index computation, bound
  and rounding rule of the kernels against the NumPy reference on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from caffelite import backend, kernels
from caffelite.jacinto import fixed_point
from caffelite.jacinto import fixed_point_kernel as kq
from caffelite.kernels import batchnorm as kbn
from caffelite.kernels import im2col as kim
from caffelite.kernels import pool as kpool
from caffelite.ops import batch_norm as obn
from caffelite.ops import native
from caffelite.ops import pool as opool
from caffelite.ops.im2col import ConvGeometry
from caffelite.ops.pool import pooled_size

from helpers import assert_close, load_npz

oim = importlib.import_module("caffelite.ops.im2col")  # the module (the package re-exports its im2col function)

CXX = shutil.which("g++") or shutil.which("c++")
_C_TYPES = {"int32": "int", "int64": "long long", "float64": "double", "float32": "float", "bool": "bool"}
_T = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_BUILD = os.path.join(tempfile.gettempdir(), f"caffelite_kernel_emulation_{os.getuid()}")
_PRELUDE = """
#include <cmath>
#include <algorithm>
using std::min; using std::max; using std::log; using std::rint; using std::round; using std::fmin; using std::fmax;
"""


def _compile(source):
    os.makedirs(_BUILD, exist_ok=True)
    tag = hashlib.sha1(source.encode()).hexdigest()[:16]
    lib = os.path.join(_BUILD, f"k_{tag}.so")
    if not os.path.exists(lib):
        src = os.path.join(_BUILD, f"k_{tag}.cpp")
        with open(src, "w") as f:
            f.write(source)
        tmp = lib + f".{os.getpid()}.tmp"
        res = subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-o", tmp, src], capture_output=True, text=True)
        assert res.returncode == 0, f"the kernel source does not compile as C++:\n{res.stderr}"
        os.replace(tmp, lib)
    return ctypes.CDLL(lib)


def _params(spec):
    out = []
    for p in (s.strip() for s in spec.split(",") if s.strip()):
        words = p.split()
        raw = words[0] == "raw"
        out.append((raw, words[-2], words[-1]))
    return out


class EmulatedElementwise:
    """cupy.ElementwiseKernel's contract on the CPU: the body runs once per index ``i`` of the output size."""

    def __init__(self, in_params, out_params, body, name=None):
        self.params = _params(in_params) + _params(out_params)
        self.body = body

    def __call__(self, *args):
        assert len(args) == len(self.params), "argument count"
        t = next(_T[np.dtype(a.dtype)] for (raw, ty, _), a in zip(self.params, args, strict=True)
                 if ty == "T" and isinstance(a, np.ndarray))
        size = next(a.size for (raw, _, _), a in zip(self.params, args, strict=True)
                    if not raw and isinstance(a, np.ndarray))
        decl, per_i, ptrs, keep = [], [], [], []
        for k, ((raw, ty, name), a) in enumerate(zip(self.params, args, strict=True)):
            cty = t if ty == "T" else _C_TYPES[ty]
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous and a.dtype == np.dtype({"float": np.float32, "double": np.float64}.get(
                    cty, {"int": np.int32, "long long": np.int64, "bool": np.bool_}.get(cty))), (name, a.dtype)
                if raw:
                    decl.append(f"{cty}* {name} = ({cty}*)a[{k}];")
                else:
                    decl.append(f"{cty}* {name}__p = ({cty}*)a[{k}];")
                    per_i.append(f"{cty}& {name} = {name}__p[i];")
                ptrs.append(a.ctypes.data)
            else:
                buf = np.asarray([a], dtype={"int": np.int32, "long long": np.int64, "double": np.float64,
                                             "float": np.float32, "bool": np.bool_}[cty])
                keep.append(buf)
                decl.append(f"const {cty} {name} = *({cty}*)a[{k}];")
                ptrs.append(buf.ctypes.data)
        src = (_PRELUDE + f"typedef {t} T;\n" + 'extern "C" void run(long long n, void** a) {\n' + "\n".join(decl) +
               "\nfor (long long i = 0; i < n; ++i) {\n" + "\n".join(per_i) + "\n" + self.body + "\n}\n}\n")
        lib = _compile(src)
        arr = (ctypes.c_void_p * len(ptrs))(*ptrs)
        lib.run(ctypes.c_longlong(size), arr)


class EmulatedRaw:
    """cupy.RawKernel on the CPU with one thread per block (blockIdx set per block, threadIdx 0)."""

    def __init__(self, code, name, **_):
        prelude = _PRELUDE + """
#define __global__
#define __shared__ static
struct Dim3 { unsigned x, y, z; };
static Dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1};
static inline void __syncthreads() {}
extern "C" void set_block(unsigned b) { blockIdx.x = b; }
"""
        self.lib = _compile(prelude + code)
        self.fn = getattr(self.lib, name)

    def __call__(self, grid, block, args):
        cargs = []
        for a in args:
            if isinstance(a, np.ndarray):
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int32):
                cargs.append(ctypes.c_int(int(a)))
            elif isinstance(a, np.int64):
                cargs.append(ctypes.c_longlong(int(a)))
            else:
                cargs.append(ctypes.c_double(float(a)))
        for b in range(int(np.prod(grid))):
            self.lib.set_block(ctypes.c_uint(b))
            self.fn(*cargs)


def _emulated_kernel(name, kind, *args, key=None, **kwargs):
    return EmulatedElementwise(*args, **kwargs) if kind == "elementwise" else EmulatedRaw(*args, **kwargs)


KERNEL_MODULES = (kim, kpool, kbn, kq)
#: the dispatchers that send CuPy arrays to those kernels (their ``on_gpu`` test)
DISPATCHERS = (oim, opool, obn, fixed_point)


@pytest.fixture
def emulate(monkeypatch):
    """Build the kernel modules' kernels through the C++ emulation, with NumPy standing in for CuPy."""
    if CXX is None:
        pytest.skip("no C++ compiler to emulate the CUDA kernels")
    for mod in KERNEL_MODULES:
        monkeypatch.setattr(mod, "kernel", _emulated_kernel)
        if hasattr(mod, "cupy_module"):
            monkeypatch.setattr(mod, "cupy_module", lambda: np)
    yield


@pytest.fixture
def gpu_route(emulate, monkeypatch):
    """``emulate``, plus ``gpu_route(True/False)``: whether the ops dispatchers treat every array as a CuPy one
    (and so take the kernel route). The compiled CPU kernels are off: they would take float32 NumPy arrays first."""
    def route(flag):
        for mod in DISPATCHERS:
            monkeypatch.setattr(mod, "on_gpu", lambda *a: flag)
    with native.enabled(False):
        yield route


GEOMS = [ConvGeometry(3, 3, 1, 1, 1, 1), ConvGeometry(3, 2, 2, 1, 0, 1), ConvGeometry(3, 3, 2, 2, 2, 2, 2, 2),
         ConvGeometry(1, 1), ConvGeometry(4, 4, 2, 2, 1, 1), ConvGeometry(2, 3, 3, 2, 1, 0, 1, 2)]


def _rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("g", GEOMS, ids=str)
def test_im2col_col2im_kernel_source(g, emulate):
    x = _rand((2, 3, 7, 6))
    got = kim.im2col(x, g)
    cols = _rand(got.shape, 1)
    got_img = kim.col2im(cols, g, 7, 6)
    from caffelite.ops.im2col import col2im as ref_col2im
    from caffelite.ops.im2col import im2col as ref_im2col
    want = ref_im2col(x, g).copy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_img, ref_col2im(cols, g, 7, 6), rtol=1e-6, atol=1e-6)


POOLS = [((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0)), ((3, 2), (1, 2), (1, 0)), ((3, 3), (2, 2), (0, 0)),
         ((7, 7), (1, 1), (0, 0))]


@pytest.mark.parametrize("k,s,p", POOLS)
def test_max_pool_kernel_source(k, s, p, emulate):
    from caffelite.ops import pool as ref
    x = _rand((2, 3, 7, 7))
    x[0, 0, :2, :2] = 5.0  # ties: the first maximum (row-major) must win
    ho, wo = pooled_size(7, k[0], s[0], p[0]), pooled_size(7, k[1], s[1], p[1])
    out, arg = np.empty((2, 3, ho, wo), np.float32), np.empty((2, 3, ho, wo), np.int32)
    kpool.max_pool_forward(x, k, s, p, ho, wo, out, arg)
    rout, rarg = np.empty_like(out), np.empty_like(arg)
    ref.max_pool_forward(x, k, s, p, ho, wo, rout, rarg)
    np.testing.assert_array_equal(out, rout)
    np.testing.assert_array_equal(arg, rarg)
    dy = _rand(out.shape, 2)
    dx, rdx = np.empty_like(x), np.empty_like(x)
    kpool.max_pool_backward(dy, arg, k, s, p, 7, 7, dx)
    ref.max_pool_backward(dy, rarg, k, s, p, 7, 7, rdx)
    np.testing.assert_allclose(dx, rdx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bn_stats_kernel_source(dtype, emulate):
    x = (_rand((3, 4, 25), 3, dtype) * 2 + 7).astype(dtype)
    mean, var = kbn.channel_stats(x)
    want_mean = x.astype(np.float64).mean(axis=(0, 2))
    want_var = x.astype(np.float64).var(axis=(0, 2))
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=1e-5)
    assert mean.dtype == dtype and var.dtype == dtype


@pytest.mark.parametrize("use_native", [False, True])
def test_bn_stats_reference_matches_the_batch_norm_layer(use_native):
    """The reference the kernel is held to (ops.batch_norm.batch_stats) gives the BatchNorm layer's own TRAIN
    statistics (a jacinto layer stores the first batch's mean and biased variance as they are), from either of
    the layer's CPU paths."""
    from native_case import single_layer

    x = _rand((2, 3, 10), 4) + 1
    layer, b, t = single_layer("BatchNorm", "batch_norm_param { scale_bias: true engine: CAFFE }", x.shape, False)
    b.data[...] = x
    with native.enabled(use_native):
        layer.forward([b], [t])
    mean, var = obn.batch_stats(x)
    np.testing.assert_allclose(mean, layer.blobs[0].data, rtol=1e-6)
    np.testing.assert_allclose(var, layer.blobs[1].data, rtol=1e-5)


@pytest.mark.parametrize("ties", ["even", "away"])
@pytest.mark.parametrize("unsigned,offset", [(False, 0.0), (True, 3.0)])
def test_fixed_point_kernel_source(ties, unsigned, offset, gpu_route):
    """jacinto's quantizer takes the kernel on CuPy arrays (NEAREST), bitwise equal to its generic body; in place
    too; STOCHASTIC stays on the generic body."""
    x = np.concatenate([_rand(200, 7) * 3, np.asarray([0.5, -0.5, 1.5, -2.5, 100.0, -100.0], np.float32) / 4])
    for clip in (True, False):
        gpu_route(False)
        want = fixed_point.quantize(x, 4.0, offset, 8, unsigned, fixed_point.NEAREST, clip, ties)
        gpu_route(True)
        got = fixed_point.quantize(x, 4.0, offset, 8, unsigned, fixed_point.NEAREST, clip, ties)
        np.testing.assert_array_equal(got, want)
        inplace = x.copy()
        assert fixed_point.quantize(inplace, 4.0, offset, 8, unsigned, out=inplace, ties=ties, clip=clip) is inplace
        np.testing.assert_array_equal(inplace, want)
    u = np.random.default_rng(8).random(x.shape)
    gpu_route(True)
    sto = fixed_point.quantize(x, 4.0, offset, 8, unsigned, fixed_point.STOCHASTIC, uniform=u, ties=ties)
    gpu_route(False)
    np.testing.assert_array_equal(
        sto, fixed_point.quantize(x, 4.0, offset, 8, unsigned, fixed_point.STOCHASTIC, uniform=u, ties=ties))


@pytest.mark.parametrize("g", GEOMS[:3], ids=str)
def test_im2col_dispatch_takes_the_kernel_on_gpu_arrays(g, gpu_route):
    """ops.im2col / col2im send CuPy arrays to the named kernels (workspace output, ``out``, ``accumulate``)."""
    x = _rand((2, 3, 7, 6))
    gpu_route(False)
    want = oim.im2col(x, g).copy()
    cols = _rand(want.shape, 1)
    want_img = oim.col2im(cols, g, 7, 6)
    base = _rand((2, 3, 7, 6), 2)
    want_acc = oim.col2im(cols, g, 7, 6, out=base.copy(), accumulate=True)
    gpu_route(True)
    np.testing.assert_array_equal(oim.im2col(x, g), want)
    np.testing.assert_allclose(oim.col2im(cols, g, 7, 6), want_img, rtol=1e-6, atol=1e-6)
    out = np.full_like(base, np.nan)
    assert oim.col2im(cols, g, 7, 6, out=out) is out
    np.testing.assert_allclose(out, want_img, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(oim.col2im(cols, g, 7, 6, out=base.copy(), accumulate=True), want_acc,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k,s,p", POOLS[:3])
def test_max_pool_dispatch_takes_the_kernel_on_gpu_arrays(k, s, p, gpu_route):
    """ops.pool's MAX forward/backward send CuPy arrays to the kernels, with the layer's argmax type (uint8 here,
    through an int32 scratch) or none."""
    x = _rand((2, 3, 7, 7))
    ho, wo = pooled_size(7, k[0], s[0], p[0]), pooled_size(7, k[1], s[1], p[1])
    dt = opool.argmax_dtype(k)
    res = {}
    for route in (False, True):
        gpu_route(route)
        out, arg = np.empty((2, 3, ho, wo), np.float32), np.empty((2, 3, ho, wo), dt)
        opool.max_pool_forward(x, k, s, p, ho, wo, out, arg)
        plain = np.empty_like(out)
        opool.max_pool_forward(x, k, s, p, ho, wo, plain)
        dx = np.empty_like(x)
        opool.max_pool_backward(_rand(out.shape, 2), arg, k, s, p, 7, 7, dx)
        res[route] = out, arg, plain, dx
    for a, b in zip(res[True], res[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert res[True][1].dtype == dt


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("keep", [False, True])
def test_batch_norm_dispatch_takes_the_kernel_on_gpu_arrays(affine, keep, gpu_route):
    """ops.batch_norm's TRAIN forward on CuPy arrays: μ, σ² from the ``bn_stats`` kernel, the rest the reference
    expressions; backward the reference. Against the NumPy route (the blocked passes)."""
    x = (_rand((3, 4, 25), 3) * 2 + 7)
    dy = _rand(x.shape, 4)
    gamma, beta = (_rand(4, 5), _rand(4, 6)) if affine else (None, None)
    res = {}
    for route in (False, True):
        gpu_route(route)
        y, xhat = np.empty_like(x), np.empty_like(x) if keep else None
        stats = obn.train_forward(x, y, gamma, beta, 1e-5, xhat)
        got = [y, *stats]
        if keep:
            dx = np.empty_like(x)
            got += [dx, *obn.train_backward(dy, xhat, stats[2], gamma, dx), xhat]
        res[route] = got
    for a, b in zip(res[True], res[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_every_listed_kernel_is_built_through_the_dispatchers(gpu_route, monkeypatch):
    """Each name in ``kernels.KERNELS`` (the core's kernels, which the GPU parity tests iterate over) and in the
    jacinto quantizer's list is the one kernel a dispatcher builds on CuPy arrays, and none builds another."""
    built = []

    def recording(name, kind, *args, **kwargs):
        built.append(name)
        return _emulated_kernel(name, kind, *args, **kwargs)

    for mod in KERNEL_MODULES:
        monkeypatch.setattr(mod, "kernel", recording)
    gpu_route(True)
    g = GEOMS[0]
    x = _rand((1, 2, 5, 5))
    oim.col2im(oim.im2col(x, g), g, 5, 5)
    out, arg = np.empty((1, 2, 3, 3), np.float32), np.empty((1, 2, 3, 3), np.int32)
    opool.max_pool_forward(x, (3, 3), (2, 2), (1, 1), 3, 3, out, arg)
    opool.max_pool_backward(out, arg, (3, 3), (2, 2), (1, 1), 5, 5, np.empty_like(x))
    x3 = x.reshape(1, 2, 25)
    obn.train_forward(x3, np.empty_like(x3), None, None, 1e-5)
    fixed_point.quantize(x, 4.0)
    assert sorted(set(built)) == sorted(kernels.KERNELS + kq.KERNELS)


# ------------------------------------------------------------------------------------------------------
# On a GPU (pytest -m gpu): the real kernels, every layer fixture, every solver trajectory, jsegnet21v2 TRAIN

RTOL = 1e-4  # float32, rtol 1e-4


def _close(got, want, what=""):
    """``got`` (host or device) in ``want``'s shape, within rtol and rtol of max|want| (at least 1e-6)."""
    assert_close(got, want, rtol=RTOL, rel_atol=RTOL, floor=1e-6, err_msg=what, reshape=True)


@pytest.fixture
def gpu():
    """GPU mode for the test, CPU mode again after it."""
    backend.set_mode_gpu()
    try:
        yield backend.cupy_module()
    finally:
        backend.set_mode_cpu()


@pytest.mark.gpu
@pytest.mark.parametrize("g", GEOMS, ids=str)
def test_im2col_col2im_on_gpu(g, gpu):
    x = _rand((2, 3, 7, 6))
    cols = oim.im2col(gpu.asarray(x), g)
    _close(cols, oim.im2col(x, g), what="im2col")
    dc = _rand(cols.shape, 1)
    _close(oim.col2im(gpu.asarray(dc), g, 7, 6), oim.col2im(dc, g, 7, 6), what="col2im")


@pytest.mark.gpu
@pytest.mark.parametrize("k,s,p", POOLS)
def test_max_pool_on_gpu(k, s, p, gpu):
    x = _rand((2, 3, 7, 7))
    ho, wo = pooled_size(7, k[0], s[0], p[0]), pooled_size(7, k[1], s[1], p[1])
    out, arg = np.empty((2, 3, ho, wo), np.float32), np.empty((2, 3, ho, wo), np.int32)
    opool.max_pool_forward(x, k, s, p, ho, wo, out, arg)
    gout, garg = gpu.empty(out.shape, np.float32), gpu.empty(arg.shape, np.int32)
    opool.max_pool_forward(gpu.asarray(x), k, s, p, ho, wo, gout, garg)
    _close(gout, out, what="max")
    np.testing.assert_array_equal(backend.to_numpy(garg), arg)
    dy = _rand(out.shape, 2)
    dx, gdx = np.empty_like(x), gpu.empty(x.shape, np.float32)
    opool.max_pool_backward(dy, arg, k, s, p, 7, 7, dx)
    opool.max_pool_backward(gpu.asarray(dy), garg, k, s, p, 7, 7, gdx)
    _close(gdx, dx, what="max backward")


@pytest.mark.gpu
def test_bn_stats_and_quantizer_on_gpu(gpu):
    x = _rand((4, 8, 50), 3) * 3 + 2
    m, v = kbn.channel_stats(gpu.asarray(x))
    rm, rv = obn.batch_stats(x)
    _close(m, rm, what="mean")
    _close(v, rv, what="var")
    q = _rand(1000, 6) * 4
    for ties in ("even", "away"):
        np.testing.assert_array_equal(backend.to_numpy(fixed_point.quantize(gpu.asarray(q), 8.0, ties=ties)),
                                      fixed_point.quantize(q, 8.0, ties=ties))
    # the earlier GPU tests ran the im2col and pooling kernels
    assert {name for name, _ in kernels.compiled()} >= set(kernels.KERNELS + kq.KERNELS)


def _layer_cases():
    from layer_case import case_names
    try:
        return case_names()
    except OSError:  # pragma: no cover
        return []


def _run_layer_case_on(name, xp_mode):
    """The fixture's net (Input layers + the layer) forward/backward in ``xp_mode`` ("cpu" or "gpu"), as
    test_layer_fixtures runs it; host copies of every recorded output."""
    import caffelite
    import layer_case
    d, meta, io = layer_case.load_case(name)
    (backend.set_mode_gpu if xp_mode == "gpu" else backend.set_mode_cpu)()
    xp = backend.current_xp()
    try:
        backend.set_random_seed(1701)
        phase = caffelite.TRAIN if meta.get("phase") == "TRAIN" else caffelite.TEST
        weights = os.path.join(d, "weights.caffemodel")
        net = caffelite.Net(os.path.join(d, "net.prototxt"), phase,
                            weights=weights if os.path.exists(weights) else None)
        for key, val in io.items():
            if key.startswith("bottom/"):
                blob = net.blobs[key.split("/", 1)[1]]
                blob.reshape(*val.shape)
                blob.data[...] = xp.asarray(val.astype(np.float32))
        net.forward()
        out = {}
        for key in io:
            kind, rest = key.split("/", 1)
            if kind == "top":
                out[key] = backend.to_numpy(net.blobs[rest].data).copy()
            elif kind == "param_after":
                lname, i = rest.rsplit("/", 1)
                out[key] = backend.to_numpy(net.params[lname][int(i)].data).copy()
        if meta.get("backward", False) or any(k.startswith("top_diff/") for k in io):
            for key, val in io.items():
                if key.startswith("top_diff/"):
                    net.blobs[key.split("/", 1)[1]].diff[...] = xp.asarray(val.astype(np.float32))
            net.backward()
            for key in io:
                kind, rest = key.split("/", 1)
                if kind == "bottom_diff":
                    out[key] = backend.to_numpy(net.blobs[rest].diff).copy()
                elif kind == "param_diff":
                    lname, i = rest.rsplit("/", 1)
                    out[key] = backend.to_numpy(net.params[lname][int(i)].diff).copy()
        return out
    finally:
        backend.set_mode_cpu()


@pytest.mark.gpu
@pytest.mark.parametrize("name", _layer_cases())
def test_every_layer_fixture_on_gpu(name):
    cpu = _run_layer_case_on(name, "cpu")
    gpu_out = _run_layer_case_on(name, "gpu")
    assert cpu.keys() == gpu_out.keys()
    for key, want in cpu.items():
        _close(gpu_out[key], want, what=f"{name}: {key}")


@pytest.mark.gpu
@pytest.mark.parametrize("case", __import__("solver_fixture").CASES)
def test_every_solver_trajectory_on_gpu(case):
    from solver_fixture import TrajectoryNet, solver_param, trajectory
    from caffelite.solvers import get_solver

    def run(mode):
        (backend.set_mode_gpu if mode == "gpu" else backend.set_mode_cpu)()
        try:
            net = TrajectoryNet(case)
            solver = get_solver(solver_param(case), net=net, test_nets=[])
            traj, out = trajectory(case), []
            xp = backend.current_xp()
            for k in range(1, 13):
                for (key, _, _), b in zip(net.layout, net.learnable_params, strict=True):
                    b.data[...] = xp.asarray(traj[f"param/{key}"][k - 1])
                    b.diff[...] = xp.asarray(traj[f"grad/{key}"][k - 1])
                solver.iter = k - 1
                solver.apply_update()
                out.append([backend.to_numpy(b.data).copy() for b in net.learnable_params])
            return out
        finally:
            backend.set_mode_cpu()

    for k, (g, c) in enumerate(zip(run("gpu"), run("cpu"), strict=True)):
        for j, (a, b) in enumerate(zip(g, c, strict=True)):
            _close(a, b, what=f"{case}: update {k + 1}, param {j}")


@pytest.mark.gpu
def test_jsegnet21v2_train_step_on_gpu():
    import caffelite
    from conftest import FIXTURES
    d = os.path.join(FIXTURES, "nets", "jsegnet21v2_train")
    weights = os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy", "weights.caffemodel.xz")
    inp = load_npz(os.path.join(d, "input.npz"))

    def run(mode):
        (backend.set_mode_gpu if mode == "gpu" else backend.set_mode_cpu)()
        try:
            net = caffelite.Net(os.path.join(d, "train.prototxt"), weights, caffelite.TRAIN)
            xp = backend.current_xp()
            net.blobs["data"].data[...] = xp.asarray(inp["data"])
            net.blobs["label"].data[...] = xp.asarray(inp["label"])
            net.clear_param_diffs()
            loss = float(net.forward_backward())
            diffs = {f"{n}/{i}": backend.to_numpy(b.diff).copy() for n, bl in net.params.items()
                     for i, b in enumerate(bl)}
            return loss, diffs
        finally:
            backend.set_mode_cpu()

    gloss, gdiffs = run("gpu")
    closs, cdiffs = run("cpu")
    assert gloss == pytest.approx(closs, rel=RTOL)
    for key, want in cdiffs.items():
        _close(gdiffs[key], want, what=key)
