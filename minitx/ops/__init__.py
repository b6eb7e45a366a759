"""Every differentiable op as a function on Tensors.

The primitives are Function classes in the modules beside this one (elementwise, reduce,
shape, einsum, fused); the rest are composed here from them, so they need no backward of their own.
Ops whose arithmetic has a fused kernel (attention, GELU, the norms) take `kernels="auto"`; the
choice itself is made in kernels/ (kernels.choose).
"""
import builtins

from ..backend import get_array_module
from ..tensor import Tensor, as_array
from .einsum import Einsum
from .elementwise import (Abs, Add, AsType, Div, Exp, Gelu, Log, Mul, Neg, Pow, Relu, Sigmoid,
                          Sqrt, Sub, Tanh, Transfer, Where)
from .fused import (Affine, Attention, CrossEntropy, InvertedDropout, LogSoftmax, Normalize,
                    Softmax)
from .reduce import Extremum, LogSumExp, Sum, normalize_axes
from .shape import Concatenate, Expand, GetItem, Permute, Reshape, Take, check_range

# --- elementwise ----------------------------------------------------------------------------------
def add(a, b): return Add.apply(a, b)
def sub(a, b): return Sub.apply(a, b)
def mul(a, b): return Mul.apply(a, b)
def div(a, b): return Div.apply(a, b)
def neg(a): return Neg.apply(a)
def pow(a, b): return Pow.apply(a, b)
def exp(a): return Exp.apply(a)
def log(a): return Log.apply(a)
def sqrt(a): return Sqrt.apply(a)
def abs(a): return Abs.apply(a)
def tanh(a): return Tanh.apply(a)
def sigmoid(a): return Sigmoid.apply(a)
def relu(a): return Relu.apply(a)


def gelu(a, approximate="none", kernels="auto"):
    """GELU; approximate="none" uses the exact erf form, "tanh" the approximation GPT-2 used."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return Gelu.apply(a, approximate=approximate, kernels=kernels)


def astype(a, dtype): return AsType.apply(a, dtype=dtype)
def transfer(a, device): return Transfer.apply(a, device=device)


def where(cond, a, b):
    """Elementwise a if cond else b; cond is a boolean tensor or array (no gradient)."""
    return Where.apply(cond, a, b)


def masked_fill(x, mask, value):
    """x with `value` wherever the boolean `mask` is True (e.g. -inf on masked attention scores)."""
    return Where.apply(mask, x.dtype.type(value), x)


# --- reductions -----------------------------------------------------------------------------------
def sum(a, axis=None, keepdims=False): return Sum.apply(a, axis=axis, keepdims=keepdims)
def max(a, axis=None, keepdims=False): return Extremum.apply(a, axis=axis, keepdims=keepdims, kind="max")
def min(a, axis=None, keepdims=False): return Extremum.apply(a, axis=axis, keepdims=keepdims, kind="min")
def logsumexp(a, axis=-1, keepdims=False): return LogSumExp.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    n = _count(a, axis)
    return sum(a, axis, keepdims) * (1 / n)


def var(a, axis=None, keepdims=False, ddof=0):
    """Variance, mean((a - mean(a))^2) * n / (n - ddof); ddof=0 as in NumPy and layer norm."""
    n = _count(a, axis)
    d = a - mean(a, axis, keepdims=True)
    return sum(d * d, axis, keepdims) * (1 / builtins.max(n - ddof, 1))


def _count(a, axis):
    shape = a.shape
    n = 1
    for ax in normalize_axes(axis, len(shape)):
        n *= shape[ax]
    return n


# --- shapes ---------------------------------------------------------------------------------------
def reshape(a, shape): return Reshape.apply(a, shape=tuple(shape))
def permute(a, axes): return Permute.apply(a, axes=tuple(axes))
def expand(a, shape): return Expand.apply(a, shape=tuple(shape))
def getitem(a, index): return GetItem.apply(a, index=index)


def transpose(a, axis0=-2, axis1=-1):
    axes = list(range(a.ndim))
    axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
    return permute(a, axes)


def broadcast_to(a, shape): return expand(a, shape)


def unsqueeze(a, axis):
    shape = list(a.shape)
    shape.insert(axis % (a.ndim + 1), 1)
    return reshape(a, shape)


def take(a, indices, axis=0):
    """a's entries along `axis` at integer `indices` (a tensor or array); the embedding lookup."""
    indices = as_array(indices)           # where it lives: checked there by Take
    if indices.dtype.kind not in "iu":
        raise ValueError(f"take: indices must be integers, got {indices.dtype}")
    return Take.apply(a, indices=indices, axis=axis)


