"""The integer convolution op (caffelite/ops/int8.py): the NumPy reference against the float convolution on
integer-valued float64 input, and the compiled kernel against the reference bit for bit on every instruction
set this CPU runs."""

import numpy as np
import pytest

from caffelite.ops import conv as fconv
from caffelite.ops import int8
from caffelite.ops.im2col import ConvGeometry

# (N, C, H, W, Cout, group, k, stride, pad, dilation, signed input)
CASES = [
    (1, 3, 20, 36, 32, 1, 5, 2, 2, 1, True),    # conv1a-like: odd channels, stride 2, signed input
    (2, 16, 17, 40, 16, 4, 3, 1, 1, 1, False),  # grouped
    (1, 64, 9, 33, 24, 2, 3, 1, 4, 4, False),   # dilation 4, channel blocks not a multiple of 8
    (1, 8, 16, 19, 8, 1, 1, 1, 0, 1, False),    # 1x1, row width not a multiple of any vector
    (1, 6, 12, 34, 10, 1, 3, 2, 1, 2, False),   # stride 2 with dilation 2
    (1, 8, 9, 150, 12, 1, 3, 1, 1, 1, False),   # wide odd rows: the sparse wide-row tiles and their remainders
]


def _case(case, seed, has_sum=True, relu=True, slope=0.0, ties="even", off=0.0):
    n, c, h, w, cout, group, k, s, p, d, signed = case
    rng = np.random.default_rng(seed)
    q = rng.integers(-128 if signed else 0, 128 if signed else 256, (n, c, h, w)).astype(np.int16)
    wt = rng.integers(-2048, 2048, (cout, c // group, k, k)).astype(np.int16)
    g = ConvGeometry(k, k, s, s, p, p, d, d)
    a = rng.random(cout) * 2e-4
    # scales picked so that many outputs land exactly on .5 (ties) and some clip
    if ties == "away":
        a = np.full(cout, 0.5)
    rq = int8.Requant(A=a, B=a * rng.random(cout) * 300 if has_sum else np.zeros(cout),
                      C=np.round(rng.normal(size=cout) * 60) + (0.5 if ties == "away" else 0.0),
                      lo=0 if relu else -128, hi=255 if relu else 127, off=off, relu=relu, slope=slope, ties=ties)
    return q, wt, g, group, rq


@pytest.mark.parametrize("case", CASES)
def test_reference_equals_float_convolution(case):
    """The reference's integer sums and window sums equal a float64 convolution of the same integers."""
    q, wt, g, group, _ = _case(case, 1)
    n, c, h, w = q.shape
    cout = wt.shape[0]
    ho, wo = g.out_shape(h, w)
    acc = np.empty((n, cout, ho, wo))
    fconv.conv_forward(q.astype(np.float64), wt.astype(np.float64), None, g, group, acc)
    ones = np.ones_like(wt, dtype=np.float64)
    s = np.empty_like(acc)
    fconv.conv_forward(q.astype(np.float64), ones, None, g, group, s)
    rq = int8.Requant(A=np.full(cout, 1.0), B=np.zeros(cout), C=np.zeros(cout), lo=-30000, hi=30000)
    # identity epilogue on sums scaled into int16: compare acc/2**10 rounded
    rq.A[:] = 2.0 ** -10
    got = int8.conv_int_reference(q, wt, None, g, group, rq)
    np.testing.assert_array_equal(got, np.clip(np.rint(acc * 2.0 ** -10), -30000, 30000).astype(np.int16))
    rq_s = int8.Requant(A=np.zeros(cout), B=np.full(cout, 1.0 / 64), C=np.zeros(cout), lo=-30000, hi=30000)
    got_s = int8.conv_int_reference(q, wt, None, g, group, rq_s)
    np.testing.assert_array_equal(got_s, np.rint(s / 64).astype(np.int16))


@pytest.mark.skipif(not int8.available(), reason="integer kernel not built")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", [dict(), dict(has_sum=False), dict(relu=False), dict(slope=0.125),
                                     dict(ties="away"), dict(off=-7.0), dict(relu=False, off=0.5, ties="away")])
def test_kernel_equals_reference_every_isa(case, variant):
    q, wt, g, group, rq = _case(case, 2, **variant)
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    assert 0 < np.count_nonzero(ref - rq.lo) < ref.size  # not a degenerate all-clipped output
    pc = int8.PackedConv(wt, g, group, rq)
    isas = int8.supported_isas()
    assert "generic" in isas
    for isa in isas:
        ho, wo = g.out_shape(*q.shape[2:])
        if not int8.native_ok(g, wo, isa):
            continue
        np.testing.assert_array_equal(pc.forward(q, isa=isa), ref, err_msg=isa)


