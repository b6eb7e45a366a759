"""Fused ops of neural networks: linear (affine) maps, attention, softmax, log-softmax,
cross-entropy, normalisation, dropout.

Each could be composed from the primitives; written as one op with a hand-derived backward,
it is numerically stable (no overflow for logits of 1e4) and saves a dozen graph nodes. The
attention and normalisation arithmetic comes from kernels/, which picks the kernel.
"""
from ..autograd import Function
from ..backend import device_of, get_array_module
from ..kernels import attention_backward, attention_forward, normalize, normalize_grad
from ..random import uniform_array
from .einsum import contract


class Affine(Function):
    """y = x W^T + b as one op: the einsum, with the bias added in place (a separate add would
    be one more graph node and one more pass over y, the largest array of the layer).

        forward:  y = einsum("...i,oi->...o", x, W) + b
        backward: dx = einsum("...o,oi->...i", dy, W)    dW = einsum("...o,...i->oi", dy, x)
                  db = dy summed over every axis but the last
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.x, ctx.weight = x, weight
        y = contract("...i,oi->...o", x, weight)
        if bias is not None:
            y += bias
        return y

    @staticmethod
    def backward(ctx, grad):
        needs = ctx.needs_grad
        dx = contract("...o,oi->...i", grad, ctx.weight) if needs[0] else None
        dweight = contract("...o,...i->oi", grad, ctx.x) if needs[1] else None
        dbias = grad.reshape(-1, grad.shape[-1]).sum(axis=0) if len(needs) > 2 and needs[2] else None
        return dx, dweight, dbias


class Attention(Function):
    """softmax(q k^T * scale + mask) v as one op; forward and backward come from a kernel
    (kernels/), which also returns the per-row log-sum-exp that backward needs."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask=None, **options):
        o, lse = attention_forward(q, k, v, key_mask=key_mask, **options)
        ctx.saved, ctx.key_mask, ctx.options = (q, k, v, o, lse), key_mask, options
        return o

    @staticmethod
    def backward(ctx, grad):
        dq, dk, dv = attention_backward(*ctx.saved, grad, key_mask=ctx.key_mask, **ctx.options)
        return dq, dk, dv, None


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
        safe = xp.where(counted, targets, 0)
        if targets.size and (safe.min() < 0 or safe.max() >= n_class):
            raise ValueError(f"cross_entropy: targets must lie in [0, {n_class}) or equal "
                             f"ignore_index={ignore_index}")
        z = _shift(logits, -1)
        e = xp.exp(z)
        s = e.sum(axis=-1, keepdims=True)
        rows = xp.arange(len(safe))
        n = max(int(counted.sum()), 1)
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


class Normalize(Function):
    """Layer norm or RMS norm (see kernels.normalize) as one op."""

    @staticmethod
    def forward(ctx, x, weight=None, bias=None, eps=1e-5, center=True, kernels="auto"):
        if weight is not None and weight.shape != x.shape[-1:]:
            raise ValueError(f"normalisation weight of shape {weight.shape} does not match the last "
                             f"axis of {x.shape}")
        y, ctx.xhat, ctx.rstd = normalize(x, weight, bias, eps, center, kernels)
        ctx.weight, ctx.center, ctx.kernels = weight, center, kernels
        return y

    @staticmethod
    def backward(ctx, grad):
        xhat, needs = ctx.xhat, ctx.needs_grad
        dx = normalize_grad(grad, xhat, ctx.rstd, ctx.weight, ctx.center, ctx.kernels)
        rows = tuple(range(grad.ndim - 1))
        dweight = (grad * xhat).sum(axis=rows) if len(needs) > 1 and needs[1] else None
        dbias = grad.sum(axis=rows) if len(needs) > 2 and needs[2] else None
        return dx, dweight, dbias


class InvertedDropout(Function):
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
