"""Stateless versions of the layers: what a layer computes, given its weights as arguments."""
from .. import kernels
from ..autograd import Function
from ..backend import to_device
from ..ops.einsum import contract
from ..ops import (cross_entropy, dropout, gelu, layer_norm, log_softmax, rms_norm, softmax,
                   take)
from ..tensor import Tensor

__all__ = ["linear", "embedding", "layer_norm", "rms_norm", "dropout", "gelu", "softmax",
           "log_softmax", "cross_entropy", "scaled_dot_product_attention"]


class Linear(Function):
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


def linear(x, weight, bias=None):
    """x @ weight^T + bias, weight (d_out, d_in) as in the papers' W x; x (..., d_in) -> (..., d_out)."""
    return Linear.apply(x, weight, bias)


def embedding(ids, weight):
    """Rows of `weight` (vocab_size, d_model) for integer `ids` (...): (..., d_model)."""
    return take(weight, ids, axis=0)


class Attention(Function):
    """softmax(q k^T * scale + mask) v as one op; forward and backward come from a kernel
    (kernels/), which also returns the per-row log-sum-exp that backward needs."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask=None, **options):
        o, lse = kernels.attention_forward(q, k, v, key_mask=key_mask, **options)
        ctx.saved, ctx.key_mask, ctx.options = (q, k, v, o, lse), key_mask, options
        return o

    @staticmethod
    def backward(ctx, grad):
        dq, dk, dv = kernels.attention_backward(*ctx.saved, grad, key_mask=ctx.key_mask, **ctx.options)
        return dq, dk, dv, None


def scaled_dot_product_attention(q, k, v, *, causal=False, mask=None, window=None, prefix=None,
                                 scale=None, impl="auto"):
    """Attention of queries q (B, H, Nq, D) over keys k and values v (B, Hkv, Nk, D) -> (B, H, Nq, D).

    Hkv must divide H: each group of H / Hkv query heads shares one key/value head (grouped-query
    attention; Hkv = 1 is multi-query). Query i sits at position i + Nk - Nq, so a query decoded
    against a KV cache sees everything before it.
      causal=True   key j is visible to query i only if j <= i's position
      mask          boolean (B, Nk), False for padding keys that no query may see
      window=W      (with causal) only the W most recent keys, the query's own included
      prefix=P      (with causal) keys j < P are visible to all queries: the prefix-LM mask,
                    bidirectional over the first P tokens and causal after them
    A query that sees no key at all gets zeros. `impl` picks the kernel: "auto" (the fused kernel
    of the tensors' device), "fused" or "reference" (plain einsum + softmax).
    """
    if mask is not None:
        mask = to_device(mask.data if isinstance(mask, Tensor) else mask, q.device)
    return Attention.apply(q, k, v, mask, causal=causal, window=window, prefix=prefix, scale=scale,
                           impl=impl)