@pytest.mark.skipif(not int8.available(), reason="integer kernel not built")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", [dict(), dict(has_sum=False)])
@pytest.mark.parametrize("singles", [True, False])
def test_sparse_kernel_equals_reference_every_isa(case, variant, singles):
    """The sparse kernels on 80%-zero weights, some channels all zero: channel pairs (every instruction set) and,
    on AVX-512 with rows of >= 32 outputs, the paired-singles one."""
    q, wt, g, group, rq = _case(case, 4, **variant)
    rng = np.random.default_rng(5)
    wt[rng.random(wt.shape) < 0.8] = 0
    wt[1] = 0
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    pc = int8.PackedConv(wt, g, group, rq, sparse=True)
    pc.singles = singles
    assert pc._sw.size == np.count_nonzero(int8.pack_weights(wt, group, 1))
    for isa in int8.supported_isas():
        if int8.native_ok(g, g.out_shape(*q.shape[2:])[1], isa):
            np.testing.assert_array_equal(pc.forward(q, isa=isa), ref, err_msg=isa)
    assert int8.nonzero_pair_fraction(wt, group) < 0.5


# (N, C, H, W, Cout, group, k, stride, pad, dilation, signed input): rows of >= 32 outputs for the singles kernel
SINGLES_CASES = [
    (1, 3, 12, 70, 36, 1, 5, 2, 2, 1, True),     # conv1a-like: stride 2, 3 channels, 36 outputs (two chunks)
    (2, 16, 7, 32, 40, 4, 3, 1, 1, 1, False),    # rows of exactly one vector, grouped, two images
    (1, 24, 9, 33, 24, 3, 3, 1, 4, 4, False),    # dilation 4, last vector overlapping, three groups
    (1, 40, 6, 97, 72, 1, 3, 1, 2, 2, False),    # wide odd rows, channel chunks of 32 and a remainder of 8
    (1, 10, 8, 65, 12, 2, 1, 1, 0, 1, True),     # 1x1, odd channels per group
    (1, 6, 9, 81, 10, 1, 3, 2, 0, 2, False),     # stride 2 with dilation 2, no padding
    (1, 8, 5, 40, 8, 1, (3, 1), 1, (1, 0), 1, False),  # a 3x1 kernel
]


@pytest.mark.skipif(not set(int8.SINGLES_ISAS) & set(int8.supported_isas()), reason="no AVX-512")
@pytest.mark.parametrize("case", SINGLES_CASES)
@pytest.mark.parametrize("variant", [dict(), dict(has_sum=False), dict(slope=0.125, off=3.0),
                                     dict(relu=False, ties="away")])
