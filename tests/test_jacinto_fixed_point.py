"""The jacinto quantizer (§b.5) and scale estimation (§b.4, §b.6) against float64 references and hand values."""

import math

import numpy as np
import pytest

from caffelite.jacinto import fixed_point as fp


def _reference(x, scale, offset, bw, unsigned, rounding, clip, ties, u=None):
    """Element-by-element transcription of §b.5 with Python floats (float64)."""
    scale = float(np.float32(scale))
    offset = float(np.float32(offset))
    inv = float(np.float32(1.0) / np.float32(scale))
    qr = bw if unsigned else bw - 1
    hi, lo = 2.0 ** qr - 1, (0.0 if unsigned else -(2.0 ** qr))
    out = []
    for i, v in enumerate(np.asarray(x, np.float64).ravel()):
        y = v * scale + offset
        if rounding == fp.STOCHASTIC:
            uu = u.ravel()[i]
            y = math.floor(y + (1.0 - uu if ties == "even" else uu))
        elif ties == "even":
            y = float(round(y))  # Python's round is half-to-even
        else:
            f = math.floor(y)
            y = f + 1 if (y - f > 0.5 or (y - f == 0.5 and y > 0)) else f
        if clip:
            y = min(max(y, lo), hi)
        out.append((y - offset) * inv)
    return np.array(out, np.float64).astype(np.float32).reshape(np.shape(x))


KINDS = {"signed": (-3.0, 3.5, False, False), "unsigned": (0.0, 3.5, True, False),
         "offset": (-3.0, 3.5, False, True)}  # (min, max, unsigned_data, apply_offset)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("power2", [False, True])
@pytest.mark.parametrize("ties", ["even", "away"])
@pytest.mark.parametrize("bw", [2, 8, 12, 16])
def test_nearest_matches_reference(kind, power2, ties, bw):
    lo, hi, unsigned, offset = KINDS[kind]
    rng = np.random.default_rng(bw * 7 + len(kind) + power2)
    x = (rng.standard_normal(1500) * 3).astype(np.float32)
    if unsigned:
        x = np.abs(x)
    q = fp.estimate(lo, hi, bw, power2=power2, unsigned_data=unsigned, apply_offset=offset)
    if power2:
        assert math.log2(q.scale_target) == round(math.log2(q.scale_target))
    # exact ties: values that land on k + 0.5 after scaling
    x[:50] = ((np.arange(50) - 25 + 0.5) / np.float32(q.scale_target)).astype(np.float32)
    got = fp.quantize(x, q.scale_target, q.offset, bw, q.unsigned_quant, fp.NEAREST, True, ties)
    ref = _reference(x, q.scale_target, q.offset, bw, q.unsigned_quant, fp.NEAREST, True, ties)
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.float32


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("power2", [False, True])
@pytest.mark.parametrize("ties", ["even", "away"])
def test_stochastic_matches_reference(kind, power2, ties):
    lo, hi, unsigned, offset = KINDS[kind]
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((10, 30)) * 2).astype(np.float32)
    u = rng.random(x.shape)
    q = fp.estimate(lo, hi, 8, power2=power2, unsigned_data=unsigned, apply_offset=offset)
    got = fp.quantize(x, q.scale_target, q.offset, 8, q.unsigned_quant, fp.STOCHASTIC, True, ties, uniform=u)
    ref = _reference(x, q.scale_target, q.offset, 8, q.unsigned_quant, fp.STOCHASTIC, True, ties, u=u)
    np.testing.assert_array_equal(got, ref)


def test_stochastic_is_unbiased():
    x = np.full(200000, 0.3, np.float32)
    got = fp.quantize(x, 1.0, 0.0, 8, False, fp.STOCHASTIC)
    assert set(np.unique(got)) == {0.0, 1.0}
    assert abs(got.mean() - 0.3) < 0.01


def test_hand_values_and_in_place():
    x = np.array([-2.5, -0.5, 0.5, 1.5, 2.5, 200.0, -300.0], np.float32)
    np.testing.assert_array_equal(fp.quantize(x, 1.0, ties="even"), [-2, -0, 0, 2, 2, 127, -128])
    np.testing.assert_array_equal(fp.quantize(x, 1.0, ties="away"), [-3, -1, 1, 2, 3, 127, -128])
    np.testing.assert_array_equal(fp.quantize(x, 1.0, unsigned_quant=True), [0, 0, 0, 2, 2, 200, 0])
    np.testing.assert_array_equal(fp.quantize(x, 1.0, clip=False), [-2, -0, 0, 2, 2, 200, -300])
    y = x.copy()
    fp.quantize(y, 2.0, out=y)  # in place, as jacinto
    np.testing.assert_array_equal(y, [-2.5, -0.5, 0.5, 1.5, 2.5, 63.5, -64])


