"""The Tensor: an array (NumPy or CuPy), whether it needs a gradient, and the node that made it.

A tensor made by the user is a *leaf*: `_node` is None and `backward()` accumulates into its
`.grad`. A tensor made by an op carries the op's `Node` (see autograd.py), which links it to the
op's inputs; following those links backwards is what `backward()` does.

`_version` counts the changes made to a tensor in place: every assignment to `.data`, which is
also how `p.data -= update` (the optimizers) and `module.load_state_dict` write. An op records
its inputs' versions, and backward refuses to run it once one has changed: its gradient would
silently mix the old values with the new. (Writing into the array itself, `t.data[0] = 1`,
bypasses the count.)
"""
import numpy

from . import backend
from .random import normal_array, uniform_array

_INDEX_DTYPES = ("int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool")


class Tensor:
    __slots__ = ("_data", "_version", "requires_grad", "grad", "_node", "__weakref__")

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        """Make a leaf tensor from a Python number, list, NumPy or CuPy array, or another Tensor.

        Floating data is stored as float32 unless `dtype` says otherwise ("float64");
        integer and boolean data keep an integer/bool dtype (token ids, masks).
        """
        if isinstance(data, Tensor):
            data = data.data
        device = backend.check_device(device) if device is not None else (
            backend.device_of(data) if hasattr(data, "shape") else backend.default_device())
        if hasattr(data, "shape"):  # an array, perhaps on the other device
            data = backend.move_array(data, device)
        data = backend.array_module(device).asarray(data)
        if dtype is not None:
            data = data.astype(_to_any_dtype(dtype), copy=False)
        elif data.dtype.kind in "fc" or data.dtype == object:
            data = data.astype(numpy.float32, copy=False)
        elif data.dtype.name not in _INDEX_DTYPES:
            raise ValueError(f"cannot make a tensor of dtype {data.dtype}")
        if requires_grad and data.dtype.kind != "f":
            raise ValueError(f"only floating tensors can require gradients, not {data.dtype}")
        self._data, self._version = data, 0
        self.requires_grad, self.grad, self._node = bool(requires_grad), None, None

    @classmethod
    def _make(cls, data, requires_grad, node):
        """Fast internal constructor for op outputs: no conversion, no checks."""
        t = object.__new__(cls)
        if type(data) is not numpy.ndarray and isinstance(data, numpy.generic):
            data = numpy.asarray(data)  # NumPy reductions return scalars; keep arrays throughout
        t._data, t._version, t.requires_grad, t.grad, t._node = data, 0, requires_grad, None, node
        return t

    @property
    def data(self):
        """The array (numpy.ndarray or cupy.ndarray) holding the values."""
        return self._data

    @data.setter
    def data(self, array):
        self._data = array
        self._version += 1  # the graph of any op that took this tensor is out of date

    # --- what a tensor is ---------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    dtype = property(lambda self: self.data.dtype)
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self._node is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        body = numpy.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype.name}, device={self.device!r}{extra})"

    def numpy(self):
        """The data as a NumPy array (copied from the GPU when needed)."""
        return backend.move_array(self.data, "cpu")

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, not shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor._make(self.data, False, None)

    def to(self, device=None, dtype=None):
        """A copy on `device` and/or with `dtype` (self when nothing changes); stays in the graph."""
        out = self
        if dtype is not None and self.dtype != _to_any_dtype(dtype):
            out = ops.astype(out, dtype=_to_any_dtype(dtype))
        if device is not None and backend.check_device(device) != self.device:
            out = ops.transfer(out, device=device)
        return out

    def requires_grad_(self, flag=True):
        if flag and self.dtype.kind != "f":
            raise ValueError(f"only floating tensors can require gradients, not {self.dtype}")
        self.requires_grad = flag
        return self

    def backward(self, grad=None, retain_graph=False):
        """Back-propagate from this tensor: accumulate d(self)/d(leaf) into each leaf's `.grad`.

        A scalar needs no `grad`; any other shape needs `grad` of the same shape (the vector in
        the vector-Jacobian product).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input of the computation had requires_grad=True)")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar, but this tensor "
                                   f"has shape {self.shape}; pass grad= of that shape")
            grad = backend.get_array_module(self.data).ones_like(self.data)
        else:
            grad = as_array(grad, self.device).astype(self.dtype, copy=False)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape}, the tensor {self.shape}")
        autograd.backward(self, grad, retain_graph)

    # --- operators ------------------------------------------------------------------------------
    def __add__(self, other): return ops.add(self, _operand(other))
    def __radd__(self, other): return ops.add(_operand(other), self)
    def __sub__(self, other): return ops.sub(self, _operand(other))
    def __rsub__(self, other): return ops.sub(_operand(other), self)
    def __mul__(self, other): return ops.mul(self, _operand(other))
    def __rmul__(self, other): return ops.mul(_operand(other), self)
    def __truediv__(self, other): return ops.div(self, _operand(other))
    def __rtruediv__(self, other): return ops.div(_operand(other), self)
    def __pow__(self, other): return ops.pow(self, _operand(other))
    def __rpow__(self, other): return ops.pow(_operand(other), self)
    def __matmul__(self, other): return ops.matmul(self, other)
    def __rmatmul__(self, other): return ops.matmul(other, self)
    def __neg__(self): return ops.neg(self)
    def __getitem__(self, index): return ops.getitem(self, index)

    # comparisons give boolean tensors outside the graph
    def __lt__(self, other): return _compare(numpy.less, self, other)
    def __le__(self, other): return _compare(numpy.less_equal, self, other)
    def __gt__(self, other): return _compare(numpy.greater, self, other)
    def __ge__(self, other): return _compare(numpy.greater_equal, self, other)
    def __eq__(self, other): return _compare(numpy.equal, self, other)
    def __ne__(self, other): return _compare(numpy.not_equal, self, other)
    __hash__ = object.__hash__

    # --- NumPy and Python protocols -------------------------------------------------------------
    # NumPy's operators step aside, so numpy.ones(3) * t and numpy.float64(2) * t call t.__rmul__
    # and give a Tensor in the graph, not an object array
    __array_ufunc__ = None

    def __array__(self, dtype=None, copy=None):
        """numpy.asarray(t): the data of a CPU tensor (a GPU tensor needs an explicit .numpy())."""
        if self.device != "cpu":
            raise TypeError(f"cannot convert a tensor on {self.device!r} to a NumPy array "
                            "implicitly; call .numpy() to copy it to the host")
        return self.data if dtype is None else self.data.astype(dtype)

    def __iter__(self):
        """Rows along the first axis (list(t), for row in t), each a tensor in the graph."""
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self)))

    # --- methods that forward to ops (see ops/ for what each does and its arguments) -------------
    def exp(self): return ops.exp(self)
    def log(self): return ops.log(self)
    def sqrt(self): return ops.sqrt(self)
    def rsqrt(self): return ops.rsqrt(self)
    def abs(self): return ops.abs(self)
    def sign(self): return ops.sign(self)
    def sin(self): return ops.sin(self)
    def cos(self): return ops.cos(self)
    def erf(self): return ops.erf(self)
    def tanh(self): return ops.tanh(self)
    def sigmoid(self): return ops.sigmoid(self)
    def relu(self): return ops.relu(self)
    def gelu(self, approximate="none"): return ops.gelu(self, approximate)
    def maximum(self, other): return ops.maximum(self, other)
    def minimum(self, other): return ops.minimum(self, other)
    def clip(self, min=None, max=None): return ops.clip(self, min, max)
    def sum(self, *args, **kwargs): return ops.sum(self, *args, **kwargs)
    def prod(self, *args, **kwargs): return ops.prod(self, *args, **kwargs)
    def mean(self, *args, **kwargs): return ops.mean(self, *args, **kwargs)
    def var(self, *args, **kwargs): return ops.var(self, *args, **kwargs)
    def std(self, *args, **kwargs): return ops.std(self, *args, **kwargs)
    def max(self, *args, **kwargs): return ops.max(self, *args, **kwargs)
    def min(self, *args, **kwargs): return ops.min(self, *args, **kwargs)
    def argmax(self, *args, **kwargs): return ops.argmax(self, *args, **kwargs)
    def argmin(self, *args, **kwargs): return ops.argmin(self, *args, **kwargs)
    def logsumexp(self, *args, **kwargs): return ops.logsumexp(self, *args, **kwargs)
    def cumsum(self, *args, **kwargs): return ops.cumsum(self, *args, **kwargs)
    def softmax(self, *args, **kwargs): return ops.softmax(self, *args, **kwargs)
    def log_softmax(self, *args, **kwargs): return ops.log_softmax(self, *args, **kwargs)
    def reshape(self, *shape): return ops.reshape(self, _shape_args(shape))
    view = reshape  # minitx has no strides of its own to keep: a view is a reshape
    def permute(self, *axes): return ops.permute(self, _shape_args(axes))
    def transpose(self, axis0=-2, axis1=-1): return ops.transpose(self, axis0, axis1)
    def expand(self, *shape): return ops.expand(self, _shape_args(shape))
    def repeat(self, *sizes): return ops.repeat(self, _shape_args(sizes))
    def squeeze(self, *args, **kwargs): return ops.squeeze(self, *args, **kwargs)
    def unsqueeze(self, *args, **kwargs): return ops.unsqueeze(self, *args, **kwargs)
    def flatten(self, start_dim=0, end_dim=-1): return ops.flatten(self, start_dim, end_dim)
    def flip(self, *args, **kwargs): return ops.flip(self, *args, **kwargs)
    def tril(self, diagonal=0): return ops.tril(self, diagonal)
    def triu(self, diagonal=0): return ops.triu(self, diagonal)
    def gather(self, axis, index): return ops.gather(self, axis, index)
    def masked_fill(self, mask, value): return ops.masked_fill(self, mask, value)
    def split(self, *args, **kwargs): return ops.split(self, *args, **kwargs)
    def chunk(self, *args, **kwargs): return ops.chunk(self, *args, **kwargs)
    def astype(self, dtype): return self.to(dtype=dtype)
    T = property(lambda self: ops.permute(self, tuple(reversed(range(self.ndim)))))


def _operand(other):
    """A NumPy scalar as the Python number it holds, so that it acts as a Python number does:
    numpy.float64(2) * t keeps t's dtype, as 2.0 * t does (and as in PyTorch)."""
    return other.item() if isinstance(other, numpy.generic) else other


