"""A strict stand-in for CuPy, for proving minitx's GPU path on a machine without a GPU.

Imported as `cupy` only when a test run asks for it (MINITX_FAKE_CUPY=1, see tests/conftest.py).
Its arrays keep their data in a NumPy array but behave like device arrays where it matters:

- no implicit conversion: `numpy.asarray(a)`, a NumPy function or ufunc applied to `a`, and
  NumPy arrays mixed into device arithmetic raise TypeError, as CuPy's do (CuPy lets a NumPy
  ufunc through `__array_ufunc__`; the stand-in refuses it too, since such a call in minitx
  means a code path that forgot its array module);
- every device-to-host transfer (`.get()`, `asnumpy`, `.item()`, `float()`, `int()`, `bool()`,
  `.tolist()`) is counted in `transfers`, so a test can hold a training step to a sync budget;
- `RawModule` / `RawKernel` compile the CUDA C++ source for the CPU and run each launch with the
  thread blocks emulated (see `_emulation`), so the kernels' own code runs.

Only the part of CuPy's API that minitx uses is here; `tests/test_cupy_standin.py` checks that
every public name also exists in the real CuPy.
"""
import functools

import numpy

from . import _emulation, cuda, random  # noqa: F401  (cupy.cuda, cupy.random)

STANDIN = True           # how a test tells the stand-in from the real CuPy
__version__ = "14.0.0-standin"
transfers = 0            # device-to-host transfers so far


def _device_to_host():
    global transfers
    transfers += 1


def _refuse(value):
    raise TypeError(f"Unsupported type {type(value)}")