def concatenate(tensors, axis=0): return Concatenate.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join tensors of one shape along a new axis."""
    return concatenate([unsqueeze(t, axis) for t in tensors], axis)


def split(a, sizes, axis=0):
    """Cut `a` along `axis` into pieces: `sizes` is a piece length or a list of lengths."""
    n = a.shape[axis]
    if isinstance(sizes, int):
        sizes = [sizes] * (n // sizes) + ([n % sizes] if n % sizes else [])
    if builtins.sum(sizes) != n:
        raise ValueError(f"split sizes {list(sizes)} do not add up to {n} (axis {axis} of {a.shape})")
    pieces, start = [], 0
    for size in sizes:
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, start + size)
        pieces.append(getitem(a, tuple(index)))
        start += size
    return pieces


# --- contraction ----------------------------------------------------------------------------------
def einsum(subscripts, *operands):
    """Einstein summation over tensors, e.g. einsum("bnd,de->bne", x, w); see ops/einsum.py."""
    return Einsum.apply(*operands, subscripts=subscripts)


def matmul(a, b):
    """a @ b with NumPy's rules for 1-D and batched operands, as one einsum."""
    a = a if isinstance(a, Tensor) else Tensor(a, dtype=b.dtype)
    b = b if isinstance(b, Tensor) else Tensor(b, dtype=a.dtype)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: operands must have at least one dimension (use * for scalars)")
    # a vector on the left acts as a row (j), on the right as a column (j); extra leading axes batch
    sa = "j" if a.ndim == 1 else ("...ij" if a.ndim > 2 else "ij")
    sb = "j" if b.ndim == 1 else ("...jk" if b.ndim > 2 else "jk")
    out = (("..." if builtins.max(a.ndim, b.ndim) > 2 else "")
           + ("i" if a.ndim > 1 else "") + ("k" if b.ndim > 1 else ""))
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align "
                         f"({a.shape[-1]} != {b.shape[-2 if b.ndim > 1 else 0]})")
    return einsum(f"{sa},{sb}->{out}", a, b)


# --- neural-network ops ---------------------------------------------------------------------------
def softmax(x, axis=-1): return Softmax.apply(x, axis=axis)
def log_softmax(x, axis=-1): return LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean -log softmax(logits)[target] over positions whose target is not ignore_index."""
    targets = as_array(targets)
    if targets.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: targets must be integers, got {targets.dtype}")
    # checked where they live (free on the host), then moved to the logits' device
    xp = get_array_module(targets)
    check_range(xp.where(targets != ignore_index, targets, 0), 0, logits.shape[-1],
                f"cross_entropy: targets (other than ignore_index={ignore_index})")
    return CrossEntropy.apply(logits, as_array(targets, logits.device), ignore_index=ignore_index)


def layer_norm(x, weight=None, bias=None, eps=1e-5, kernels="auto"):
    return Normalize.apply(x, weight, bias, eps=eps, center=True, kernels=kernels)


def rms_norm(x, weight=None, eps=1e-6, kernels="auto"):
    return Normalize.apply(x, weight, None, eps=eps, center=False, kernels=kernels)


def dropout(x, p=0.5, training=True):
    """Inverted dropout; the identity when p == 0 or not training."""
    if not training or p == 0:
        return x
    return InvertedDropout.apply(x, p=p)


def linear(x, weight, bias=None):
    """x @ weight^T + bias, weight (d_out, d_in) as in the papers' W x; x (..., d_in) -> (..., d_out)."""
    return Affine.apply(x, weight, bias)


def scaled_dot_product_attention(q, k, v, *, causal=False, mask=None, window=None, prefix=None,
                                 scale=None, kernels="auto"):
    """Attention of queries q (B, H, Nq, D) over keys k and values v (B, Hkv, Nk, D) -> (B, H, Nq, D).

    Hkv must divide H: each group of H / Hkv query heads shares one key/value head (grouped-query
    attention; Hkv = 1 is multi-query). Query i sits at position i + Nk - Nq, so a query decoded
    against a KV cache sees everything before it.
      causal=True   key j is visible to query i only if j <= i's position
      mask          boolean (B, Nk), False for padding keys that no query may see
      window=W      (with causal) only the W most recent keys, the query's own included
      prefix=P      (with causal) keys j < P are visible to all queries: the prefix-LM mask,
                    bidirectional over the first P tokens and causal after them
    A query that sees no key at all gets zeros. `kernels` picks the kernel: "auto" (the fused kernel
    of the tensors' device where it pays), "fused" or "reference" (plain einsum + softmax).
    """
    if mask is not None:
        mask = as_array(mask, q.device)
    return Attention.apply(q, k, v, mask, causal=causal, window=window, prefix=prefix, scale=scale,
                           kernels=kernels)
