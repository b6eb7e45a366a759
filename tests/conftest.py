"""Shared test set-up: the devices to run on, and skipping GPU tests where there is no GPU."""
import pytest

import minitx

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
minitx.use_fast_cpu_settings()   # as the command line does (importing minitx changes nothing)


def pytest_collection_modifyitems(config, items):
    if minitx.cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    minitx.manual_seed(0)
