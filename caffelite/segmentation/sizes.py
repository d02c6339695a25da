"""Image sizes given as text (``WIDTHxHEIGHT``), shared by the command line and the pipeline."""

from __future__ import annotations

from ..errors import CaffeliteError


def parse_size(text):
    """``WxH`` → (W, H); None for empty/0."""
    if not text or text in ("0", "0x0"):
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CaffeliteError(f"size {text!r} must look like WIDTHxHEIGHT, e.g. 1024x512") from None
    if w <= 0 or h <= 0:
        raise CaffeliteError(f"size {text!r} must be positive")
    return (w, h)
