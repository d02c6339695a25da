"""Comparisons shared by the tests: float closeness scaled to the expected values' magnitude, and bitwise equality.

Float results computed in another order (another kernel, another device, another summation) differ by rounding
that grows with the size of the values, so most comparisons take an absolute tolerance relative to the largest
expected magnitude, ``rel_atol · max(max|want|, floor)``, on top of an optional relative one ``rtol · |want|``.
"""

from __future__ import annotations

import numpy as np


def host(a):
    """``a`` as a host NumPy array (GPU arrays are copied back)."""
    from caffelite.backend import to_numpy
    return to_numpy(a)


def max_abs(a) -> float:
    """The largest magnitude in ``a`` (0 for an empty array)."""
    return float(np.max(np.abs(a), initial=0.0))


def scaled_atol(want, rel_atol, floor=1e-30, magnitude=None) -> float:
    """``rel_atol · max(magnitude, floor)``; ``magnitude`` defaults to ``max|want|``."""
    return rel_atol * max(max_abs(want) if magnitude is None else magnitude, floor)


def close(got, want, rtol, rel_atol, floor=1e-30):
    """Elementwise ``|got − want| <= rel_atol·max(max|want|, floor) + rtol·|want|`` (a boolean array), evaluated in
    the arrays' own precision. NaN is never close."""
    got = host(got)
    return np.abs(got - want) <= scaled_atol(want, rel_atol, floor) + rtol * np.abs(want)


def all_close(got, want, rtol, rel_atol, floor=1e-30) -> bool:
    """Whether every element is :func:`close`."""
    return bool(close(got, want, rtol, rel_atol, floor).all())


def assert_close(got, want, *, rtol, rel_atol, floor, err_msg="", reshape=False):
    """``numpy.testing.assert_allclose`` with ``atol = rel_atol·max(max|want|, floor)`` (NaN equals NaN there).
    ``reshape``: compare ``got`` laid out in ``want``'s shape (same size, other layout)."""
    got, want = host(got), np.asarray(want)
    if reshape:
        got = got.reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=scaled_atol(want, rel_atol, floor), err_msg=err_msg)


def assert_max_error(got, want, rel, magnitude=None):
    """Same shape, and ``max|got − want| <= rel·max(magnitude, 1e-30)`` evaluated in float64; ``magnitude``
    defaults to ``max|want|`` (pass that of the terms where the result cancels). NaN never passes."""
    got, want = np.asarray(host(got), np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    scale = max(max_abs(want) if magnitude is None else magnitude, 1e-30)
    err = float(np.max(np.abs(got - want), initial=0.0))
    assert err <= rel * scale, f"max error {err:.3g} > {rel:g} x {scale:.3g}"


def bits_equal(a, b) -> bool:
    """Same shape, same dtype and the same bytes (so NaN payloads and the sign of zero count)."""
    a, b = np.asarray(host(a)), np.asarray(host(b))
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return np.array_equal(np.ascontiguousarray(a).reshape(-1).view(np.uint8),
                          np.ascontiguousarray(b).reshape(-1).view(np.uint8))


def load_npz(path) -> dict:
    """The arrays of an ``.npz`` file as a dict, the file closed again (``np.load`` alone keeps it open until
    garbage collection, which pytest reports as an unclosed file)."""
    with np.load(path) as z:
        return dict(z)
