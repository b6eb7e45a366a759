"""Elementwise ops. Binary ones broadcast; the engine sums their gradients back (autograd.unbroadcast).

Each backward restates the forward it undoes: for y = f(x), dL/dx = dL/dy * f'(x).
"""
import math

import numpy

from ..autograd import Function
from ..backend import device_of, get_array_module, to_device


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, grad):
        return grad, grad


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a - b

    @staticmethod
    def backward(ctx, grad):
        return grad, -grad


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        return a * b

    @staticmethod
    def backward(ctx, grad):
        da = grad * ctx.b if ctx.needs_grad[0] else None
        db = grad * ctx.a if ctx.needs_grad[1] else None
        return da, db


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.b, ctx.out = b, a / b
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        # y = a / b:  dy/da = 1 / b,  dy/db = -a / b^2 = -y / b
        da = grad / ctx.b
        return da, (-da * ctx.out if ctx.needs_grad[1] else None)


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Pow(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b, ctx.out = a, b, a ** b
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        # y = a^b:  dy/da = b * a^(b-1),  dy/db = y * log(a)  (only asked for when b is a tensor)
        a, b = ctx.a, ctx.b
        da = grad * b * a ** (b - 1) if ctx.needs_grad[0] else None
        db = grad * ctx.out * get_array_module(a).log(a) if ctx.needs_grad[1] else None
        return da, db


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.out = get_array_module(a).exp(a)
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return get_array_module(a).log(a)

    @staticmethod
    def backward(ctx, grad):
        return grad / ctx.a


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.out = get_array_module(a).sqrt(a)
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        return grad / (2 * ctx.out)


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return abs(a)

    @staticmethod
    def backward(ctx, grad):
        return grad * get_array_module(ctx.a).sign(ctx.a)  # sign(0) = 0: the subgradient at the kink


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.out = get_array_module(a).tanh(a)
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        return grad * (1 - ctx.out * ctx.out)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        # sigmoid(x) = (1 + tanh(x/2)) / 2: the same function, with no overflow for large |x|
        ctx.out = 0.5 * (1 + get_array_module(a).tanh(0.5 * a))
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.out * (1 - ctx.out)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.positive = a > 0
        return a * ctx.positive

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.positive


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def fused_cpu(x):
    """The fused numba kernels (kernels/numba_pointwise.py) for NumPy arrays, None for CuPy ones."""
    if get_array_module(x) is not numpy:
        return None
    from ..kernels import numba_pointwise
    return numba_pointwise


def gelu_tanh_forward(x):
    """(y, t): y = x/2 (1 + t), t = tanh(sqrt(2/pi) (x + 0.044715 x^3)), t kept for backward."""
    t = get_array_module(x).tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x)))  # x*x*x: NumPy's
    return 0.5 * x * (1 + t), t                                                    # x**3 is ~50x slower


def gelu_tanh_grad(x, t, grad):
    """dL/dx = grad (1 + t + x (1 - t^2) du/dx) / 2,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
    return grad * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)


class Gelu(Function):
    """GELU(x) = x * Phi(x), Phi the standard normal CDF ("none"), or its tanh approximation ("tanh").

    The tanh form runs as fused numba kernels on the CPU (one pass instead of a dozen over the
    MLP's hidden activations) and as the array code above on the GPU.
    """

    @staticmethod
    def forward(ctx, x, approximate="none"):
        ctx.x, ctx.approximate = x, approximate
        if approximate == "tanh":
            fused = fused_cpu(x)
            y, ctx.t = fused.gelu_tanh_forward(x) if fused else gelu_tanh_forward(x)
            return y
        ctx.cdf = 0.5 * (1 + erf(x * (1 / math.sqrt(2))))
        return x * ctx.cdf

    @staticmethod
    def backward(ctx, grad):
        x = ctx.x
        if ctx.approximate == "tanh":
            fused = fused_cpu(x)
            return fused.gelu_tanh_grad(x, ctx.t, grad) if fused else gelu_tanh_grad(x, ctx.t, grad)
        # y = x Phi(x):  dy/dx = Phi(x) + x phi(x),  phi the standard normal density
        pdf = get_array_module(x).exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
        return grad * (ctx.cdf + x * pdf)


def erf(x):
    """The error function elementwise; NumPy has none, so on the CPU it is a small numba ufunc."""
    if get_array_module(x) is numpy:
        return _numba_erf()(x)
    import cupyx.scipy.special
    return cupyx.scipy.special.erf(x)


def _erf_scalar(x):
    return math.erf(x)


_erf_ufunc = None


def _numba_erf():
    global _erf_ufunc
    if _erf_ufunc is None:  # compiled on first use, so `import minitx` does not wait for numba
        import numba
        _erf_ufunc = numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)(_erf_scalar)
    return _erf_ufunc


class Where(Function):
    """out = a where cond else b; cond is a boolean array and gets no gradient."""

    @staticmethod
    def forward(ctx, cond, a, b):
        xp = get_array_module(cond, a, b)
        ctx.cond = cond
        return xp.where(cond, a, b)

    @staticmethod
    def backward(ctx, grad):
        zero = grad.dtype.type(0)
        xp = get_array_module(grad)
        da = xp.where(ctx.cond, grad, zero) if ctx.needs_grad[1] else None
        db = xp.where(ctx.cond, zero, grad) if ctx.needs_grad[2] else None
        return None, da, db


class AsType(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.astype(ctx.dtype)


class ToDevice(Function):
    @staticmethod
    def forward(ctx, a, device):
        ctx.device = device_of(a)
        return to_device(a, device)

    @staticmethod
    def backward(ctx, grad):
        return to_device(grad, ctx.device)

