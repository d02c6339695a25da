"""Per-task input panels (caffelite/_native/panel.h): the forward kernels pad the rows each task reads instead of
padding the whole input first. The values read are the same, so the outputs must equal the former path (the
whole input padded and phase-split before the kernel, ``native.PANELS = False``) to the bit: dense kernel and
both sparse kernels, odd sizes, pads (larger than the kernel too), strides, dilation, groups, batches, every
instruction set this CPU runs, thread counts, task chunkings, and the dynamic task schedule of the forward
calls.
"""

from __future__ import annotations

import numpy as np
import pytest

from caffelite.ops import native, sparse_conv
from caffelite.ops.im2col import ConvGeometry

from native_case import using_isa

pytestmark = pytest.mark.skipif(not native.available(), reason="compiled kernels not built")

# (N, Cin, H, W, Cout, group, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
GEOMS = [
    (1, 8, 20, 37, 16, 1, (3, 3), (1, 1), (1, 1), (1, 1)),     # odd width
    (2, 32, 17, 40, 32, 4, (3, 3), (2, 2), (1, 1), (1, 1)),    # stride 2, grouped, batch of 2
    (1, 3, 41, 70, 32, 1, (5, 5), (2, 2), (2, 2), (1, 1)),     # jsegnet21v2's first layer, odd height
    (1, 64, 12, 33, 64, 4, (3, 3), (1, 1), (2, 2), (2, 2)),    # dilated grouped
    (1, 12, 11, 19, 20, 2, (3, 5), (1, 2), (0, 2), (2, 1)),    # rectangular kernel, mixed strides and pads
    (1, 6, 9, 29, 8, 1, (3, 3), (3, 3), (4, 3), (1, 1)),       # stride 3, pads larger than the kernel
    (2, 16, 7, 18, 24, 2, (1, 1), (1, 2), (1, 0), (1, 1)),     # 1x1 with a row pad, column stride
    (1, 256, 9, 21, 40, 1, (3, 3), (1, 1), (2, 2), (2, 2)),    # wide: several input-channel chunks
    (1, 5, 10, 40, 16, 1, (3, 3), (1, 1), (4, 5), (1, 1)),     # column stride 1, pads larger than the kernel
    (2, 16, 21, 50, 16, 2, (3, 3), (2, 1), (1, 1), (1, 2)),    # row stride 2, column stride 1, column dilation
    (1, 8, 6, 64, 16, 1, (3, 3), (1, 1), (0, 0), (1, 1)),      # no pad, a row exactly four vectors wide
]


def _geom(case):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = case[6:]
    return ConvGeometry(kh, kw, sh, sw, ph, pw, dh, dw)


