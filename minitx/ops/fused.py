"""Fused ops of neural networks: linear (affine) maps, attention, softmax, log-softmax,
cross-entropy, normalisation, dropout.

Each could be composed from the primitives; written as one op with a hand-derived backward,
it is numerically stable (no overflow for logits of 1e4) and saves a dozen graph nodes. The
attention and normalisation arithmetic comes from kernels/, which picks the kernel.
"""
from ..autograd import Function
from ..backend import device_of, get_array_module
from ..kernels import attention_backward, attention_forward, normalize, normalize_grad
from .elementwise import quiet
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
    """softmax(q k^T * scale + bias, masked) v as one op, with dropout on the probabilities;
    forward and backward come from a kernel (kernels/), which also returns the per-row
    log-sum-exp that backward needs. The bias (an additive attn_mask) gets a gradient too."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask=None, bias=None, **options):
        o, lse = attention_forward(q, k, v, key_mask=key_mask, bias=bias, **options)
        ctx.saved, ctx.key_mask, ctx.bias, ctx.options = (q, k, v, o, lse), key_mask, bias, options
        return o

    @staticmethod
    def backward(ctx, grad):
        grads = attention_backward(*ctx.saved, grad, key_mask=ctx.key_mask, bias=ctx.bias,
                                   **ctx.options)
        dbias = grads[3] if len(grads) > 3 and ctx.needs_grad[4] else None
        return grads[0], grads[1], grads[2], None, dbias   # dbias (B, H, Nq, Nk): the engine sums


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
    """Cross-entropy of logits (N, C) against a target distribution per row, in one stable op:

        loss_n = -sum_c w_c u_nc log softmax(logits_n)_c,   u_n = (1 - eps) t_n + eps / C

    t_n is the one-hot of a class index (targets (N,) integers; rows whose target is
    `ignore_index` count nowhere: padding, or the prompt of an instruction example) or a row of
    probabilities (targets (N, C) floats); w are class weights (1 by default), eps the label
    smoothing. reduction="mean" divides the sum by the weight of the counted targets (class
    indices) or by N (probabilities), as PyTorch does, so a batch whose every target is ignored
    gives nan; "sum" and "none" (loss per row) as they say.
    """

    @staticmethod
    def forward(ctx, logits, targets, weight=None, ignore_index=-100, reduction="mean",
                label_smoothing=0.0):
        xp = get_array_module(logits)
        n_rows, n_class = logits.shape
        weight = xp.ones(n_class, logits.dtype) if weight is None else weight
        eps = label_smoothing
        z = _shift(logits, -1)
        e = xp.exp(z)
        s = e.sum(axis=-1, keepdims=True)
        log_s = xp.log(s)                                       # log softmax = z - log_s
        ctx.probs, ctx.weight, ctx.eps, ctx.reduction = e / s, weight, eps, reduction
        ctx.picked = ctx.u = ctx.logp = None
        if targets.dtype.kind == "f":                           # probabilities
            ctx.u = weight * ((1 - eps) * targets + eps / n_class)  # (N, C): w u
            ctx.logp = z - log_s                                # (N, C), for the targets' gradient
            loss = -(ctx.u * ctx.logp).sum(axis=-1)
            ctx.total = n_rows
        else:                                                   # class indices
            counted = targets != ignore_index
            safe = xp.where(counted, targets, 0)                # in range: checked by ops.cross_entropy
            rows = xp.arange(n_rows)
            w_target = weight[safe] * counted                   # (N,): 0 on ignored rows
            # -sum_c w_c u_c logp_c with u = (1 - eps) onehot(target) + eps / C, without the
            # (N, C) array u (arrays in float order: a bool array times a Python float is float64)
            loss = -(w_target * (z[rows, safe] - log_s[:, 0]) * (1 - eps))
            if eps:
                loss -= ((z - log_s) * weight).sum(axis=-1) * counted * (eps / n_class)
            ctx.picked, ctx.total = (rows, safe, w_target, counted), w_target.sum()
        if reduction == "none":
            return loss
        with quiet():  # mean of no counted target: 0 / 0 = nan, as PyTorch gives
            return loss.sum() if reduction == "sum" else loss.sum() / ctx.total

    @staticmethod
    def backward(ctx, grad):
        # loss_n = -sum_c w_c u_nc logp_nc:  dloss_n/dlogits_n = softmax_n * sum_c(w u)_nc - (w u)_n
        #                                    dloss_n/dt_nc = -(1 - eps) w_c logp_nc
        xp, probs, weight, eps = get_array_module(grad), ctx.probs, ctx.weight, ctx.eps
        if ctx.reduction == "none":
            g = grad                                            # (N,)
        elif ctx.reduction == "sum":
            g = xp.broadcast_to(grad, probs.shape[:1])
        else:  # no counted target: the loss is nan, its gradient 0 (as in PyTorch); on the device
            counts = ctx.total > 0
            g = xp.broadcast_to(xp.where(counts, grad, 0) / xp.where(counts, ctx.total, 1),
                                probs.shape[:1])
        dtargets = None
        if ctx.picked is not None:                              # class indices
            rows, safe, w_target, counted = ctx.picked
            n_class = probs.shape[1]
            d = probs * (w_target * (1 - eps) + weight.sum() * counted * (eps / n_class))[:, None]
            if eps:
                d -= weight * counted[:, None] * (eps / n_class)
            d[rows, safe] -= w_target * (1 - eps)
        else:                                                   # probabilities
            d = probs * ctx.u.sum(axis=-1, keepdims=True) - ctx.u
            if ctx.needs_grad[1]:
                dtargets = -(1 - eps) * weight * ctx.logp * g[:, None]
        return d * g[:, None], dtargets, None


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
