"""Shared test set-up: the devices to run on, the CuPy stand-in, and what happens to GPU tests
on a machine without a GPU.

MINITX_FAKE_CUPY=1 puts the strict CuPy stand-in (tests/cupy_standin) first on sys.path before
minitx is imported, so `cupy` is the stand-in and every `gpu` test runs on the CPU.
MINITX_REQUIRE_GPU=1 turns the "needs CuPy and a GPU" skip into a failure, so a GPU run cannot
pass by testing nothing.
"""
import os
import sys

import pytest

STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cupy_standin")
if os.environ.get("MINITX_FAKE_CUPY") == "1":
    sys.path.insert(0, STANDIN)

import minitx  # noqa: E402  (after the stand-in is on the path)
from minitx import backend  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
minitx.use_fast_cpu_settings()   # as the command line does (importing minitx changes nothing)
GPU_REASON = ("needs CuPy and a GPU" if backend.cupy is not None else
              f"needs CuPy and a GPU (CuPy failed to import: {backend._cupy_error})")
REQUIRE_GPU = os.environ.get("MINITX_REQUIRE_GPU") == "1"


def pytest_collection_modifyitems(config, items):
    if minitx.cuda_available() or REQUIRE_GPU:
        return
    skip = pytest.mark.skip(reason=GPU_REASON)
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


def pytest_runtest_setup(item):
    if REQUIRE_GPU and item.get_closest_marker("gpu") and not minitx.cuda_available():
        pytest.fail(f"MINITX_REQUIRE_GPU=1, but this test {GPU_REASON}", pytrace=False)


@pytest.fixture(autouse=True)
def _seed():
    minitx.manual_seed(0)