def _data(case, zero_fraction):
    n, cin, h, w_, cout, group = case[:6]
    g = _geom(case)
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x = rng.standard_normal((n, cin, h, w_)).astype(np.float32)
    w = rng.standard_normal((cout, cin // group, g.kh, g.kw)).astype(np.float32)
    w[rng.random(w.shape) < zero_fraction] = 0.0
    b = rng.standard_normal(cout).astype(np.float32)
    ho, wo = g.out_shape(h, w_)
    return x, w, b, g, (n, cout, ho, wo)


def _run(kind, x, w, b, g, group, out_shape, panels, **epi):
    out = np.full(out_shape, np.nan, np.float32)
    old = native.PANELS
    native.PANELS = panels
    try:
        if kind == "dense":
            native.conv_forward(x, w, b, g, group, out, **epi)
        else:
            sparse_conv.conv_forward(x, sparse_conv.pack_weights(w, group), b, g, out, kernel=kind, **epi)
    finally:
        native.PANELS = old
    return out


def _libs(kind):
    return native._LIB if kind == "dense" else sparse_conv._LIB


KINDS = ["dense", "direct", "cols"]


def _skip_unless_available(kind, wo):
    if kind != "dense" and not sparse_conv.available():
        pytest.skip("sparse kernel not built")
    if _libs(kind).isa_for(wo) is None:
        pytest.skip("output rows narrower than a vector")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", GEOMS)
def test_panels_equal_padded_input_bitwise(case, kind):
    x, w, b, g, oshape = _data(case, 0.7)
    _skip_unless_available(kind, oshape[3])
    lib = _libs(kind)
    for name in lib.supported:
        if lib.isa_for(oshape[3]) is None:
            continue
        with using_isa(lib, name):
            if lib.isa_for(oshape[3]) != name:
                continue  # rows too narrow for this instruction set's vectors: a narrower one runs
            want = _run(kind, x, w, b, g, case[5], oshape, panels=False)
            assert np.isfinite(want).all()
            got = _run(kind, x, w, b, g, case[5], oshape, panels=True)
            np.testing.assert_array_equal(got, want, err_msg=f"{kind} {name}")


@pytest.mark.parametrize("kind", KINDS)
def test_panels_fused_epilogue_bitwise(kind):
    case = GEOMS[1]
    x, w, b, g, oshape = _data(case, 0.6)
    _skip_unless_available(kind, oshape[3])
    rng = np.random.default_rng(3)
    epi = dict(scale=rng.uniform(0.5, 1.5, oshape[1]).astype(np.float32),
               shift=rng.standard_normal(oshape[1]).astype(np.float32), relu_slope=0.1)
    want = _run(kind, x, w, b, g, case[5], oshape, panels=False, **epi)
    got = _run(kind, x, w, b, g, case[5], oshape, panels=True, **epi)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_panels_any_thread_count_chunking_and_schedule(kind, dynamic, monkeypatch):
    """Tasks of other sizes (rows, channels per task) read other panels, and with dynamic scheduling any thread may
    run any task: the values must not change."""
    case = (2, 32, 33, 45, 32, 4, (3, 3), (1, 1), (1, 1), (1, 1))
    x, w, b, g, oshape = _data(case, 0.75)
    _skip_unless_available(kind, oshape[3])
    with monkeypatch.context() as m:
        m.setattr(native, "DYNAMIC", False)
        with using_isa(_libs(kind), _libs(kind).isa, threads=1):
            want = _run(kind, x, w, b, g, case[5], oshape, panels=False)
    monkeypatch.setattr(native, "DYNAMIC", dynamic)
    lib = _libs(kind)
    small = {"dense": [("CHUNK_INPUT_BYTES", 4 << 10), ("CHUNK_WEIGHT_BYTES", 1 << 10)],
             "direct": [("TASK_INPUT_BYTES", 4 << 10), ("TASK_CHANNELS", 3)],
             "cols": [("TILE_ROWS", 2), ("BLOCK_L1_BYTES", 4 << 10), ("PANEL_MAX_BYTES", 1)]}[kind]
    mod = native if kind == "dense" else sparse_conv
    for threads in (1, 2, 3, 5):
        with using_isa(lib, lib.isa, threads=threads):
            for panels in (False, True):
                np.testing.assert_array_equal(_run(kind, x, w, b, g, case[5], oshape, panels=panels), want)
            with monkeypatch.context() as m:
                for attr, value in small:
                    m.setattr(mod, attr, value)
                np.testing.assert_array_equal(_run(kind, x, w, b, g, case[5], oshape, panels=True), want)


def test_dynamic_schedule_runs_every_task_once():
    """The dynamic schedule covers [0, ntasks) exactly once, in contiguous parts, whatever the thread count."""
    lib = native._LIB
    seen = []

    def fn(code, t0, t1):
        seen.extend(range(t0, t1))
        return 0

    for threads in (2, 3, 5):
        for ntasks in (1, 2, 7, 40, 1001):
            seen.clear()
            with using_isa(lib, lib.isa, threads=threads):
                lib.run(fn, (), ntasks, dynamic=True)
            assert sorted(seen) == list(range(ntasks))

    def failing(code, t0, t1):
        return -3 if t0 > 0 else 0

    with using_isa(lib, lib.isa, threads=2), pytest.raises(RuntimeError, match="codes"):
        lib.run(failing, (), 16, dynamic=True)


def test_panels_read_noncontiguous_input():
    """A strided view of the input is made contiguous before the kernel reads it raw."""
    case = GEOMS[0]
    x, w, b, g, oshape = _data(case, 0.5)
    big = np.zeros((x.shape[0], x.shape[1] * 2) + x.shape[2:], np.float32)
    big[:, ::2] = x
    view = big[:, ::2]
    assert not view.flags.c_contiguous
    want = _run("dense", x, w, b, g, case[5], oshape, panels=False)
    np.testing.assert_array_equal(_run("dense", view, w, b, g, case[5], oshape, panels=True), want)
