"""Elementwise ops. Binary ones broadcast; the engine sums their gradients back (autograd.unbroadcast).

Each backward restates the forward it undoes: for y = f(x), dL/dx = dL/dy * f'(x).
"""
import math

import numpy

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


def quiet():
    """Silence NumPy's divide and invalid warnings where inf or nan is the intended result
    (CuPy gives none)."""
    return numpy.errstate(divide="ignore", invalid="ignore")


class Pow(Function):
    """a ** b. At a = 0 and at b = 0 the textbook derivatives are 0 * inf; there they are 0
    (PyTorch's convention): a^0 = 1 for every a, and 0^b = 0 for every b > 0."""

    @staticmethod
    def forward(ctx, a, b):
        with quiet():  # 0 ** -1 = inf, (-8) ** (1/3) = nan, as in C
            ctx.a, ctx.b, ctx.out = a, b, a ** b
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        # y = a^b:  dy/da = b a^(b-1), but 0 where b = 0
        #           dy/db = y log(a),  but 0 where a = 0 and b >= 0
        a, b, xp = ctx.a, ctx.b, get_array_module(grad)
        with quiet():
            da = xp.where(xp.asarray(b == 0), 0, grad * b * a ** (b - 1)) if ctx.needs_grad[0] else None
            db = (xp.where((a == 0) & (b >= 0), 0, grad * ctx.out * xp.log(a))
                  if ctx.needs_grad[1] else None)
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


class LeakyRelu(Function):
    """x where x > 0, else slope * x: a small gradient for negative inputs instead of none."""

    @staticmethod
    def forward(ctx, a, slope=0.01):
        ctx.factor = get_array_module(a).where(a > 0, a.dtype.type(1), a.dtype.type(slope))
        return a * ctx.factor

    @staticmethod
    def backward(ctx, grad):
        # y = factor * x with factor 1 or slope:  dy/dx = factor (slope at x = 0, as in PyTorch)
        return grad * ctx.factor


class Silu(Function):
    """SiLU (swish): x * sigmoid(x), the gate of SwiGLU."""

    @staticmethod
    def forward(ctx, a):
        ctx.a, ctx.s = a, 0.5 * (1 + get_array_module(a).tanh(0.5 * a))  # sigmoid, as in Sigmoid
        return a * ctx.s

    @staticmethod
    def backward(ctx, grad):
        # y = x s, s = sigmoid(x), ds/dx = s (1 - s):  dy/dx = s + x s (1 - s) = s (1 + x (1 - s))
        s = ctx.s
        return grad * s * (1 + ctx.a * (1 - s))


class Softplus(Function):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (where the two agree
    to float precision), as in PyTorch."""

    @staticmethod
    def forward(ctx, a, beta=1.0, threshold=20.0):
        xp = get_array_module(a)
        z = a * a.dtype.type(beta)
        ctx.linear, ctx.z = z > threshold, z
        # log(1 + e^z) = max(z, 0) + log(1 + e^-|z|): no overflow for large |z|
        softplus = xp.maximum(z, 0) + xp.log1p(xp.exp(-abs(z)))
        return xp.where(ctx.linear, a, softplus / a.dtype.type(beta))

    @staticmethod
    def backward(ctx, grad):
        # y = log(1 + exp(beta x)) / beta:  dy/dx = sigmoid(beta x);  y = x:  dy/dx = 1
        s = 0.5 * (1 + get_array_module(grad).tanh(0.5 * ctx.z))
        return grad * get_array_module(grad).where(ctx.linear, 1, s)


class Sign(Function):
    """-1, 0 or 1; piecewise constant, so its gradient is 0 everywhere (PyTorch's choice at 0)."""

    @staticmethod
    def forward(ctx, a):
        return get_array_module(a).sign(a)

    @staticmethod
    def backward(ctx, grad):
        return get_array_module(grad).zeros_like(grad)


class Sin(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return get_array_module(a).sin(a)

    @staticmethod
    def backward(ctx, grad):
        return grad * get_array_module(grad).cos(ctx.a)   # d sin(x)/dx = cos(x)


class Cos(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return get_array_module(a).cos(a)

    @staticmethod
    def backward(ctx, grad):
        return -grad * get_array_module(grad).sin(ctx.a)  # d cos(x)/dx = -sin(x)


class Rsqrt(Function):
    """1 / sqrt(x), the scale of RMS and layer norm, in one op."""

    @staticmethod
    def forward(ctx, a):
        with quiet():  # rsqrt(0) = inf, rsqrt(-1) = nan, as in PyTorch
            ctx.out = 1 / get_array_module(a).sqrt(a)
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        # y = x^(-1/2):  dy/dx = -1/2 x^(-3/2) = -y^3 / 2
        y = ctx.out
        return grad * (-0.5 * y * y * y)


class Erf(Function):
    """The error function, erf(x) = 2/sqrt(pi) * integral from 0 to x of exp(-t^2) dt."""

    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return erf(a)

    @staticmethod
    def backward(ctx, grad):
        # d erf(x)/dx = 2/sqrt(pi) exp(-x^2)
        return grad * (2 / math.sqrt(math.pi)) * get_array_module(grad).exp(-ctx.a * ctx.a)


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


class PairExtremum(Function):
    """Elementwise maximum (kind="max") or minimum of two tensors. The gradient goes to the larger
    (smaller) input; where the two are equal it is shared equally, as in PyTorch and Extremum."""

    @staticmethod
    def forward(ctx, a, b, kind="max"):
        xp = get_array_module(a, b)
        ctx.a, ctx.b, ctx.kind = a, b, kind
        return xp.maximum(a, b) if kind == "max" else xp.minimum(a, b)

    @staticmethod
    def backward(ctx, grad):
        # y = a where a wins, b where b wins:  dy/da = 1 where a wins, 1/2 where a == b
        a, b = ctx.a, ctx.b
        wins_a = (a > b) if ctx.kind == "max" else (a < b)
        share_a = wins_a + 0.5 * (a == b)
        return grad * share_a, grad * (1 - share_a)


class Clip(Function):
    """a limited to [low, high]; either bound may be None, a number or a tensor (broadcast).
    Where high < low the result is high, as in NumPy and PyTorch."""

    @staticmethod
    def forward(ctx, a, low=None, high=None):
        xp = get_array_module(a)
        above = a >= low if low is not None else True   # inside the lower bound
        below = a <= high if high is not None else True  # inside the upper bound
        ctx.masks = above, below
        out = a if low is None else xp.maximum(a, low)
        return out if high is None else xp.minimum(out, high)

    @staticmethod
    def backward(ctx, grad):
        # y = a inside [low, high]:  dy/da = 1 there, dy/dlow = 1 below low, dy/dhigh = 1 above high
        above, below = ctx.masks
        dlow = grad * ~above if ctx.needs_grad[1] else None
        dhigh = grad * ~below if ctx.needs_grad[2] else None
        return grad * (above & below), dlow, dhigh


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

