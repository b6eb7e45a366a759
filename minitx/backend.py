"""Backends: which array module holds a tensor's data.

minitx keeps every tensor's data in a NumPy array ("cpu") or a CuPy array ("cuda").
Ops never ask which one: they call `get_array_module(*arrays)` and use the module they
get back (`xp.exp`, `xp.matmul`, ...), so one code path serves both devices.

CuPy is optional. Importing minitx never fails for lack of it; asking for "cuda" re-raises
the stored reason with advice on what to install.
"""
import ctypes
import os
import sys
from contextlib import contextmanager

import numpy

try:  # optional: the GPU backend
    import cupy
    _cupy_error = None
except Exception as error:  # ImportError, or a CUDA library failing to load
    cupy = None
    _cupy_error = error

DEVICES = ("cpu", "cuda")
DTYPES = {"float32": numpy.float32, "float64": numpy.float64}

_default_device = None  # resolved lazily from MINITX_DEVICE, see default_device()


def cuda_available():
    """True when CuPy imports and sees at least one GPU."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def check_device(device):
    """Validate a device string; raise a clear error for unknown names or a missing GPU."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")
    if device == "cuda" and not cuda_available():
        if cupy is None:
            raise RuntimeError(
                "device 'cuda' needs CuPy, which failed to import "
                f"({type(_cupy_error).__name__}: {_cupy_error}). "
                "Install it with `pip install -e \".[gpu]\"` on a machine with an NVIDIA GPU, "
                "or use device 'cpu'.")
        raise RuntimeError("device 'cuda' was asked for, but CuPy sees no GPU on this machine; "
                           "use device 'cpu'.")
    return device


def array_module(device):
    """The array module (numpy or cupy) that holds data on `device`."""
    return cupy if check_device(device) == "cuda" else numpy


def get_array_module(*arrays):
    """numpy, or cupy if any of `arrays` is a CuPy array."""
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return numpy


def device_of(array):
    return "cuda" if get_array_module(array) is not numpy else "cpu"


def move_array(array, device):
    """Copy `array` to `device` (no copy when it is already there); ops.transfer does it for tensors."""
    check_device(device)
    if device_of(array) == device:
        return array
    return cupy.asarray(array) if device == "cuda" else cupy.asnumpy(array)


def to_dtype(dtype):
    """Normalise "float32" / numpy.float64 / ... to a numpy dtype; only float32 and float64."""
    try:
        dtype = numpy.dtype(dtype)
    except TypeError:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {list(DTYPES)}") from None
    if dtype.name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype.name!r}: expected one of {list(DTYPES)}")
    return dtype


def set_default_device(device):
    """Device for tensors created without an explicit `device=`."""
    global _default_device
    _default_device = check_device(device)


@contextmanager
def default_device_as(device):
    """Within the block, tensors created without `device=` (a model's weights) go to `device`."""
    global _default_device
    previous, _default_device = _default_device, check_device(device)
    try:
        yield
    finally:
        _default_device = previous


def default_device():
    global _default_device
    if _default_device is None:
        _default_device = check_device(os.environ.get("MINITX_DEVICE", "cpu"))
    return _default_device


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of handing it back to the OS.

    Every op allocates fresh arrays. By default glibc returns large freed blocks to the OS
    (munmap, heap trimming), so the next array of that size page-faults its way in again: about
    10 % of a CPU training step here. Keeping freed memory (blocks up to 32 MB stay in the heap)
    avoids that, at the price of a process that does not shrink, and for every other library in
    the process too: so it is the caller's choice (the command line and the benchmarks make it;
    see benchmarks/RESULTS.md). Linux with glibc only; elsewhere nothing happens.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below 32 MB come from the heap
        libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD: keep up to 1 GB of free heap
    except (OSError, AttributeError):
        pass