def _shape_args(args):
    """Accept both x.reshape(2, 3) and x.reshape((2, 3))."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


def _compare(ufunc, a, b):
    """ufunc (a NumPy comparison) by the array module of a's data, so CUDA data stays there."""
    b = b.data if isinstance(b, Tensor) else b
    xp = backend.get_array_module(a.data, b)
    return Tensor._make(getattr(xp, ufunc.__name__)(a.data, b), False, None)


def _to_any_dtype(dtype):
    """A dtype for tensor data: the floating ones of backend.DTYPES, or an index/mask dtype."""
    name = numpy.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name in _INDEX_DTYPES:
        return numpy.dtype(name)
    return backend.to_dtype(dtype)


# --- factories --------------------------------------------------------------------------------
def as_array(x, device=None):
    """The array behind `x` (a Tensor, an array, a list) on `device`, copied only when it lives
    elsewhere: how ops and models take ids, targets, indices and masks, which get no gradient.
    device=None leaves it where it lives (a list: on the host), so host ids and targets can be
    checked there, for free, before an op moves them to the GPU."""
    data = x.data if isinstance(x, Tensor) else x
    if hasattr(data, "shape"):
        return data if device is None else backend.move_array(data, device)
    return backend.array_module(device or "cpu").asarray(data)


def tensor(data, requires_grad=False, dtype=None, device=None):
    """A leaf tensor from data (see Tensor.__init__)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def _factory(make):
    """Wrap `make(xp, shape, dtype, device)` into a factory taking (*shape, dtype, device, requires_grad)."""
    def factory(*shape, dtype="float32", device=None, requires_grad=False):
        device = backend.check_device(device or backend.default_device())
        dtype = backend.to_dtype(dtype)
        data = make(backend.array_module(device), _shape_args(shape), dtype, device)
        return Tensor._make(data, requires_grad, None)
    factory.__name__ = make.__name__
    factory.__doc__ = make.__doc__
    return factory


@_factory
def zeros(xp, shape, dtype, device):
    """A tensor of zeros: zeros(2, 3) or zeros((2, 3))."""
    return xp.zeros(shape, dtype)


@_factory
def ones(xp, shape, dtype, device):
    """A tensor of ones."""
    return xp.ones(shape, dtype)


@_factory
def randn(xp, shape, dtype, device):
    """Standard normal samples from minitx's generator (seed it with manual_seed)."""
    return normal_array(shape, dtype, device)


@_factory
def rand(xp, shape, dtype, device):
    """Uniform samples in [0, 1) from minitx's generator."""
    return uniform_array(shape, dtype, device)


def zeros_like(t, dtype=None, requires_grad=False):
    return zeros(*t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return ones(*t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype="int64", device=None):
    """Evenly spaced values like numpy.arange; int64 by default (positions, token ids)."""
    device = backend.check_device(device or backend.default_device())
    if stop is None:
        start, stop = 0, start
    data = backend.array_module(device).arange(start, stop, step, dtype=_to_any_dtype(dtype))
    return Tensor._make(data, False, None)


from . import autograd, ops  # noqa: E402  (both build on Tensor; Tensor's methods call into them)
