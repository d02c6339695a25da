"""The sparse convolution kernels (caffelite/ops/sparse_conv.py, caffelite/_native/csparse.c) against the dense path.

Both kernels (direct and row-block), weights with 50-95% zeros; every geometry the layers meet (strides, pads,
dilation, groups incl. jsegnet21v2's grouped 3x3 and depthwise, 1x1, odd widths, batches), every instruction set
this CPU runs, the row-block kernel's tilings and chunkings, thread counts (bitwise equal), the fused
BatchNorm/Scale/ReLU epilogue, and the fixture nets with sparse weights.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import caffelite
from caffelite.ops import conv as K
from caffelite.ops import native, sparse_conv
from caffelite.ops.im2col import ConvGeometry

from conftest import FIXTURES
from native_case import using_isa
from helpers import load_npz

pytestmark = pytest.mark.skipif(not sparse_conv.available(), reason="sparse kernel not built")

RTOL = 1e-5


def _sparse_weights(rng, shape, fraction):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < fraction] = 0.0
    return w


def _reference(x, w, b, g, group, out_shape):
    """The NumPy (GEMM / shifted slices) forward."""
    out = np.empty(out_shape, np.float32)
    with native.enabled(False):
        K.conv_forward(x, w, b, g, group, out)
    return out


def _close(got, want):
    scale = max(float(np.abs(want).max()), 1e-30)
    assert np.abs(got - want).max() <= RTOL * scale


# (N, Cin, H, W, Cout, group, k, stride, pad, dilation)
GEOMS = [
    (1, 8, 20, 37, 16, 1, 3, 1, 1, 1),      # odd width
    (2, 32, 17, 40, 32, 4, 3, 2, 1, 1),     # stride 2, grouped, batch of 2
    (1, 32, 24, 48, 32, 4, 3, 1, 1, 1),     # jsegnet21v2's grouped 3x3 (8 channels per group)
    (1, 64, 12, 33, 64, 4, 3, 1, 2, 2),     # dilated grouped 3x3 (16 per group)
    (1, 16, 30, 50, 16, 16, 3, 1, 1, 1),    # depthwise
    (1, 16, 30, 53, 24, 2, 1, 1, 0, 1),     # 1x1
    (1, 3, 40, 70, 32, 1, 5, 2, 2, 1),      # jsegnet21v2's first layer
    (2, 256, 9, 21, 40, 1, 3, 1, 2, 2),     # wide: several input-channel chunks
    (1, 12, 11, 19, 20, 2, (3, 5), (1, 2), (0, 2), (2, 1)),  # rectangular kernel, mixed strides
]


def _geom(k, s, p, d):
    def pair(v):
        return v if isinstance(v, tuple) else (v, v)

    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pair(k), pair(s), pair(p), pair(d)
    return ConvGeometry(kh, kw, sh, sw, ph, pw, dh, dw)


KERNELS = ["direct", "cols"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.95])
@pytest.mark.parametrize("case", GEOMS)
def test_matches_dense_path(case, fraction, kernel):
    n, cin, h, w_, cout, group, k, s, p, d = case
    rng = np.random.default_rng(hash((case, fraction)) % 2**32)
    g = _geom(k, s, p, d)
    x = rng.standard_normal((n, cin, h, w_)).astype(np.float32)
    w = _sparse_weights(rng, (cout, cin // group, g.kh, g.kw), fraction)
    b = rng.standard_normal(cout).astype(np.float32)
    ho, wo = g.out_shape(h, w_)
    want = _reference(x, w, b, g, group, (n, cout, ho, wo))
    pk = sparse_conv.pack_weights(w, group)
    assert pk.nnz == np.count_nonzero(w)
    for isa in sparse_conv._LIB.supported:
        out = np.full((n, cout, ho, wo), np.nan, np.float32)
        if sparse_conv._LIB.lib.cs_vector_width(native._ISAS.index(isa)) > wo:
            continue
        with using_isa(sparse_conv._LIB, isa):
            assert sparse_conv.usable(x, out)
            sparse_conv.conv_forward(x, pk, b, g, out, kernel=kernel)
        _close(out, want)
        if native.usable(x, w) and native.supports(g, wo) and not g.is_pointwise and cin != group:
            # the dense kernel sums the same products in the same order: equal to the bit
            dense = np.empty_like(out)
            with using_isa(native._LIB, isa):
                native.conv_forward(x, w, b, g, group, dense)
            np.testing.assert_array_equal(out, dense)


def _dense_native(x, w, b, g, group, out_shape, **epilogue):
    out = np.empty(out_shape, np.float32)
    native.conv_forward(x, w, b, g, group, out, **epilogue)
    return out


# (N, Cin, H, W, Cout, group, k, stride, pad, dilation) for the row-block kernel's tilings: heights that leave
# 1-3 rows after the last full tile, widths that end with an overlapping tile
TILING_GEOMS = [
    (1, 24, 13, 37, 32, 1, 3, 1, 1, 1),
    (2, 32, 19, 50, 32, 4, 3, 2, 1, 1),
    (1, 16, 15, 40, 24, 2, 3, 1, 2, 2),
    (1, 3, 23, 70, 16, 1, 5, 2, 2, 1),
]


@pytest.mark.parametrize("case", TILING_GEOMS)
@pytest.mark.parametrize("rows,vectors,block", [(1, 1, 64), (2, 2, 16 << 10), (3, 1, 2048), (4, 2, 1),
                                                (8, 1, 16 << 10), (4, 2, 1 << 20)])
def test_row_block_tilings_equal_dense(case, rows, vectors, block, monkeypatch):
    """Every tile shape (rows x vectors), and blocks from one channel per chunk to all channels in one: the
    dense kernel's bits, with and without the epilogue."""
    monkeypatch.setattr(sparse_conv, "TILE_ROWS", rows)
    monkeypatch.setattr(sparse_conv, "TILE_VECTORS", vectors)
    monkeypatch.setattr(sparse_conv, "BLOCK_L1_BYTES", block)
    n, cin, h, w_, cout, group, k, s, p, d = case
    rng = np.random.default_rng(hash(case) % 2**32)
    g = _geom(k, s, p, d)
    x = rng.standard_normal((n, cin, h, w_)).astype(np.float32)
    w = _sparse_weights(rng, (cout, cin // group, g.kh, g.kw), 0.8)
    b = rng.standard_normal(cout).astype(np.float32)
    scale = rng.uniform(0.5, 2, cout).astype(np.float32)
    shift = rng.standard_normal(cout).astype(np.float32)
    ho, wo = g.out_shape(h, w_)
    pk = sparse_conv.pack_weights(w, group)
    for isa in sparse_conv._LIB.supported:
        if sparse_conv._LIB.lib.cs_vector_width(native._ISAS.index(isa)) > wo:
            continue
        for epi in ({}, {"scale": scale, "shift": shift, "relu_slope": 0.1}):
            out = np.full((n, cout, ho, wo), np.nan, np.float32)
            with using_isa(sparse_conv._LIB, isa):
                sparse_conv.conv_forward(x, pk, b, g, out, kernel="cols", **epi)
            with using_isa(native._LIB, isa):
                want = _dense_native(x, w, b, g, group, out.shape, **epi)
            np.testing.assert_array_equal(out, want)


def test_row_block_too_tall_for_its_offsets_runs_direct():
    """A block whose rows one channel alone cannot address with uint16 offsets (a very dilated kernel): the
    direct kernel runs instead, with the same result."""
    rng = np.random.default_rng(7)
    g = ConvGeometry(3, 11, 1, 1, 0, 0, 200, 1)
    x = rng.standard_normal((1, 2, 410, 44)).astype(np.float32)
    w = _sparse_weights(rng, (16, 2, 3, 11), 0.8)
    ho, wo = g.out_shape(410, 44)
    out = np.empty((1, 16, ho, wo), np.float32)
    sparse_conv.conv_forward(x, sparse_conv.pack_weights(w, 1), None, g, out, kernel="cols")
    np.testing.assert_array_equal(out, _dense_native(x, w, None, g, 1, out.shape))


def test_kernel_choice_by_channels_per_group():
    rng = np.random.default_rng(6)
    n = sparse_conv.COLS_MIN_GROUP_CHANNELS

    def pick(cout, cg, group):
        return sparse_conv.choose_kernel(sparse_conv.pack_weights(_sparse_weights(rng, (cout, cg, 3, 3), 0.8), group))

    assert pick(4 * n, 32, 4) == "cols"
    assert pick(4 * (n - 1), 8, 4) == "direct"
    assert pick(32, 1, 32) == "cols"  # depthwise


@pytest.mark.parametrize("kernel", KERNELS)
def test_bitwise_same_for_any_thread_count(kernel):
    rng = np.random.default_rng(1)
    g = _geom(3, 1, 1, 1)
    x = rng.standard_normal((2, 64, 23, 45)).astype(np.float32)
    w = _sparse_weights(rng, (96, 16, 3, 3), 0.8)
    pk = sparse_conv.pack_weights(w, 4)
    outs = []
    for threads in (1, 2, 3, 5):
        out = np.empty((2, 96, 23, 45), np.float32)
        with using_isa(sparse_conv._LIB, sparse_conv._LIB.isa, threads=threads):
            sparse_conv.conv_forward(x, pk, None, g, out, kernel=kernel)
        outs.append(out)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("slope", [None, 0.0, 0.1])
@pytest.mark.parametrize("affine", [False, True])
def test_fused_epilogue(slope, affine, kernel):
    rng = np.random.default_rng(2)
    g = _geom(3, 1, 1, 1)
    x = rng.standard_normal((1, 32, 19, 41)).astype(np.float32)
    w = _sparse_weights(rng, (24, 8, 3, 3), 0.8)
    b = rng.standard_normal(24).astype(np.float32)
    scale = rng.uniform(0.5, 2, 24).astype(np.float32) if affine else None
    shift = rng.standard_normal(24).astype(np.float32) if affine else None
    want = _reference(x, w, b, g, 4, (1, 24, 19, 41)).astype(np.float64)
    if affine:
        want = want * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
    if slope is not None:
        want = np.where(want < 0, want * slope, want)
    out = np.empty((1, 24, 19, 41), np.float32)
    sparse_conv.conv_forward(x, sparse_conv.pack_weights(w, 4), b, g, out, scale, shift, slope, kernel=kernel)
    _close(out, want)
    dense = np.empty_like(out)
    native.conv_forward(x, w, b, g, 4, dense, scale=scale, shift=shift, relu_slope=slope)
    np.testing.assert_array_equal(out, dense)


def test_pack_layout_and_size():
    rng = np.random.default_rng(3)
    w = _sparse_weights(rng, (64, 32, 3, 3), 0.8)
    pk = sparse_conv.pack_weights(w, 2)
    flat = w.reshape(64, -1)
    for m in (0, 17, 63):
        taps = slice(pk.ptr[m], pk.ptr[m + 1])
        np.testing.assert_array_equal(pk.idx[taps], np.nonzero(flat[m])[0])  # ascending: the dense order
        np.testing.assert_array_equal(pk.val[taps], flat[m][flat[m] != 0])
    assert pk.nbytes <= 0.4 * w.nbytes  # 6 bytes per nonzero + 4 per channel
    # the chunk pointers split each channel's taps by input channel
    cp = pk.chunk_ptr(5)
    assert cp.shape == (64, 8)
    assert (cp[:, 0] == pk.ptr[:-1]).all() and (cp[:, -1] == pk.ptr[1:]).all()
    assert (pk.idx[cp[7, 1]:cp[7, 2]] // 9 >= 5).all() and (pk.idx[cp[7, 1]:cp[7, 2]] // 9 < 10).all()


def test_too_many_tap_positions_is_refused():
    with pytest.raises(ValueError, match="tap positions"):
        sparse_conv.pack_weights(np.zeros((1, 8192, 3, 3), np.float32), 1)


def test_rows_narrower_than_a_vector_are_not_taken():
    x = np.zeros((1, 4, 5, 3), np.float32)
    assert not sparse_conv.usable(x, np.zeros((1, 4, 5, 3), np.float32))


# -- whole nets --------------------------------------------------------------------------------------
def _sparsify(net, rng, lo=0.5, hi=0.95):
    for layer in net.layers:
        if layer.type == "Convolution":
            w = layer.blobs[0].data
            w[rng.random(w.shape) < rng.uniform(lo, hi)] = 0.0
    net.repack()


def _weights(d):
    for f in ("weights.caffemodel", "weights.caffemodel.xz"):
        if os.path.exists(os.path.join(d, f)):
            return os.path.join(d, f)
    raise FileNotFoundError(d)


@pytest.mark.parametrize("name", ["lenet", "cifar10_quick", "jsegnet21v2_deploy"])
def test_fixture_nets_sparse_equal_dense(name):
    d = os.path.join(FIXTURES, "nets", name)
    net = caffelite.Net(os.path.join(d, "deploy.prototxt"), _weights(d), caffelite.TEST)
    _sparsify(net, np.random.default_rng(4))
    x = load_npz(os.path.join(d, "input.npz"))["data"]
    runs = {}
    for eng in ("dense", "sparse"):
        net.engine = eng
        out = net.forward(data=x, blobs=list(net.blobs))
        runs[eng] = {k: v.copy() for k, v in out.items()}
        convs = [layer for layer in net.layers if layer.type == "Convolution"]
        if eng == "sparse":  # every convolution whose rows are at least a vector wide ran sparse
            wide = [layer for layer in convs if net.top_names[layer.name] and
                    net.blobs[net.top_names[layer.name][0]].shape[3] >= 4]
            assert wide and all(layer.engine_used == "sparse" for layer in wide)
    for k, want in runs["dense"].items():
        if k == "argMaxOut":
            continue
        _close(runs["sparse"][k], want)
    if "argMaxOut" in runs["dense"]:
        # jsegnet21v2: the sparse kernel sums as the dense one does, so the labels are identical (no near-tie
        # exceptions are needed; a NaN/Inf input would be the exception: 0*Inf is skipped by the sparse kernel)
        np.testing.assert_array_equal(runs["sparse"]["argMaxOut"], runs["dense"]["argMaxOut"])
        with open(os.path.join(d, "meta.json")) as f:
            assert json.load(f)["blobs"]["argMaxOut"] == list(runs["dense"]["argMaxOut"].shape)


def test_fused_chain_runs_sparse():
    d = os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy")
    net = caffelite.Net(os.path.join(d, "deploy.prototxt"), _weights(d), caffelite.TEST)
    _sparsify(net, np.random.default_rng(5), 0.8, 0.8)
    x = load_npz(os.path.join(d, "input.npz"))["data"]
    net.engine = "sparse"
    fused = net.forward(data=x)["argMaxOut"].copy()
    assert net._fused_chains, "the conv/BN/ReLU chains should have run fused"
    assert net.layer_dict["conv1b"].engine_used == "sparse"
    net.fusion = False
    np.testing.assert_array_equal(net.forward(data=x)["argMaxOut"], fused)
