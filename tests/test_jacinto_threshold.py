"""The vectorised threshold search (§a.3) against a direct transcription of jacinto's grid search."""

import numpy as np
import pytest

from caffelite.jacinto import threshold as th


def _weights(rng, c, k, zeros=0.0, scale=0.05):
    w = (rng.standard_normal((c, k)) * scale).astype(np.float32)
    if zeros:
        w[rng.random(w.shape) < zeros] = 0
    return w


@pytest.mark.parametrize("seed,c,k,fraction,zeros", [
    (0, 6, 27, 0.3, 0.0),      # first-layer-like: small K, low fraction
    (1, 5, 288, 0.6, 0.0),     # mid layer, cap 0.2*max binds at 0.6
    (2, 4, 576, 0.1, 0.0),     # small fraction: the grid, not the cap, decides
    (3, 4, 144, 0.61, 0.55),   # already-zero weights count toward the fraction
    (4, 3, 100, 0.05, 0.2),    # more exact zeros than allowed: threshold 0
])
def test_exact_matches_reference_grid_search(seed, c, k, fraction, zeros):
    rng = np.random.default_rng(seed)
    w = _weights(rng, c, k, zeros)
    if seed == 2:
        w *= rng.uniform(0.1, 10, (c, 1)).astype(np.float32)  # different channel magnitudes
    fr = np.float32(fraction)
    got = th.channel_thresholds(w, fr)
    ref = np.array([th.reference_grid_search(w[i], fr) for i in range(c)], np.float32)
    np.testing.assert_array_equal(got, ref)
    # and the zeroing that follows
    w2 = th.apply_thresholds(w.copy(), got)
    for i in range(c):
        assert np.count_nonzero(w2[i] == 0) == np.count_nonzero(np.abs(w[i]) <= ref[i])


def test_caps_and_fraction_hand_case():
    # one channel 0.01..1.00: cap = min(0.2, 0.2*1.0, 1.0) = 0.2 -> at most 0.2 (20 weights) pruned
    w = (np.arange(1, 101, dtype=np.float32) / 100).reshape(1, 100)
    t = th.channel_thresholds(w, 0.9)[0]
    assert 0.19 < t < 0.2
    assert np.count_nonzero(th.apply_thresholds(w.copy(), [t]) == 0) == 19
    # fraction binds: 0.1 -> <= 10 zeros; the largest grid point below the 11th value 0.11
    t = th.channel_thresholds(w, 0.1)[0]
    assert 0.10 <= t < 0.11
    assert np.count_nonzero(th.apply_thresholds(w.copy(), [t]) == 0) == 10
    # absolute cap value_max = 0.2 for big weights: w in 1..100 -> cap 0.2 -> nothing pruned
    assert th.channel_thresholds(w * 100, 0.5)[0] < 0.2


def test_direct_mode_prunes_up_to_fraction():
    rng = np.random.default_rng(5)
    w = _weights(rng, 8, 300)
    t = th.channel_thresholds(w, np.float32(0.6), mode="direct")
    z = np.count_nonzero(th.apply_thresholds(w.copy(), t) == 0, axis=1) / 300
    cap = np.minimum(0.2 * np.abs(w).max(1), 0.2)
    capped = np.count_nonzero(np.abs(w) < cap[:, None], axis=1) / 300
    np.testing.assert_allclose(z, np.minimum(capped, 0.6), atol=1 / 300 + 1e-9)
    te = th.channel_thresholds(w, np.float32(0.6))
    assert np.all(te <= t)  # the grid never goes beyond the ideal threshold


def test_max_allowed_count():
    assert th.max_allowed_count(100, np.float32(0.6)) == 60
    assert th.max_allowed_count(27, np.float32(0.3)) == 8
    assert th.max_allowed_count(10, 1.0) == 10
    assert th.max_allowed_count(10, 0.0) == 0


def test_eligibility_and_fraction():
    assert th.is_eligible(3, 32, 1, 5, 5)          # first layer is eligible
    assert th.is_eligible(64, 8, 1, 3, 3)          # last conv, ni >= 32
    assert not th.is_eligible(64, 64, 1, 1, 1)     # 1x1
    assert th.is_eligible(64, 64, 1, 1, 1, version="0.16")
    assert not th.is_eligible(64, 64, 64, 3, 3)    # depthwise
    assert not th.is_eligible(16, 16, 1, 3, 3)     # both < 32
    assert th.is_eligible(64, 64, 4, 3, 3)         # grouped
    f = np.float32(0.6)
    assert th.channel_fraction(3, 32, f) == np.float32(0.3)
    assert th.channel_fraction(64, 64, f) == f and th.channel_fraction(256, 512, f) == f
    assert th.conv_geometry((32, 8, 3, 3), 4, None) == (32, 32)


def test_exact_matches_reference_many_random():
    rng = np.random.default_rng(11)
    for _ in range(30):
        c, k = int(rng.integers(1, 5)), int(rng.integers(9, 400))
        w = _weights(rng, c, k, zeros=float(rng.uniform(0, 0.5)), scale=float(rng.uniform(0.001, 3)))
        fr = np.float32(rng.uniform(0, 0.95))
        got = th.channel_thresholds(w, fr)
        ref = np.array([th.reference_grid_search(w[i], fr) for i in range(c)], np.float32)
        np.testing.assert_array_equal(got, ref)