def _unwrap(value):
    """The NumPy data behind a device array; a NumPy array here is a host/device mix-up."""
    if isinstance(value, ndarray):
        return value._data
    if isinstance(value, numpy.ndarray):
        _refuse(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    return value


def _wrap(value):
    """Device arrays for NumPy results (0-d included: CuPy reductions return 0-d arrays)."""
    if isinstance(value, (numpy.ndarray, numpy.generic)):
        return ndarray(numpy.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _device_function(function):
    """`function` on NumPy data: device arrays in, device arrays out, host arrays refused."""
    @functools.wraps(function)
    def call(*args, **kwargs):
        return _wrap(function(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
    return call


class ndarray:
    """A device array: NumPy data that will not leave the device without being counted."""
    __array_priority__ = 1000

    def __init__(self, data):
        self._data = data

    # -- refusing implicit conversion, as CuPy does --------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise TypeError(f"the stand-in refuses numpy.{ufunc.__name__} on a device array: "
                        "use the array module of the data (cupy)")

    def __array_function__(self, function, types, args, kwargs):
        raise TypeError(f"the stand-in refuses numpy.{function.__name__} on a device array: "
                        "use the array module of the data (cupy)")

    # -- device to host: counted ---------------------------------------------------------------
    def get(self):
        _device_to_host()
        return self._data.copy()

    def item(self):
        _device_to_host()
        return self._data.item()

    def tolist(self):
        _device_to_host()
        return self._data.tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())

    def __repr__(self):
        return f"array({self._data.tolist()!r}, dtype={self.dtype}) (stand-in device array)"

    # -- attributes and methods that stay on the device ----------------------------------------
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    itemsize = property(lambda self: self._data.itemsize)
    nbytes = property(lambda self: self._data.nbytes)
    strides = property(lambda self: self._data.strides)
    flags = property(lambda self: self._data.flags)
    T = property(lambda self: ndarray(self._data.T))

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        return (_wrap(row) for row in self._data)

    def __getitem__(self, index):
        return _wrap(self._data[_index(index)])

    def __setitem__(self, index, value):
        self._data[_index(index)] = value._data if isinstance(value, ndarray) else value

    def __getattr__(self, name):
        if name not in _METHODS:
            raise AttributeError(f"'cupy.ndarray' stand-in has no attribute {name!r}")
        method = getattr(self._data, name)
        # CuPy's methods take host sequences for axes and shapes, so only device arrays unwrap
        return lambda *args, **kwargs: _wrap(method(*_index(args), **kwargs))


def _index(index):
    """An index for the NumPy data; CuPy takes host index arrays and copies them over."""
    if isinstance(index, tuple):
        return tuple(_index(i) for i in index)
    return index._data if isinstance(index, ndarray) else index


_METHODS = {"astype", "copy", "reshape", "transpose", "swapaxes", "ravel", "squeeze", "sum",
            "mean", "var", "max", "min", "argmax", "any", "all", "cumsum", "fill", "view", "prod"}


def _operator(name):
    method = getattr(numpy.ndarray, name)

    def apply(self, other):
        result = method(self._data, _unwrap(other))
        if result is NotImplemented:
            return result
        if name.startswith("__i"):                        # in place: the same device array
            return self
        return _wrap(result)
    return apply


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "rshift", "lt", "le", "gt", "ge", "eq", "ne"):
    for _form in ("__{}__", "__r{}__", "__i{}__"):
        _op = _form.format(_name)
        if hasattr(numpy.ndarray, _op):
            setattr(ndarray, _op, _operator(_op))
for _op in ("__neg__", "__pos__", "__abs__", "__invert__"):
    setattr(ndarray, _op, (lambda method: lambda self: _wrap(method(self._data)))(
        getattr(numpy.ndarray, _op)))
ndarray.__hash__ = None


class _ufunc:
    """A CuPy ufunc: call, `out=`, and `.at` on device arrays."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, out=None, **kwargs):
        result = self._ufunc(*_unwrap(args), out=None if out is None else _unwrap(out),
                             **kwargs)
        return out if out is not None else _wrap(result)

    def at(self, a, indices, b=None):
        args = (_unwrap(indices),) if b is None else (_unwrap(indices), _unwrap(b))
        self._ufunc.at(_unwrap(a), *args)


_UFUNCS = ("add", "subtract", "multiply", "divide", "true_divide", "power", "maximum", "minimum",
          "exp", "log", "log1p", "expm1", "sqrt", "tanh", "sign", "abs", "negative", "isfinite",
          "isnan", "logical_and", "logical_or", "logical_not", "equal", "not_equal", "less", "less_equal",
          "greater", "greater_equal",
          "sin", "cos")
_FUNCTIONS = ("where", "matmul", "zeros_like", "ones_like", "empty_like", "broadcast_to",
             "moveaxis", "expand_dims", "take", "concatenate", "stack", "split", "copyto",
             "einsum", "tensordot", "sum", "max", "min", "clip", "outer", "tril", "triu",
             "argmax", "all", "any", "array_equal", "allclose", "cumsum", "reshape", "transpose",
             "squeeze", "cumprod", "vdot")
_CREATORS = ("zeros", "ones", "empty", "full", "arange", "eye", "linspace")
for _name in _UFUNCS:
    globals()[_name] = _ufunc(getattr(numpy, _name))
for _name in _FUNCTIONS + _CREATORS:
    globals()[_name] = _device_function(getattr(numpy, _name))
for _name in ("float16", "float32", "float64", "int8", "int32", "int64", "uint8", "uint32",
              "bool_", "dtype", "result_type", "newaxis", "pi", "inf", "nan"):
    globals()[_name] = getattr(numpy, _name)


# -- host to device ----------------------------------------------------------------------------
def array(obj, dtype=None, copy=True):
    data = obj._data if isinstance(obj, ndarray) else obj
    return ndarray(numpy.array(data, dtype=dtype, copy=copy))


def asarray(obj, dtype=None):
    if isinstance(obj, ndarray) and (dtype is None or obj.dtype == dtype):
        return obj
    return ndarray(numpy.asarray(obj._data if isinstance(obj, ndarray) else obj, dtype=dtype))


def ascontiguousarray(obj, dtype=None):
    if not isinstance(obj, ndarray):
        _refuse(obj)                     # CuPy takes only its own arrays here
    return ndarray(numpy.ascontiguousarray(obj._data, dtype=dtype))


def asnumpy(obj):
    """Device to host (counted); host data passes through as in CuPy."""
    return obj.get() if isinstance(obj, ndarray) else numpy.asarray(obj)


def get_array_module(*arrays):
    import sys
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in arrays) else numpy


# -- kernels -----------------------------------------------------------------------------------
class RawKernel:
    """One compiled kernel; kernel(grid, block, args) runs it with the blocks emulated."""

    def __init__(self, launch, name):
        self._launch, self.name = launch, name

    def __call__(self, grid, block, args, shared_mem=0):
        _emulation.check_launch(grid, block, shared_mem)
        self._launch(grid, block, [_kernel_argument(a) for a in args])


def _kernel_argument(value):
    """A device array's NumPy data, or a NumPy scalar; anything else CuPy would reject or pass
    with a width the kernel may not expect."""
    if isinstance(value, ndarray):
        return value._data
    if isinstance(value, numpy.generic):
        return value
    if isinstance(value, numpy.ndarray):
        _refuse(value)
    raise TypeError(f"kernel argument {value!r}: pass device arrays or NumPy scalars of the "
                    "kernel's parameter types")


class RawModule:
    """CUDA C++ source compiled once; `get_function(name)` for each of `name_expressions`."""

    def __init__(self, code, options=(), name_expressions=()):
        self._functions = _emulation.build(code, tuple(name_expressions))

    def get_function(self, name):
        return RawKernel(self._functions[name], name)

