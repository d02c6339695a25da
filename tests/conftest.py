"""Shared pytest configuration: --runslow, the gpu marker, and paths to the copied fixtures."""

import os

import pytest

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FIXTURES = os.path.join(DATA, "fixtures")
REFERENCE = os.path.join(DATA, "reference")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests (fuzzing, long flows)")


def pytest_collection_modifyitems(config, items):
    from caffelite import backend

    skip_slow = pytest.mark.skip(reason="slow: use --runslow")
    skip_gpu = pytest.mark.skip(reason="no CuPy/GPU on this machine")
    has_gpu = backend.cupy_available()
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
