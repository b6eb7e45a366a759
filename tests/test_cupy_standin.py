"""The CuPy stand-in itself: it must catch what a real GPU would, or the GPU tests that run on it
prove nothing. Run with MINITX_FAKE_CUPY=1 (see README, Testing)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minitx as mx
from minitx import backend
from minitx.ops import elementwise

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not getattr(backend.cupy, "STANDIN", False),
                                 reason="checks the CuPy stand-in (MINITX_FAKE_CUPY=1)")]


def test_planted_numpy_call_on_a_device_array_is_caught(monkeypatch):
    """Plant the bug the stand-in exists for: an op that calls NumPy instead of its array
    module. On the CPU it goes unnoticed; on a CUDA tensor the stand-in refuses, as CuPy does."""
    def forward(ctx, a):
        ctx.out = np.exp(a)                        # the planted bug: should be xp.exp
        return ctx.out
    monkeypatch.setattr(elementwise.Exp, "forward", staticmethod(forward))
    mx.tensor([1.0, 2.0]).exp()                    # fine on the host
    with pytest.raises(TypeError, match="numpy.exp on a device array"):
        mx.tensor([1.0, 2.0], device="cuda").exp()


def test_device_arrays_refuse_implicit_conversion():
    import cupy
    x = cupy.arange(3.0)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Unsupported type"):
        x + np.ones(3)
    with pytest.raises(TypeError):
        np.sum(x)
    with pytest.raises(TypeError, match="Unsupported type"):
        cupy.where(np.ones(3, bool), x, x)


def test_device_to_host_transfers_are_counted():
    import cupy
    x = cupy.arange(4.0)
    before = cupy.transfers
    total = x.sum()                                # stays on the device: a 0-d array
    assert isinstance(total, cupy.ndarray) and cupy.transfers == before
    float(total), x.get(), cupy.asnumpy(x), bool(total > 1), x[1].item()
    assert cupy.transfers == before + 5


def test_host_arrays_meeting_cuda_tensors_get_minitx_errors_or_move():
    """A NumPy boolean mask or integer targets are moved to the GPU; NumPy floats in arithmetic
    get minitx's message, never CuPy's bare "Unsupported type"."""
    x = mx.tensor([[1.0, 2.0], [3.0, 4.0]], device="cuda")
    mask = np.array([[True, False], [False, True]])
    assert mx.where(mask, x, 0.0).device == "cuda"
    assert x.masked_fill(mask, -1.0).tolist() == [[-1.0, 2.0], [3.0, -1.0]]
    assert mx.cross_entropy(x, np.array([0, 1])).device == "cuda"
    with pytest.raises(RuntimeError, match="make it a tensor on that device"):
        x + np.ones(2)
    with pytest.raises(RuntimeError, match="different devices"):
        mx.where(mx.tensor(mask), x, 0.0)


def test_names_exist_in_the_real_cupy():
    """Every public name of the stand-in (module functions, ndarray methods, ufunc `.at`,
    random, cuda, cupyx) exists in the real CuPy, so nothing passes here that fails there."""
    import cupy
    names = sorted(n for n in vars(cupy) if not n.startswith("_")
                   and n not in ("STANDIN", "transfers", "functools", "numpy"))
    methods = sorted(cupy._METHODS | {"get", "item", "tolist", "shape", "dtype", "ndim", "size",
                                      "flags", "T", "strides", "nbytes", "itemsize"})
    check = (
        "import json, sys, cupy, cupyx.scipy.special\n"
        "names, methods = json.loads(sys.argv[1])\n"
        "missing = [n for n in names if not hasattr(cupy, n)]\n"
        "missing += ['ndarray.' + m for m in methods if not hasattr(cupy.ndarray, m)]\n"
        "missing += [n + '.at' for n in ('add', 'subtract') if not hasattr(getattr(cupy, n), 'at')]\n"
        "for path in ('random.default_rng', 'cuda.runtime.getDeviceCount', 'cuda.Device',\n"
        "             'cuda.runtime.getDeviceProperties', 'RawModule', 'RawKernel', 'asnumpy'):\n"
        "    obj = cupy\n"
        "    for part in path.split('.'):\n"
        "        obj = getattr(obj, part, None)\n"
        "    missing += [path] if obj is None else []\n"
        "missing += [] if hasattr(cupyx.scipy.special, 'erf') else ['cupyx.scipy.special.erf']\n"
        "print(json.dumps(missing))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", check, json.dumps([names, methods])],
                            capture_output=True, text=True, env=env, cwd="/")
    if result.returncode and "No module named 'cupy" in result.stderr:
        pytest.skip("the real CuPy is not installed (pip install -e '.[gpu]' to compare names)")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], "names the real CuPy lacks"