def test_offset_grid():
    # 12-bit asymmetric weights: integer range [0, 4095] maps back onto [min, max]
    w = np.linspace(-0.3, 0.5, 1001).astype(np.float32)
    q = fp.estimate(w.min(), w.max(), 12, unsigned_data=False, apply_offset=True)
    assert q.unsigned_quant and q.scale_target == pytest.approx(4095 / 0.8, rel=1e-6)
    assert q.offset == pytest.approx(0.3 * 4095 / 0.8, rel=1e-6)
    got = fp.quantize(w, q.scale_target, q.offset, 12, True)
    assert np.max(np.abs(got - w)) <= 0.5 / q.scale_target * 1.001
    ints = np.float64(got) * np.float32(q.scale_target) + q.offset
    assert ints.min() > -0.01 and ints.max() < 4095.01


def test_estimate_formulas():
    q = fp.estimate(0.0, 4.0, 8, unsigned_data=True)  # ReLU output: 255/max
    assert q.scale_target == pytest.approx(255 / 4.0) and q.offset == 0 and q.unsigned_quant
    q = fp.estimate(-2.0, 1.0, 8)  # signed: 127/max|x|
    assert q.scale_target == pytest.approx(127 / 2.0) and not q.unsigned_quant
    q = fp.estimate(-1.0, 3.0, 16, apply_offset=True)  # bias: 65535/R, offset -min*scale
    assert q.scale_target == pytest.approx(65535 / 4.0) and q.offset == pytest.approx(65535 / 4.0)
    # power of 2: shiftbits = bits - bw, scale = sa * 2^-shiftbits
    q = fp.estimate(-2.0, 3.0, 8, power2=True)  # A = 3 -> ceil(log2 3) = 2, signed +1 -> 3 bits
    assert q.shiftbits == 3 - 8 and q.scale_target == 2.0 ** 5
    q = fp.estimate(0.0, 3.0, 8, power2=True, unsigned_data=True, scale_applied=4.0)  # A = 12 -> 4 bits
    assert q.shiftbits == 4 - 8 and q.scale_target == 4.0 * 2 ** 4
    q = fp.estimate(-1.0, 3.0, 8, power2=True, apply_offset=True)  # R = 4 -> 2 bits
    assert q.shiftbits == -6 and q.offset == pytest.approx(64.0)
    # non-power2: scale_applied cancels
    assert fp.estimate(0, 2, 8, unsigned_data=True, scale_applied=8.0).scale_target == pytest.approx(127.5)


def test_estimate_016():
    q = fp.estimate_016(-2.0, 3.0, 8, power2_range=True)
    assert q.fracbits == 8 - 3 and q.scale_target == 32.0
    q = fp.estimate_016(0.0, 5.0, 8, unsigned_data=True)
    assert q.scale_target == pytest.approx(51.0)


def test_int_range():
    assert fp.int_range(8, False) == (-128, 127)
    assert fp.int_range(8, True) == (0, 255)
    assert fp.int_range(12, True) == (0, 4095)


@pytest.mark.gpu
def test_gpu_parity():
    """The same xp bodies on CuPy: quantizer and threshold search give NumPy's results bit for bit."""
    from caffelite import backend
    from caffelite.jacinto import threshold as th
    backend.set_mode_gpu()
    try:
        xp = backend.current_xp()
        rng = np.random.default_rng(0)
        x = (rng.standard_normal(100000) * 3).astype(np.float32)
        for ties in ("even", "away"):
            got = backend.to_numpy(fp.quantize(xp.asarray(x), 21.3, 4.0, 8, True, fp.NEAREST, True, ties))
            np.testing.assert_array_equal(got, fp.quantize(x, 21.3, 4.0, 8, True, fp.NEAREST, True, ties))
        w = (rng.standard_normal((64, 288)) * 0.05).astype(np.float32)
        t_gpu = th.channel_thresholds(xp.asarray(w), np.float32(0.6))
        np.testing.assert_array_equal(t_gpu, th.channel_thresholds(w, np.float32(0.6)))
        wg = th.apply_thresholds(xp.asarray(w), t_gpu)
        np.testing.assert_array_equal(backend.to_numpy(wg), th.apply_thresholds(w.copy(), t_gpu))
    finally:
        backend.set_mode_cpu()
