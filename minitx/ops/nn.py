"""Fused ops of neural networks: softmax, log-softmax, cross-entropy, normalisation, dropout.

Each could be composed from the primitives; written as one op with a hand-derived backward,
it is numerically stable (no overflow for logits of 1e4) and saves a dozen graph nodes.
"""
from ..autograd import Function
from ..backend import device_of, get_array_module
from .elementwise import fused_cpu
from ..random import uniform_array


def _shift(x, axis):
    """x minus its maximum along axis (a row of all -inf is left at -inf, not NaN)."""
    xp = get_array_module(x)
    m = x.max(axis=axis, keepdims=True)
    return x - xp.where(xp.isfinite(m), m, 0)


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        e = get_array_module(x).exp(_shift(x, axis))
        ctx.axis, ctx.out = axis, e / e.sum(axis=axis, keepdims=True)
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        # y = softmax(x):  dL/dx = y * (g - sum(g * y))
        y = ctx.out
        return y * (grad - (grad * y).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = get_array_module(x)
        z = _shift(x, axis)
        ctx.axis, ctx.out = axis, z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        # y = x - logsumexp(x):  dL/dx = g - softmax(x) * sum(g)
        xp = get_array_module(grad)
        return grad - xp.exp(ctx.out) * grad.sum(axis=ctx.axis, keepdims=True)


class CrossEntropy(Function):
    """Mean over counted positions of -log softmax(logits)[target], in one stable op.

    logits (..., C), targets (...) integers; positions whose target is `ignore_index` count
    neither in the sum nor in the mean (padding, or the prompt part of an instruction example).
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100):
        xp = get_array_module(logits)
        if targets.shape != logits.shape[:-1]:
            raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match logits "
                             f"of shape {logits.shape} (expected targets {logits.shape[:-1]})")
        n_class, logits_shape = logits.shape[-1], logits.shape
        logits = logits.reshape(-1, n_class)
        targets = targets.reshape(-1)
        counted = targets != ignore_index
        safe = xp.where(counted, targets, 0)            # in range: checked by ops.cross_entropy
        z = _shift(logits, -1)
        e = xp.exp(z)
        s = e.sum(axis=-1, keepdims=True)
        rows = xp.arange(len(safe))
        n = xp.maximum(counted.sum(), 1).astype(logits.dtype)   # stays on the device: no sync
        # -log p[target] = log(sum(exp(z))) - z[target]
        loss = ((xp.log(s[:, 0]) - z[rows, safe]) * counted).sum() / n
        ctx.probs, ctx.rows, ctx.safe, ctx.counted, ctx.n = e / s, rows, safe, counted, n
        ctx.shape = logits_shape
        return loss

    @staticmethod
    def backward(ctx, grad):
        # dL/dlogits = (softmax(logits) - onehot(target)) / n on counted rows, 0 elsewhere
        d = ctx.probs.copy()
        d[ctx.rows, ctx.safe] -= 1
        d *= (ctx.counted * (grad / ctx.n))[:, None]
        return d.reshape(ctx.shape), None


def normalize(x, weight, bias, eps, center):
    """(y, xhat, rstd) of layer norm (center=True) or RMS norm (center=False) over the last axis:

        layer norm: xhat = (x - mean(x)) / sqrt(var(x) + eps)
        RMS norm:   xhat = x / sqrt(mean(x^2) + eps)
        y = xhat * weight + bias                   (weight, bias optional)
    """
    xp = get_array_module(x)
    if center:
        x = x - x.mean(axis=-1, keepdims=True)
    rstd = 1 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    xhat = x * rstd
    y = xhat if weight is None else xhat * weight
    return (y if bias is None else y + bias), xhat, rstd


def normalize_grad(grad, xhat, rstd, weight, center):
    """dL/dx of `normalize`: with dxhat = grad * weight,
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); RMS norm has no mean(dxhat)."""
    dxhat = grad if weight is None else grad * weight
    dx = dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    if center:
        dx = dx - dxhat.mean(axis=-1, keepdims=True)
    return rstd * dx


class Normalize(Function):
    """Layer norm or RMS norm (see `normalize`) as one op: fused numba kernels on the CPU, the
    array code above on the GPU."""

    @staticmethod
    def forward(ctx, x, weight=None, bias=None, eps=1e-5, center=True):
        if weight is not None and weight.shape != x.shape[-1:]:
            raise ValueError(f"normalisation weight of shape {weight.shape} does not match the last "
                             f"axis of {x.shape}")
        fused = fused_cpu(x)
        y, ctx.xhat, ctx.rstd = (fused.normalize if fused else normalize)(x, weight, bias, eps, center)
        ctx.weight, ctx.center = weight, center
        return y

    @staticmethod
    def backward(ctx, grad):
        xhat, needs = ctx.xhat, ctx.needs_grad
        fused = fused_cpu(xhat)
        dx = (fused.normalize_grad if fused else normalize_grad)(grad, xhat, ctx.rstd, ctx.weight,
                                                                 ctx.center)
        rows = tuple(range(grad.ndim - 1))
        dweight = (grad * xhat).sum(axis=rows) if len(needs) > 1 and needs[1] else None
        dbias = grad.sum(axis=rows) if len(needs) > 2 and needs[2] else None
        return dx, dweight, dbias


class Dropout(Function):
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout),
    so the expected value is unchanged and evaluation needs no rescaling."""

    @staticmethod
    def forward(ctx, x, p=0.5):
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        keep = uniform_array(x.shape, x.dtype, device_of(x)) >= p
        ctx.scale = keep * x.dtype.type(1 / (1 - p))
        return x * ctx.scale

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale
