"""Elementwise ops. Binary ones broadcast; the engine sums their gradients back (autograd.unbroadcast).

Each backward restates the forward it undoes: for y = f(x), dL/dx = dL/dy * f'(x).
"""
import math

from ..autograd import Function
from ..backend import device_of, get_array_module, move_array
from ..kernels import erf, gelu_tanh_forward, gelu_tanh_grad


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


class Gelu(Function):
    """GELU(x) = x * Phi(x), Phi the standard normal CDF ("none"), or its tanh approximation ("tanh").

    The tanh form and erf come from kernels/ (one fused pass on the CPU, the reference array code
    on the GPU); `kernels` picks among them as everywhere (see kernels.choose).
    """

    @staticmethod
    def forward(ctx, x, approximate="none", kernels="auto"):
        ctx.x, ctx.approximate, ctx.kernels = x, approximate, kernels
        if approximate == "tanh":
            y, ctx.t = gelu_tanh_forward(x, kernels)
            return y
        ctx.cdf = 0.5 * (1 + erf(x * (1 / math.sqrt(2)), kernels))
        return x * ctx.cdf

    @staticmethod
    def backward(ctx, grad):
        x = ctx.x
        if ctx.approximate == "tanh":
            return gelu_tanh_grad(x, ctx.t, grad, ctx.kernels)
        # y = x Phi(x):  dy/dx = Phi(x) + x phi(x),  phi the standard normal density
        pdf = get_array_module(x).exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
        return grad * (ctx.cdf + x * pdf)


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


class Transfer(Function):
    """A copy on another device; the gradient travels back to the device the input came from."""

    @staticmethod
    def forward(ctx, a, device):
        ctx.device = device_of(a)
        return move_array(a, device)

    @staticmethod
    def backward(ctx, grad):
        return move_array(grad, ctx.device)

