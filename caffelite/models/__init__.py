"""The model templates shipped inside the package (``caffelite/models/prototxt/<net>/*.prototxt``).

They are package data, read through :mod:`importlib.resources`, so a regular (non-editable) install finds
them as well as a checkout does::

    from caffelite.models import prototxt_path
    prototxt_path("cityscapes5_jsegnet21v2", "deploy.prototxt")   # a filesystem path (str)
"""

from __future__ import annotations

import os
from importlib import resources

__all__ = ["prototxt_dir", "prototxt_path", "model_names"]


def prototxt_dir() -> str:
    """The folder holding the shipped nets (one subfolder per net)."""
    root = resources.files(__name__).joinpath("prototxt")
    path = os.fspath(root)  # installed as plain files (a wheel or a checkout), never zipped
    if not os.path.isdir(path):
        raise FileNotFoundError(2, "the model templates are not installed with caffelite (reinstall it)", path)
    return path


def prototxt_path(*parts: str) -> str:
    """The path of a shipped file, e.g. ``prototxt_path("lenet", "deploy.prototxt")``."""
    return os.path.join(prototxt_dir(), *parts)


def model_names() -> list[str]:
    """The shipped nets (subfolder names), sorted."""
    d = prototxt_dir()
    return sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))