@pytest.mark.parametrize("block_bytes", [16 << 10, 64])
def test_singles_sparse_kernel_equals_reference(case, variant, block_bytes, monkeypatch):
    """The paired-singles sparse kernel: nonzero weights paired across channels and taps, odd counts, empty
    channels, one input-channel block or many (partial sums kept between blocks), on AVX-512."""
    n, c, h, w, cout, group, k, s, p, d, signed = case
    kh, kw = k if isinstance(k, tuple) else (k, k)
    ph, pw = p if isinstance(p, tuple) else (p, p)
    rng = np.random.default_rng(12)
    q = rng.integers(-128 if signed else 0, 128 if signed else 256, (n, c, h, w)).astype(np.int16)
    wt = rng.integers(-2400, 2400, (cout, c // group, kh, kw)).astype(np.int16)
    wt[rng.random(wt.shape) < 0.8] = 0
    wt[1] = 0
    wt[2] = 0
    wt[2, 0, 0, 0] = 5  # a single nonzero: its pair has a zero partner
    g = ConvGeometry(kh, kw, s, s, ph, pw, d, d)
    _, _, _, _, rq = _case((n, c, h, w, cout, group, 1, 1, 0, 1, signed), 13, **variant)
    monkeypatch.setattr(int8, "SINGLES_BLOCK_BYTES", block_bytes)
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    assert 0 < np.count_nonzero(ref - rq.lo) < ref.size
    pc = int8.PackedConv(wt, g, group, rq, sparse=True)
    ho, wo = g.out_shape(h, w)
    assert wo >= int8.SINGLES_WIDTH
    for isa in set(int8.SINGLES_ISAS) & set(int8.supported_isas()):
        np.testing.assert_array_equal(pc.forward(q, isa=isa), ref, err_msg=isa)
        nkb = pc._ss[1][3]
        assert (nkb > 1) == (block_bytes < 1024 and c // group > 1)
    np.testing.assert_array_equal(pc.forward(q, isa="generic"), ref)  # the portable channel-pairs kernel


@pytest.mark.skipif(not set(int8.SINGLES_ISAS) & set(int8.supported_isas()), reason="no AVX-512")
@pytest.mark.parametrize("threads", [1, 3])
def test_singles_same_integers_any_thread_count(threads, monkeypatch):
    """The singles kernel's threads take tasks as they come free: any thread count, the same integers."""
    case = SINGLES_CASES[3]
    q, wt, g, group, rq = _case(case, 15)
    wt[np.random.default_rng(16).random(wt.shape) < 0.8] = 0
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    monkeypatch.setattr(int8._LIB, "threads", threads)
    pc = int8.PackedConv(wt, g, group, rq, sparse=True)
    for isa in set(int8.SINGLES_ISAS) & set(int8.supported_isas()):
        for _ in range(3):
            np.testing.assert_array_equal(pc.forward(q, isa=isa), ref, err_msg=isa)
    assert pc._ss_call[3] >= 8 * threads  # enough tasks to share


def _planar(q, group, hb, wq, s, ph, pw):
    """The packed planar input in NumPy: ``q`` zero padded to ``hb`` rows of ``wq * s`` columns, columns split into
    ``s`` stride phases, one flat plane per channel; and its group sums (N, G, plane)."""
    n, c, h, w = q.shape
    full = np.zeros((n, c, hb, wq * s), np.int16)
    full[:, :, ph:ph + h, pw:pw + w] = q[:, :, :hb - ph, :wq * s - pw]
    planes = full.reshape(n, c, hb, wq, s).transpose(0, 1, 2, 4, 3).reshape(n, c, -1)
    return planes, planes.reshape(n, group, c // group, -1).astype(np.int64).sum(axis=2)


@pytest.mark.skipif(not set(int8.SINGLES_ISAS) & set(int8.supported_isas()), reason="no AVX-512")
@pytest.mark.parametrize("case", SINGLES_CASES)
def test_pack_input16_equals_numpy(case):
    """The planar layout (zero padding, stride phases, planes pstride apart) and its group sums."""
    n, c, h, w, cout, group, k, s, p, d, signed = case
    kh, kw = k if isinstance(k, tuple) else (k, k)
    ph, pw = p if isinstance(p, tuple) else (p, p)
    q = np.random.default_rng(14).integers(-300, 300, (n, c, h, w)).astype(np.int16)
    g = ConvGeometry(kh, kw, s, s, ph, pw, d, d)
    ho, wo = g.out_shape(h, w)
    packed, gsum, hb, wq, ps = int8.pack_input16(q, group, g, ho, wo)
    assert ps >= hb * s * wq and ps % 32 == 0 and ps // 32 % 2 == 1
    planes, sums = _planar(q, group, hb, wq, s, ph, pw)
    np.testing.assert_array_equal(packed[:, :, :planes.shape[2]], planes)
    np.testing.assert_array_equal(gsum.reshape(n, group, -1), sums)
    nosum = int8.pack_input16(q, group, g, ho, wo, sums=False)
    assert nosum[1] is None
    np.testing.assert_array_equal(nosum[0][:, :, :planes.shape[2]], planes)


# (N, C, H, W, Cout, group, k, stride, pad, dilation): rows of >= 64 outputs for the sparse quads kernel
SQUADS_CASES = [
    (1, 3, 7, 134, 36, 1, 5, 2, 2, 1),      # conv1a-like: stride 2, 3 channels, 36 outputs (two chunks)
    (2, 16, 5, 64, 40, 4, 3, 1, 1, 1),      # rows of exactly one vector, grouped, two images
    (1, 24, 7, 67, 24, 3, 3, 1, 4, 4),      # dilation 4, last vector overlapping, three groups
    (1, 40, 5, 161, 72, 1, 3, 1, 2, 2),     # wide odd rows, channel chunks of 32 and a remainder of 8
    (1, 10, 6, 129, 12, 2, 1, 1, 0, 1),     # 1x1, odd channels per group
    (1, 6, 7, 141, 10, 1, 3, 2, 0, 2),      # stride 2 with dilation 2, no padding
    (1, 9, 5, 70, 8, 1, (3, 1), 1, (1, 0), 1),  # a 3x1 kernel
]


def _squads_case(case, seed, **variant):
    """u8 input, int8 weights (both ends of the range) at 80% zeros, with empty channels, channels holding one
    and five nonzero weights (short quads) and a few weights past int8 (each split in two)."""
    n, c, h, w, cout, group, k, s, p, d = case
    kh, kw = k if isinstance(k, tuple) else (k, k)
    ph, pw = p if isinstance(p, tuple) else (p, p)
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 256, (n, c, h, w)).astype(np.int16)
    wt = rng.integers(-128, 128, (cout, c // group, kh, kw)).astype(np.int16)
    wt[rng.random(wt.shape) < 0.8] = 0
    wt[0, 0, 0, 0], wt[0, -1, -1, -1] = -128, 127
    wt[1] = 0
    wt[2] = 0
    wt[2, 0, 0, 0] = 5  # a single nonzero: three zero partners
    wt[3] = 0
    wt[3].flat[-5:] = [7, -9, 11, -13, 15]  # one quad and a single
    wt[4].flat[:2] = [-256, 254]  # the farthest past int8 a split reaches
    wt[5].flat[-3:] = [-129, 128, -131]
    g = ConvGeometry(kh, kw, s, s, ph, pw, d, d)
    _, _, _, _, rq = _case((n, c, h, w, cout, group, 1, 1, 0, 1, False), seed + 1, **variant)
    rq.A *= 16
    return q, wt, g, group, rq


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
@pytest.mark.parametrize("case", SQUADS_CASES)
@pytest.mark.parametrize("variant", [dict(), dict(has_sum=False), dict(slope=0.125, off=3.0),
                                     dict(relu=False, ties="away")])
@pytest.mark.parametrize("block_bytes", [16 << 10, 64])
def test_squads_sparse_kernel_equals_reference(case, variant, block_bytes, monkeypatch):
    """The sparse quads kernel (u8 x s8): nonzero int8 weights grouped in fours across channels and taps, short
    quads, empty channels, one input-channel block or many (partial sums kept between blocks)."""
    q, wt, g, group, rq = _squads_case(case, 20, **variant)
    monkeypatch.setattr(int8, "SINGLES_BLOCK_BYTES", block_bytes)
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    assert 0 < np.count_nonzero(ref - rq.lo) < ref.size
    pc = int8.PackedConv(wt, g, group, rq, sparse=True, u8_input=True)
    assert pc.squads and g.out_shape(*q.shape[2:])[1] >= int8.SQUADS_WIDTH
    np.testing.assert_array_equal(pc.forward(q, isa="vnni"), ref)
    assert pc._ss[0][0] == "quads"  # the quads kernel ran
    nkb = pc._ss[1][3]
    assert (nkb > 1) == (block_bytes < 1024 and q.shape[1] // group > 1)
    np.testing.assert_array_equal(pc.forward(q, isa="avx512bw"), ref)  # the paired-singles kernel instead
    assert pc._ss[0][0] != "quads"


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
@pytest.mark.parametrize("threads", [1, 3])
def test_squads_same_integers_any_thread_count(threads, monkeypatch):
    """The sparse quads kernel's threads take tasks as they come free: any thread count, the same integers."""
    q, wt, g, group, rq = _squads_case(SQUADS_CASES[3], 21)
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    monkeypatch.setattr(int8._LIB, "threads", threads)
    pc = int8.PackedConv(wt, g, group, rq, sparse=True, u8_input=True)
    for _ in range(3):
        np.testing.assert_array_equal(pc.forward(q, isa="vnni"), ref)
    assert pc._ss[0][0] == "quads" and pc._ss_call[3] >= 8 * threads  # enough tasks to share


def _split_case(case, seed, **variant):
    """The quads case with jacinto's wider weights (12-bit, centred: -4096..4095) at 80% zeros, both ends of the
    range and the values around each multiple of 32 (where the hi/lo split changes)."""
    q, wt, g, group, rq = _squads_case(case, seed, **variant)
    rng = np.random.default_rng(seed + 7)
    wide = rng.integers(-4096, 4096, wt.shape).astype(np.int16)
    wt = np.where(wt != 0, wide, 0).astype(np.int16)
    edge = [-4096, 4095, -33, -32, -31, -1, 1, 31, 32, 33, 0x7FF, -0x800]
    wt[4].flat[:len(edge)] = edge[:wt[4].size]
    rq.A /= 64
    rq.B /= 64
    return q, wt, g, group, rq


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
@pytest.mark.parametrize("case", SQUADS_CASES)
@pytest.mark.parametrize("variant", [dict(), dict(has_sum=False, relu=False, ties="away")])
@pytest.mark.parametrize("block_bytes", [16 << 10, 64])
def test_split_quads_kernel_equals_reference(case, variant, block_bytes, monkeypatch):
    """12-bit weights on u8 inputs: the quads kernel with each weight as 32*hi + lo (two int8 quads per group on
    the same inputs), short quads, empty channels, one input-channel block or many."""
    q, wt, g, group, rq = _split_case(case, 30, **variant)
    monkeypatch.setattr(int8, "SINGLES_BLOCK_BYTES", block_bytes)
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    assert 0 < np.count_nonzero(ref - rq.lo) < ref.size and np.count_nonzero(ref - rq.hi) > 0
    pc = int8.PackedConv(wt, g, group, rq, sparse=True, u8_input=True)
    assert pc.split and not pc.squads
    np.testing.assert_array_equal(pc.forward(q, isa="vnni"), ref)
    assert pc._ss[0][0] == "quads"  # the quads kernel ran, on split weights
    np.testing.assert_array_equal(pc.forward(q, isa="avx512bw"), ref)  # the paired-singles kernel instead
    assert pc._ss[0][0] != "quads"


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
@pytest.mark.parametrize("case", SQUADS_CASES)
@pytest.mark.parametrize("weights", ["split", "squads"])
@pytest.mark.parametrize("variant", [dict(), dict(has_sum=False, relu=False, ties="away")])
@pytest.mark.parametrize("block_bytes", [16 << 10, 64])
def test_quads_kernels_on_signed_input(case, weights, variant, block_bytes, monkeypatch):
    """Signed 8-bit input (-128..127, both ends present) on the sparse quads kernels: packed as x + 128 (padding
    128), the offset's part taken off every sum and window sum before the epilogue: the reference's integers."""
    q, wt, g, group, rq = (_split_case if weights == "split" else _squads_case)(case, 40, **variant)
    monkeypatch.setattr(int8, "SINGLES_BLOCK_BYTES", block_bytes)
    q = (q - 128).astype(np.int16)
    q.flat[:2] = [-128, 127]
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    assert 0 < np.count_nonzero(ref - rq.lo) < ref.size
    pc = int8.PackedConv(wt, g, group, rq, sparse=True, s8_input=True)
    assert pc.in_off == 128 and getattr(pc, weights) and g.out_shape(*q.shape[2:])[1] >= int8.SQUADS_WIDTH
    np.testing.assert_array_equal(pc.forward(q, isa="vnni"), ref)
    assert pc._ss[0][0] == "quads"
    np.testing.assert_array_equal(pc.forward(q, isa="avx512bw"), ref)  # the paired-singles kernel, no offset
    assert pc._ss[0][0] != "quads"
    np.testing.assert_array_equal(pc.forward(q, isa="vnni"), ref)  # and back


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
def test_group_sums_of_many_uint8_planes():
    """Group sums over more planes than 16-bit partial sums hold (the kernel widens every 257 planes): all 255."""
    n, c, h, w, group = 1, 600, 5, 70, 2
    q = np.full((n, c, h, w), 255, np.int16)
    q[0, :, 0, 0] = np.arange(c) % 256
    g = ConvGeometry(3, 3, 1, 1, 1, 1, 1, 1)
    packed, gsum, hb, wq, ps = int8.pack_input16(q, group, g, h, w, u8=True)
    planes, sums = _planar(q, group, hb, wq, 1, 1, 1)
    np.testing.assert_array_equal(gsum.reshape(n, group, -1), sums)
    assert sums.max() == 300 * 255 > 2 ** 16


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
@pytest.mark.parametrize("case", SQUADS_CASES[:2])
def test_pack_input8_with_offset_equals_numpy(case):
    """ci8_pack8 with offset 128: the planes of x + 128, padding 128, and the group sums of those planes."""
    n, c, h, w, cout, group, k, s, p, d = case
    kh, kw = k if isinstance(k, tuple) else (k, k)
    ph, pw = p if isinstance(p, tuple) else (p, p)
    q = np.random.default_rng(5).integers(-128, 128, (n, c, h, w)).astype(np.int16)
    g = ConvGeometry(kh, kw, s, s, ph, pw, d, d)
    ho, wo = g.out_shape(h, w)
    packed, gsum, hb, wq, ps = int8.pack_input16(q, group, g, ho, wo, u8=True, off=128)
    inside = _planar(np.ones_like(q), group, hb, wq, s, ph, pw)[0]
    want = _planar(q + 128, group, hb, wq, s, ph, pw)[0] + 128 * (1 - inside)
    np.testing.assert_array_equal(packed[:, :, :want.shape[2]], want)
    np.testing.assert_array_equal(gsum.reshape(n, group, -1),
                                  want.reshape(n, group, c // group, -1).astype(np.int64).sum(axis=2))
    assert np.count_nonzero(inside == 0) > 0  # there is padding


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
def test_squads_only_for_weights_it_can_split_and_wide_rows():
    """Weights past what two int8 parts hold (-256..254) take the split (32*hi + lo) quads; past -4096..4095, or
    with channel sums the split parts could overflow, the paired-singles kernel; rows narrower than 64 outputs
    too; AutoConv's sparse kernel takes u8 inputs."""
    q, wt, g, group, rq = _squads_case(SQUADS_CASES[1], 22)
    for far, split in ((-257, True), (255, True), (-4097, False), (4096, False)):
        wt2 = wt.copy()
        wt2[0, 0, 0, 0] = far
        ref = int8.conv_int_reference(q, wt2, None, g, group, rq)
        pc = int8.PackedConv(wt2, g, group, rq, sparse=True, u8_input=True)
        assert not pc.squads and pc.split == split
        np.testing.assert_array_equal(pc.forward(q, isa="vnni"), ref)
        assert (pc._ss[0][0] == "quads") == split
    assert not int8._split_sums_fit(np.full((2, 700, 3, 3), 4095))  # 255 * 6300 * 4095 (and the parts) > 2**31
    narrow = q[:, :, :, :40]
    pc = int8.PackedConv(wt, g, group, rq, sparse=True, u8_input=True)
    np.testing.assert_array_equal(pc.forward(narrow, isa="vnni"),
                                  int8.conv_int_reference(narrow, wt, None, g, group, rq))
    assert pc._ss[0][0] != "quads"


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
def test_auto_conv_times_the_squads_kernel():
    """AutoConv on u8 inputs: its sparse side is the quads kernel, the dense side the u8 x s8 one; every call
    (whichever kernel it timed or kept) gives the reference integers."""
    q, wt, g, group, rq = _squads_case(SQUADS_CASES[3], 24)
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    ac = int8.AutoConv(wt, g, group, rq, u8_input=True)
    for _ in range(8):
        np.testing.assert_array_equal(ac.forward(q), ref)
    assert ac.sparse_conv._ss[0][0] == "quads" and len(ac.times[True]) >= 2


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
@pytest.mark.parametrize("case", SQUADS_CASES)
def test_pack_input8_equals_numpy(case):
    """The planar layout in uint8 (the quads kernel's input): zero padding, stride phases, planes pstride bytes
    apart on an odd number of 64-byte lines, and its group sums."""
    n, c, h, w, cout, group, k, s, p, d = case
    kh, kw = k if isinstance(k, tuple) else (k, k)
    ph, pw = p if isinstance(p, tuple) else (p, p)
    q = np.random.default_rng(23).integers(0, 256, (n, c, h, w)).astype(np.int16)
    g = ConvGeometry(kh, kw, s, s, ph, pw, d, d)
    ho, wo = g.out_shape(h, w)
    packed, gsum, hb, wq, ps = int8.pack_input16(q, group, g, ho, wo, u8=True)
    assert packed.dtype == np.uint8 and ps >= hb * s * wq and ps % 64 == 0 and ps // 64 % 2 == 1
    planes, sums = _planar(q, group, hb, wq, s, ph, pw)
    np.testing.assert_array_equal(packed[:, :, :planes.shape[2]], planes)
    np.testing.assert_array_equal(gsum.reshape(n, group, -1), sums)


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("has_sum", [True, False])
def test_u8s8_kernel_equals_reference(case, has_sum):
    """8-bit weights on unsigned 8-bit activations: the u8 x s8 (vpdpbusd) quads kernel."""
    q, wt, g, group, rq = _case(case, 10, has_sum=has_sum)
    q = np.abs(q).astype(np.int16)
    wt = np.random.default_rng(11).integers(-128, 128, wt.shape).astype(np.int16)
    rq.A *= 16
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    assert 0 < np.count_nonzero(ref) < ref.size
    pc = int8.PackedConv(wt, g, group, rq, u8_input=True)
    assert pc.quads
    if int8.native_ok(g, g.out_shape(*q.shape[2:])[1], "vnni"):
        np.testing.assert_array_equal(pc.forward(q, isa="vnni"), ref)
    np.testing.assert_array_equal(pc.forward(q, isa="generic"), ref)  # falls back to the pairs layout
    assert not int8.PackedConv(wt * 2, g, group, rq, u8_input=True).quads  # weights past int8


@pytest.mark.skipif(not int8.available(), reason="integer kernel not built")
def test_auto_conv_times_both_kernels_then_keeps_one():
    q, wt, g, group, rq = _case(CASES[1], 6)
    wt[np.random.default_rng(7).random(wt.shape) < 0.8] = 0
    ref = int8.conv_int_reference(q, wt, None, g, group, rq)
    ac = int8.AutoConv(wt, g, group, rq, trials=2, max_trials=4)
    calls = 0
    while calls < 8 and (calls < 4 or ac.choice is None):
        assert (ac.choice is None) == (calls < 4 or calls == len(ac.times[True]) + len(ac.times[False]))
        np.testing.assert_array_equal(ac.forward(q), ref)
        calls += 1
    assert ac.choice is not None
    ntimed = len(ac.times[True]) + len(ac.times[False])
    assert 4 <= ntimed <= 8 and abs(len(ac.times[True]) - len(ac.times[False])) <= 1
    np.testing.assert_array_equal(ac.forward(q), ref)
    assert len(ac.times[True]) + len(ac.times[False]) == ntimed  # no more trials once chosen
    singles = bool(set(int8.SINGLES_ISAS) & set(int8.supported_isas()))  # rows of 40: the singles kernel
    assert ac.favour == (int8.SINGLES_FAVOUR if singles else 1.0)


def test_auto_conv_choice_waits_while_the_timings_are_close():
    """Two timings each decide only when the kernels are far apart; close or contradictory ones (a single
    fast outlier) ask for more trials, and the medians decide after ``max_trials``."""
    q, wt, g, group, rq = _case(CASES[1], 6)

    def choice(dense_ms, sparse_ms, favour=1.0):
        times = {False: [t * 1e-3 for t in dense_ms], True: [t * 1e-3 for t in sparse_ms], "favour": favour}
        return int8.AutoConv(wt, g, group, rq, trials=2, times=times, max_trials=4).choice

    assert choice([3.5], [2.0]) is None  # one trial of each
    assert choice([3.5, 3.6], [2.0, 1.9]) is True  # far apart: decided after two
    assert choice([3.5, 3.6], [5.0, 4.8]) is False
    assert choice([2.5, 1.5], [1.9, 2.0]) is None  # one fast dense outlier: more trials
    assert choice([2.5, 1.5, 3.5, 3.6], [1.9, 2.0, 2.0, 1.9]) is True  # the medians decide
    assert choice([2.0] * 4, [2.1] * 4) is False  # close after max_trials: the medians against the favour
    assert choice([2.0] * 4, [2.1] * 4, favour=1.1) is True


@pytest.mark.skipif(not int8.available(), reason="integer kernel not built")
def test_ties_are_rounded_as_asked():
    """Outputs landing on .5 exactly: ties to even and ties away from zero give different integers."""
    case = (1, 2, 4, 16, 8, 1, 1, 1, 0, 1, False)
    q, wt, g, group, rq = _case(case, 3, has_sum=False, relu=False)
    wt[...] = 1
    q[...] = 1
    rq.A[:] = 0.5  # acc = 2 -> 1.0; then C = 0.5 / 1.5 ...
    rq.C[:] = np.arange(8) + 0.5
    even = int8.PackedConv(wt, g, group, rq).forward(q)
    rq.ties = "away"
    away = int8.PackedConv(wt, g, group, rq).forward(q)
    np.testing.assert_array_equal(even[0, :, 0, 0], [2, 2, 4, 4, 6, 6, 8, 8])
    np.testing.assert_array_equal(away[0, :, 0, 0], [2, 3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(int8.conv_int_reference(q, wt, None, g, group, rq), away)


@pytest.mark.skipif(not int8.available(), reason="integer kernel not built")
@pytest.mark.parametrize("case", CASES)
def test_pack_input_native_equals_numpy(case):
    q, _, g, group, _ = _case(case, 8)
    ho, wo = g.out_shape(*q.shape[2:])
    a = int8.pack_input(q, group, g, ho, wo)
    b = int8.pack_input(q, group, g, ho, wo, native=False)
    assert a[1:] == b[1:]
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.skipif(not int8.available(), reason="integer kernel not built")
@pytest.mark.parametrize("case", CASES)
def test_pack_input4_equals_numpy(case):
    """The quads layout: four uint8 channels per int32 lane (channel 4k+i in byte i), zero padding and channels."""
    q, _, g, group, _ = _case(case, 9)
    q = np.abs(q) % 256
    n, c, h, w = q.shape
    ho, wo = g.out_shape(h, w)
    packed, hb, wq, nq = int8.pack_input4(q, group, g, ho, wo)
    cg, s = c // group, g.sw
    full = np.zeros((n, group, 4 * nq, hb, wq * s), np.uint8)
    full[:, :, :cg, g.ph:g.ph + h, g.pw:g.pw + w] = q.reshape(n, group, cg, h, w)
    quads = full.reshape(n, group, nq, 4, hb, wq, s).transpose(0, 1, 2, 4, 6, 5, 3)
    ref = np.ascontiguousarray(quads).view("<i4").reshape(n, group * nq, hb, s, wq)
    np.testing.assert_array_equal(packed, ref)


def test_bounds_check():
    w = np.full((2, 256, 3, 3), 4095, np.int16)  # jsegnet21v2's widest layer, every 12-bit weight at its extreme
    int8.check_bounds(w[:, :128], 255)
    with pytest.raises(ValueError, match="overflow"):
        int8.check_bounds(w, 255)
    with pytest.raises(ValueError, match="overflow"):
        int8.check_bounds(np.full((1, 1), 2 ** 15, np.int32), 1)


@pytest.mark.parametrize("ties", ["even", "away"])
def test_quantize_float_native_equals_numpy(ties):
    """The compiled quantizer (float32 input) and the NumPy one (float64 input, same values) give the same
    integers, ties and clipping included."""
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(scale=3, size=5000), np.arange(-20, 20) + 0.5]).astype(np.float32)
    a = int8.quantize_float(x, 8.0, 0.0, -128, 127, ties)
    b = int8.quantize_float(x.astype(np.float64), 8.0, 0.0, -128, 127, ties)
    np.testing.assert_array_equal(a, b)
    half = int8.quantize_float(np.array([0.5, 1.5, -0.5, -2.5], np.float32), 1.0, 0.0, -128, 127, ties)
    assert half.tolist() == ([0, 2, 0, -2] if ties == "even" else [1, 2, -1, -3])
    assert a.min() == -128 and a.max() == 127


@pytest.mark.skipif(not int8.available(), reason="integer kernel not built")
def test_sparse_worthwhile_follows_the_kernel_in_use():
    """The paired-singles kernel (AVX-512) pays up to 40% nonzero weights; the channel-pairs one up to 40%
    nonzero pairs (about 22% nonzero weights)."""
    rng = np.random.default_rng(17)
    w30 = rng.integers(1, 100, (64, 32, 3, 3)).astype(np.int16)
    w30[rng.random(w30.shape) >= 0.3] = 0
    w50 = rng.integers(1, 100, (64, 32, 3, 3)).astype(np.int16)
    w50[rng.random(w50.shape) >= 0.5] = 0
    singles = bool(set(int8.SINGLES_ISAS) & set(int8.supported_isas()))
    assert int8.nonzero_pair_fraction(w30, 1) > int8.SPARSE_MAX_NONZERO_PAIRS
    assert int8.sparse_worthwhile(w30, 1) == singles
    assert not int8.sparse_worthwhile(w50, 1)
    # 8-bit inputs on VNNI (the sparse quads kernels): timed up to 90% nonzero weights
    vnni = "vnni" in int8.supported_isas()
    assert int8.sparse_worthwhile(w50, 1, quads=True) == vnni
    w95 = rng.integers(1, 100, (64, 32, 3, 3)).astype(np.int16)
    w95[rng.random(w95.shape) >= 0.95] = 0
    assert not int8.sparse_worthwhile(w95, 1, quads=True)


def test_fast_epilogue_thresholds():
    """The float32 epilogue's thresholds: 0.5 less the error bound, rounded down; -1 where the bound is too loose or
    a coefficient is not finite in float32; none with a relu step or an offset."""
    w = np.array([[3, -4], [100, 0], [1, 1], [2, 2]], np.int16)
    rq = int8.Requant(A=np.array([1e-3, 1e-3, 1e39, 1e-3]), B=np.array([0.0, 1e-4, 0.0, 0.0]),
                      C=np.array([5.0, -7.0, 0.0, 2e6]), lo=0, hi=255)
    fa, fb, fc, ft = int8.fast_epilogue(w, rq, 255)
    bound0 = (3 * 1e-3 * 255 * 7 + 3 * 5.0) * 2.0 ** -23 + 2.0 ** -40
    assert ft[0] <= 0.5 - bound0 and ft[0] > 0.5 - bound0 - 1e-7
    bound1 = (3 * 1e-3 * 255 * 100 + 4 * 1e-4 * 255 * 2 + 3 * 7.0) * 2.0 ** -23 + 2.0 ** -40
    assert ft[1] <= 0.5 - bound1
    assert ft[2] == -1 and ft[3] == -1  # A past float32; |C| so large the bound passes 0.25
    assert int8.fast_epilogue(w, int8.Requant(A=rq.A, B=rq.B, C=rq.C, lo=0, hi=255, off=3.0), 255) is None
    assert int8.fast_epilogue(w, int8.Requant(A=rq.A, B=rq.B, C=rq.C, lo=-128, hi=127, relu=True), 255) is None


def test_fast_epilogue_bound_holds_near_ties():
    """Emulating the kernel's float32 path in NumPy on values built to land within 1e-6 of k + 0.5 (and random
    ones): wherever the threshold lets the float32 value through, it rounds to the double path's integer."""
    rng = np.random.default_rng(9)
    m, n = 64, 4000
    w = rng.integers(-2048, 2048, (m, 300)).astype(np.int16)
    A = rng.uniform(1e-5, 3e-4, m)
    B = A * rng.uniform(-0.5, 0.5, m)
    acc = rng.integers(-2 ** 22, 2 ** 22, (m, n))
    s = rng.integers(0, 255 * 300, (m, n))
    exact = A[:, None] * acc + B[:, None] * s
    k = np.floor(exact)
    C = np.zeros((m, n))
    C[:, : n // 2] = (k + 0.5 - exact + rng.uniform(-1e-6, 1e-6, (m, n)))[:, : n // 2]  # near ties
    C[:, n // 2:] = rng.uniform(-40, 40, (m, n - n // 2))
    ok_total = 0
    for j in range(0, n, 5):  # one Requant per column (C differs from column to column)
        cj = C[:, j]
        rq = int8.Requant(A=A, B=B, C=cj, lo=-1e9, hi=1e9)
        fa, fb, fc, ft = int8.fast_epilogue(w, rq, 255)
        a, sj = acc[:, j], s[:, j]
        vd = (A * a + B * sj) + cj  # the double path's order
        u = (fb.astype(np.float64) * np.float32(sj) + fc).astype(np.float32)  # fma(B, s, C) in float32
        vf = (fa.astype(np.float64) * np.float32(a) + u).astype(np.float32)  # fma(A, acc, u)
        r = np.rint(vf)
        through = np.abs(vf - r) < ft
        assert np.array_equal(r[through], np.rint(vd)[through])
        ok_total += int(through.sum())
    assert ok_total > 0


@pytest.mark.skipif("vnni" not in int8.supported_isas(), reason="no AVX-512 VNNI")
@pytest.mark.parametrize("weights", ["split", "squads"])
@pytest.mark.parametrize("has_sum", [True, False])
@pytest.mark.parametrize("consumer", [(3, 1, 1, 1), (3, 1, 2, 2), (1, 2, 0, 1)])  # (k, group, pad, dilation)
def test_producer_writes_the_next_convolutions_planes(weights, has_sum, consumer):
    """A sparse convolution writing its uint8 outputs straight into the next one's planar input (packed_input)
    gives that one the integers its own packing would: the same outputs, twice in a row (padding stays zero)."""
    k, group, pad, dil = consumer
    q, wt, g, grp, rq = (_split_case if weights == "split" else _squads_case)(SQUADS_CASES[3], 50, has_sum=has_sum)
    producer = int8.PackedConv(wt, g, grp, rq, sparse=True, u8_input=True)
    mid = producer.forward(q, isa="vnni")
    assert mid.min() >= 0 and mid.max() <= 255
    rng = np.random.default_rng(51)
    c = mid.shape[1]
    w2 = rng.integers(-2048, 2048, (16, c // group, k, k)).astype(np.int16)
    w2[rng.random(w2.shape) < 0.8] = 0
    g2 = ConvGeometry(k, k, 1, 1, pad, pad, dil, dil)
    _, _, _, _, rq2 = _split_case(SQUADS_CASES[3], 52, has_sum=has_sum)
    rq2 = int8.Requant(A=rq2.A[:16], B=rq2.B[:16], C=rq2.C[:16], lo=rq2.lo, hi=rq2.hi)
    want = int8.conv_int_reference(mid, w2, None, g2, group, rq2)
    cons = int8.PackedConv(w2, g2, group, rq2, sparse=True, u8_input=True)
    for _ in range(2):
        tgt = cons.packed_input(mid.shape, "vnni")
        assert tgt is not None
        assert producer.forward(q, isa="vnni", pack_into=tgt) is None
        np.testing.assert_array_equal(cons.forward_prepacked(mid.shape, "vnni"), want)
    np.testing.assert_array_equal(cons.forward(mid, isa="vnni"), want)  # its own packing, same buffers
    tgt = cons.packed_input(mid.shape, "vnni")
    producer.forward(q, isa="vnni", pack_into=tgt)
    np.testing.assert_array_equal(cons.forward_prepacked(mid.shape, "vnni"), want)
    # no planar input to offer: signed input (offset), column stride 2, or another kernel
    assert int8.PackedConv(w2, g2, group, rq2, sparse=True, s8_input=True).packed_input(mid.shape, "vnni") is None
    g3 = ConvGeometry(k, k, 2, 2, pad, pad, dil, dil)
    assert int8.PackedConv(w2, g3, group, rq2, sparse=True, u8_input=True).packed_input(mid.shape, "vnni") is None
    assert cons.packed_input(mid.shape, "avx512bw") is None
