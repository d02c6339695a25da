"""The compiled thread pool (caffelite/_native/cpool.c through caffelite.ops.native.pooled_run): every task range
run once, arguments passed intact (ints, negative values, the ones on the stack), return codes, kernels that hand
out their own tasks, concurrent callers, forked children, and the same kernel values as Python's pool."""

import ctypes
import multiprocessing
import threading

import numpy as np
import pytest

from caffelite.ops import native

pytestmark = pytest.mark.skipif(native._CPOOL is None, reason="compiled thread pool not built")

L, I = ctypes.c_long, ctypes.c_int


def _selftest():
    fn = native._CPOOL.lib.cp_selftest
    fn.argtypes = [ctypes.c_void_p, L, I, I, I, L, L, L, I, L, L, L, L, L, L, L]
    fn.restype = I
    return fn


def _args(out, mult=3, add=-7, fail_at=-1, fail=0):
    extra = [2 ** 40, -5, 11, -2 ** 30, 7, 2 ** 33, -1, 4]  # a5..a12: longs and an int, past the six registers
    return (out.ctypes.data, mult, add, fail_at, fail, *extra, sum(extra))


@pytest.mark.parametrize("ntasks,parts,threads", [(1, 1, 2), (10, 3, 2), (100, 8, 2), (1000, 64, 4), (7, 7, 3),
                                                   (50, 50, 1)])
def test_every_task_once_with_its_arguments(ntasks, parts, threads):
    fn = _selftest()
    out = np.full(ntasks + 1, -99, np.int64)
    rc = native._CPOOL.run(fn, _args(out), ntasks, parts, threads, False)
    assert rc == [0]
    np.testing.assert_array_equal(out[:ntasks], np.arange(ntasks) * 3 - 7)  # 1000000 added if an argument broke
    assert out[ntasks] == -99  # nothing past the range


def test_return_code_of_a_failing_range():
    fn = _selftest()
    out = np.zeros(64, np.int64)
    assert native._CPOOL.run(fn, _args(out, fail_at=40, fail=-3), 64, 8, 2, False) == [-3]
    assert native._CPOOL.run(fn, _args(out, fail_at=40, fail=-3), 64, 1, 1, False) == [-3]  # on the caller alone


def test_shared_mode_calls_the_whole_range_per_part():
    fn = _selftest()
    out = np.zeros(32, np.int64)
    assert native._CPOOL.run(fn, _args(out, mult=2, add=1), 32, 2, 2, True) == [0]
    np.testing.assert_array_equal(out, np.arange(32) * 2 + 1)


def test_unqualified_kernels_go_back_to_python():
    proto = ctypes.CFUNCTYPE(I, ctypes.c_double, L, L)
    fn = proto(lambda a, t0, t1: 0)
    fn.argtypes, fn.restype = [ctypes.c_double, L, L], I
    assert native._CPOOL.run(fn, (1.5,), 4, 2, 2, False) is None
    fn2 = _selftest()
    assert native._CPOOL.run(fn2, (1.5,) + _args(np.zeros(4, np.int64))[1:], 4, 2, 2, False) is None


def test_pooled_run_falls_back_to_python_with_the_same_ranges(monkeypatch):
    seen = []
    lock = threading.Lock()

    def call(t0, t1):
        with lock:
            seen.append((t0, t1))
        return 0
    monkeypatch.setattr(native, "_CPOOL_ON", False)
    proto = ctypes.CFUNCTYPE(I, L, L)
    fn = proto(call)
    assert native.pooled_run(fn, (), 10, 2, 4) == [0, 0, 0, 0]
    assert sorted(seen) == [(0, 2), (2, 5), (5, 7), (7, 10)]


def test_concurrent_callers():
    fn = _selftest()
    errors = []

    def caller(k):
        for _ in range(200):
            out = np.zeros(97, np.int64)
            rc = native._CPOOL.run(fn, _args(out, mult=k), 97, 6, 2, False)
            if rc != [0] or not np.array_equal(out, np.arange(97) * k - 7):
                errors.append(k)
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _child(q):
    fn = _selftest()
    out = np.zeros(50, np.int64)
    rc = native._CPOOL.run(fn, _args(out), 50, 10, 2, False)
    q.put(bool(rc == [0] and np.array_equal(out, np.arange(50) * 3 - 7)))


def test_forked_child_runs_its_own_pool():
    _child(multiprocessing.Queue())  # the parent's pool threads are running
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(30)
    assert p.exitcode == 0 and q.get(timeout=5)


def test_kernels_give_the_same_values_on_either_pool(monkeypatch):
    """A float convolution and a sparse integer convolution: the compiled pool against Python's."""
    from caffelite.ops import int8
    from caffelite.ops.im2col import ConvGeometry
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 16, 40, 70)).astype(np.float32)
    w = rng.normal(size=(24, 16, 3, 3)).astype(np.float32)
    g = ConvGeometry(3, 3, 1, 1, 1, 1, 1, 1)
    q = rng.integers(0, 256, (1, 16, 40, 70)).astype(np.int16)
    wq = rng.integers(-2048, 2048, (24, 16, 3, 3)).astype(np.int16)
    wq[rng.random(wq.shape) < 0.8] = 0
    rq = int8.Requant(A=np.full(24, 1e-4), B=np.full(24, 3e-5), C=rng.normal(size=24), lo=0, hi=255)
    got = {}
    for on in (False, True):
        monkeypatch.setattr(native, "_CPOOL_ON", on)
        f = None
        if native.available():
            f = np.empty((1, 24, 40, 70), np.float32)
            native.conv_forward(x, w, None, g, 1, f)
        i = int8.PackedConv(wq, g, 1, rq, sparse=True, u8_input=True).forward(q) if int8.available() else None
        got[on] = (f, i)
    for a, b in zip(got[False], got[True], strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_numpy_integers_and_byref_arguments():
    """NumPy integers pass as integers; ctypes.byref(obj) as obj's address."""
    fn = _selftest()
    out = np.zeros(20, np.int64)
    args = list(_args(out, mult=np.int64(5), add=np.int32(-2)))
    assert native._CPOOL.run(fn, tuple(args), 20, 4, 2, False) == [0]
    np.testing.assert_array_equal(out, np.arange(20) * 5 - 2)
    buf = (ctypes.c_long * 20)()
    args[0] = ctypes.byref(buf)
    assert native._CPOOL.run(fn, tuple(args), 20, 4, 2, False) == [0]
    np.testing.assert_array_equal(np.ctypeslib.as_array(buf), np.arange(20) * 5 - 2)
