"""Every differentiable op as a function on Tensors.

The primitives are Function classes in the modules beside this one (elementwise, reduce,
shape, einsum, fused); the rest are composed here from them, so they need no backward of their own.
Ops whose arithmetic has a fused kernel (attention, GELU, the norms) take `kernels="auto"`; the
choice itself is made in kernels/ (kernels.choose).

Names and arguments follow NumPy (axis=, keepdims=), and PyTorch's spellings are accepted as well
wherever they mean the same: dim= for axis=, keepdim= for keepdims= (see `torch_names`).
"""
import builtins
import functools
import math

from ..backend import get_array_module
from ..random import random_seed
from ..tensor import Tensor, as_array
from .einsum import Einsum
from .elementwise import (Abs, Add, AsType, Clip, Cos, Div, Erf, Exp, Gelu, LeakyRelu, Log, Mul,
                          Neg, PairExtremum, Pow, Relu, Rsqrt, Sigmoid, Sign, Silu, Sin, Softplus,
                          Sqrt, Sub, Tanh, Transfer, Where)
from .fused import (Affine, Attention, CrossEntropy, InvertedDropout, LogSoftmax, Normalize,
                    Softmax)
from .reduce import CumSum, Extremum, LogSumExp, Prod, Sum, Variance, count, normalize_axes
from .shape import (Concatenate, Expand, Gather, GetItem, Pad, Permute, Reshape, Take,
                    check_range)

_TORCH_NAMES = {"dim": "axis", "dims": "axis", "keepdim": "keepdims"}


def torch_names(fn):
    """Let `fn` take PyTorch's keyword names for its NumPy ones: dim(s)= for axis=, keepdim= for
    keepdims=, so that x.sum(dim=1, keepdim=True) ported from PyTorch means what it meant there."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for torch_name in _TORCH_NAMES.keys() & kwargs.keys():
            name = _TORCH_NAMES[torch_name]
            if name in kwargs:
                raise TypeError(f"{fn.__name__}() got both {name}= and {torch_name}=")
            kwargs[name] = kwargs.pop(torch_name)
        return fn(*args, **kwargs)
    return wrapper


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
def silu(a): return Silu.apply(a)
def sign(a): return Sign.apply(a)
def erf(a): return Erf.apply(a)
def rsqrt(a): return Rsqrt.apply(a)
def sin(a): return Sin.apply(a)
def cos(a): return Cos.apply(a)
def leaky_relu(a, negative_slope=0.01): return LeakyRelu.apply(a, slope=negative_slope)
def softplus(a, beta=1.0, threshold=20.0): return Softplus.apply(a, beta=beta, threshold=threshold)
def maximum(a, b): return PairExtremum.apply(a, b, kind="max")
def minimum(a, b): return PairExtremum.apply(a, b, kind="min")


def clip(a, min=None, max=None):
    """a limited to [min, max] (PyTorch's clamp); each bound a number, a tensor or None."""
    return Clip.apply(a, min, max)


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
@torch_names
def sum(a, axis=None, keepdims=False): return Sum.apply(a, axis=axis, keepdims=keepdims)
@torch_names
def prod(a, axis=None, keepdims=False): return Prod.apply(a, axis=axis, keepdims=keepdims)
@torch_names
def max(a, axis=None, keepdims=False): return Extremum.apply(a, axis=axis, keepdims=keepdims, kind="max")
@torch_names
def min(a, axis=None, keepdims=False): return Extremum.apply(a, axis=axis, keepdims=keepdims, kind="min")
@torch_names
def logsumexp(a, axis=-1, keepdims=False): return LogSumExp.apply(a, axis=axis, keepdims=keepdims)
@torch_names
def cumsum(a, axis): return CumSum.apply(a, axis=axis)


@torch_names
def mean(a, axis=None, keepdims=False):
    """sum / n; nan over an empty axis (n = 0), as in PyTorch."""
    n = count(a.shape, normalize_axes(axis, a.ndim))
    return sum(a, axis, keepdims) * (1 / n if n else math.nan)


@torch_names
def var(a, axis=None, keepdims=False, ddof=None, *, correction=None, unbiased=None):
    """Variance with divisor n - ddof. THE DEFAULT IS NumPy's ddof=0 (the population variance,
    as layer norm uses), where PyTorch's is the unbiased n - 1: pass correction=1 (PyTorch's
    name) or unbiased=True for PyTorch's default. A divisor of 0 or less gives inf or nan."""
    return Variance.apply(a, axis=axis, keepdims=keepdims,
                          correction=_correction(ddof, correction, unbiased))


@torch_names
def std(a, axis=None, keepdims=False, ddof=None, *, correction=None, unbiased=None):
    """sqrt(var(a)): the same divisor and the same default (ddof=0) as `var`."""
    return Variance.apply(a, axis=axis, keepdims=keepdims,
                          correction=_correction(ddof, correction, unbiased), root=True)


def _correction(ddof, correction, unbiased):
    """The one divisor correction out of NumPy's ddof= and PyTorch's correction= / unbiased=."""
    given = {name: v for name, v in (("ddof", ddof), ("correction", correction),
                                     ("unbiased", unbiased)) if v is not None}
    if len(given) > 1:
        raise TypeError(f"var/std: pass one of ddof=, correction=, unbiased=, not {sorted(given)}")
    return int(given.popitem()[1]) if given else 0


@torch_names
def argmax(a, axis=None, keepdims=False):
    """Index of the largest element (the first of ties), over the flattened tensor when axis is
    None: an integer tensor, outside the graph."""
    return _arg(a, axis, keepdims, "argmax")


@torch_names
def argmin(a, axis=None, keepdims=False):
    """Index of the smallest element (the first of ties); see argmax."""
    return _arg(a, axis, keepdims, "argmin")


def _arg(a, axis, keepdims, name):
    xp = get_array_module(a.data)
    data = a.data if a.ndim else a.data.reshape(1)  # a 0-d tensor: index 0 along axis 0 or -1
    if axis is not None:
        normalize_axes(axis, a.ndim)  # the range check
        axis = axis % data.ndim
    out = xp.asarray(getattr(xp, name)(data, axis=axis, keepdims=keepdims), dtype=xp.int64)
    return Tensor._make(out if a.ndim else out.reshape(()), False, None)


# --- shapes ---------------------------------------------------------------------------------------
def reshape(a, shape): return Reshape.apply(a, shape=tuple(shape))
def permute(a, axes): return Permute.apply(a, axes=tuple(axes))
def getitem(a, index): return GetItem.apply(a, index=index)


def expand(a, shape):
    """Broadcast `a` to `shape` (a view); -1 keeps a's size on that axis, as in PyTorch."""
    lead = len(shape) - a.ndim  # shapes align from the right; new axes come first
    shape = tuple(a.shape[i - lead] if n == -1 and i >= lead else n for i, n in enumerate(shape))
    return Expand.apply(a, shape=shape)


def transpose(a, axis0=-2, axis1=-1):
    axes = list(range(a.ndim))
    axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
    return permute(a, axes)


def broadcast_to(a, shape): return expand(a, shape)


@torch_names
def unsqueeze(a, axis):
    shape = list(a.shape)
    shape.insert(axis % (a.ndim + 1), 1)
    return reshape(a, shape)


@torch_names
def squeeze(a, axis=None):
    """Drop size-1 axes: all of them, or those of `axis` (an int or tuple) that have size 1.
    Naming an axis of another size leaves it, as in PyTorch (NumPy raises)."""
    axes = normalize_axes(axis, a.ndim)
    return reshape(a, [n for i, n in enumerate(a.shape) if not (i in axes and n == 1)])


def flatten(a, start_dim=0, end_dim=-1):
    """Merge axes start_dim..end_dim (inclusive) into one; a 0-d tensor becomes shape (1,)."""
    if a.ndim == 0:
        return reshape(a, (1,))
    start, end = start_dim % a.ndim, end_dim % a.ndim
    return reshape(a, a.shape[:start] + (math.prod(a.shape[start:end + 1]),) + a.shape[end + 1:])


@torch_names
def flip(a, axis=None):
    """Reverse the order of elements along `axis` (an int or tuple; every axis when None)."""
    axes = normalize_axes(axis, a.ndim)
    return getitem(a, tuple(slice(None, None, -1) if i in axes else slice(None) for i in range(a.ndim)))


def repeat(a, sizes):
    """Tile `a` sizes[i] times along axis i (PyTorch's repeat, NumPy's tile; len(sizes) >= a.ndim,
    extra sizes add leading axes). As a view and a reshape: (n,) -> (1, n) -> expand (r, n) ->
    (r * n,), so the gradient of each copy adds up in the engine's unbroadcast."""
    sizes = tuple(sizes)
    if len(sizes) < a.ndim:
        raise ValueError(f"repeat: {len(sizes)} sizes for a tensor of {a.ndim} dimensions")
    shape = (1,) * (len(sizes) - a.ndim) + a.shape
    spread = reshape(a, [m for n in shape for m in (1, n)])           # (1, n0, 1, n1, ...)
    spread = expand(spread, [m for r, n in zip(sizes, shape) for m in (r, n)])   # (r0, n0, ...)
    return reshape(spread, [r * n for r, n in zip(sizes, shape)])


def take(a, indices, axis=0):
    """a's entries along `axis` at integer `indices` (a tensor or array); the embedding lookup."""
    indices = _index_array(indices, "take")   # where it lives: checked there by Take
    return Take.apply(a, indices=indices, axis=axis)


def gather(a, axis, index):
    """out[i][j] = a[i][index[i][j]] for axis=1 (PyTorch's gather, NumPy's take_along_axis)."""
    return Gather.apply(a, _index_array(index, "gather", a.device), axis=axis)


def _index_array(indices, name, device=None):
    """An integer array from a tensor, array or list, on `device` (None: where it lives)."""
    indices = as_array(indices, device)
    if indices.dtype.kind not in "iu":
        raise ValueError(f"{name}: indices must be integers, got {indices.dtype}")
    return indices


def tril(a, diagonal=0):
    """a with the elements above the `diagonal`-th diagonal of its last two axes set to 0."""
    return _triangle(a, diagonal, lower=True)


def triu(a, diagonal=0):
    """a with the elements below the `diagonal`-th diagonal of its last two axes set to 0."""
    return _triangle(a, diagonal, lower=False)


def _triangle(a, diagonal, lower):
    xp = get_array_module(a.data)
    n, m = a.shape[-2:]
    j_minus_i = xp.arange(m)[None, :] - xp.arange(n)[:, None]              # (n, m)
    keep = j_minus_i <= diagonal if lower else j_minus_i >= diagonal
    return where(keep, a, a.dtype.type(0))


@torch_names
def concatenate(tensors, axis=0): return Concatenate.apply(*tensors, axis=axis)


@torch_names
def stack(tensors, axis=0):
    """Join tensors of one shape along a new axis."""
    return concatenate([unsqueeze(t, axis) for t in tensors], axis)


@torch_names
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


@torch_names
def chunk(a, chunks, axis=0):
    """Cut `a` into `chunks` pieces of ceil(n / chunks) along `axis`, the last one shorter, as in
    PyTorch (which may return fewer pieces, e.g. 6 into 4 gives 2, 2, 2)."""
    return split(a, builtins.max(-(-a.shape[axis] // chunks), 1), axis)


def pad(a, pad, value=0.0):
    """Add `value` around `a`. `pad` lists (before, after) widths from the LAST axis backwards, as
    in PyTorch's F.pad: (1, 2) pads the last axis, (1, 2, 0, 3) the last two. Negative widths crop."""
    if len(pad) % 2 or len(pad) // 2 > a.ndim:
        raise ValueError(f"pad: {tuple(pad)} must be (before, after) pairs for at most {a.ndim} axes")
    pairs = [tuple(pad[i:i + 2]) for i in range(0, len(pad), 2)][::-1]   # first axis first
    return Pad.apply(a, widths=[(0, 0)] * (a.ndim - len(pairs)) + pairs, value=value)


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
@torch_names
def softmax(x, axis=-1): return Softmax.apply(x, axis=axis)
@torch_names
def log_softmax(x, axis=-1): return LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, targets, ignore_index=-100, *, weight=None, reduction="mean",
                  label_smoothing=0.0, axis=-1):
    """Cross-entropy of `logits` with the classes along `axis` against `targets`.

    The classes lie on the LAST axis by default, minitx's (..., C) layout for a Transformer's
    (B, N, vocab) logits; axis=1 is PyTorch's (N, C, d1, ...) layout. `targets` are class
    indices (the logits' shape without the class axis; `ignore_index` marks positions that count
    nowhere) or class probabilities (the logits' shape; a tensor of them gets a gradient).
    weight: per-class weights; label_smoothing: eps in (1 - eps) target + eps / C;
    reduction: "mean" (over counted targets, weighted: nan when none counts), "sum" or "none".
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"cross_entropy label_smoothing must be in [0, 1], got {label_smoothing}")
    if not (isinstance(targets, Tensor) and targets.dtype.kind == "f"):
        targets = as_array(targets)
    probabilities = targets.dtype.kind == "f"
    if not probabilities:  # class indices: checked where they live (free on the host), then moved
        if targets.dtype.kind not in "iu":
            raise ValueError(f"cross_entropy: targets must be integers or probabilities, got {targets.dtype}")
        check_range(get_array_module(targets).where(targets != ignore_index, targets, 0), 0,
                    logits.shape[axis], f"cross_entropy: targets (other than ignore_index={ignore_index})")
    if not isinstance(targets, Tensor):
        targets = as_array(targets, logits.device)
    axis = axis % logits.ndim
    if axis != logits.ndim - 1:  # classes last: a view, not a copy
        order = [i for i in range(logits.ndim) if i != axis] + [axis]
        logits = permute(logits, order)
        if probabilities:
            targets = permute(targets, order) if isinstance(targets, Tensor) else targets.transpose(order)
    expected = logits.shape if probabilities else logits.shape[:-1]
    if tuple(targets.shape) != expected:
        raise ValueError(f"cross_entropy: targets of shape {tuple(targets.shape)} do not match logits "
                         f"of shape {logits.shape} (expected class indices of shape "
                         f"{logits.shape[:-1]} or probabilities of shape {logits.shape})")
    n_class = logits.shape[-1]
    if weight is not None:
        weight = as_array(weight, logits.device).astype(logits.dtype, copy=False)
    loss = CrossEntropy.apply(reshape(logits, (-1, n_class)),
                              reshape(targets, (-1, n_class)) if isinstance(targets, Tensor)
                              else targets.reshape((-1, n_class) if probabilities else (-1,)),
                              weight, ignore_index=ignore_index, reduction=reduction,
                              label_smoothing=label_smoothing)
    return reshape(loss, logits.shape[:-1]) if reduction == "none" else loss


def layer_norm(x, weight=None, bias=None, eps=1e-5, kernels="auto", normalized_shape=None):
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing axes `normalized_shape`
    (PyTorch's argument; by default the shape of weight, else the last axis)."""
    return _normalize(x, weight, bias, eps, True, kernels, normalized_shape)


def rms_norm(x, weight=None, eps=1e-6, kernels="auto", normalized_shape=None):
    """x / sqrt(mean(x^2) + eps) * weight over the trailing axes `normalized_shape` (as layer_norm)."""
    return _normalize(x, weight, None, eps, False, kernels, normalized_shape)


def _normalize(x, weight, bias, eps, center, kernels, normalized_shape):
    """Normalize over the trailing axes: the fused op works on the last axis, so several trailing
    axes are first viewed as one (and weight and bias with them)."""
    shape = (tuple(normalized_shape) if normalized_shape is not None
             else tuple(weight.shape) if weight is not None else x.shape[-1:])
    if not shape or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"normalized shape {shape} is not the trailing shape of {x.shape}")
    if len(shape) == 1:
        return Normalize.apply(x, weight, bias, eps=eps, center=center, kernels=kernels)
    flat = lambda t: None if t is None else reshape(t, (math.prod(shape),))
    y = Normalize.apply(reshape(x, x.shape[:x.ndim - len(shape)] + (math.prod(shape),)),
                        flat(weight), flat(bias), eps=eps, center=center, kernels=kernels)
    return reshape(y, x.shape)


def dropout(x, p=0.5, training=True):
    """Inverted dropout; the identity when p == 0 or not training."""
    if not training or p == 0:
        return x
    return InvertedDropout.apply(x, p=p)


def linear(x, weight, bias=None):
    """x @ weight^T + bias, weight (d_out, d_in) as in the papers' W x; x (..., d_in) -> (..., d_out)."""
    return Affine.apply(x, weight, bias)


def scaled_dot_product_attention(q, k, v, *, causal=False, mask=None, attn_mask=None,
                                 dropout_p=0.0, window=None, prefix=None, scale=None,
                                 kernels="auto"):
    """Attention of queries q (B, H, Nq, D) over keys k and values v (B, Hkv, Nk, D) -> (B, H, Nq, D).

    Hkv must divide H: each group of H / Hkv query heads shares one key/value head (grouped-query
    attention; Hkv = 1 is multi-query). Query i sits at position i + Nk - Nq, so a query decoded
    against a KV cache sees everything before it.
      causal=True   key j is visible to query i only if j <= i's position
      mask          boolean (B, Nk), False for padding keys that no query may see
      window=W      (with causal) only the W most recent keys, the query's own included
      prefix=P      (with causal) keys j < P are visible to all queries: the prefix-LM mask,
                    bidirectional over the first P tokens and causal after them
      attn_mask     as in PyTorch: a float tensor broadcast to (B, H, Nq, Nk) added to the scaled
                    scores (ALiBi, a learned relative-position bias: it gets a gradient), or a
                    boolean one, True where a query may attend
      dropout_p     dropout on the attention probabilities, applied whenever > 0 (as PyTorch's
                    function does; a layer passes 0 in eval mode)
    A query that sees no key at all gets zeros. `kernels` picks the kernel: "auto" (the fused kernel
    of the tensors' device where it pays), "fused" or "reference" (plain einsum + softmax).
    """
    if mask is not None:
        mask = as_array(mask, q.device)
    if attn_mask is not None and attn_mask.dtype == bool:
        attn_mask = get_array_module(q.data).where(as_array(attn_mask, q.device), q.dtype.type(0),
                                                   q.dtype.type(-math.inf))
    elif attn_mask is not None and not isinstance(attn_mask, Tensor):
        attn_mask = as_array(attn_mask, q.device).astype(q.dtype, copy=False)
    seed = random_seed() if dropout_p else 0
    return Attention.apply(q, k, v, mask, attn_mask, causal=causal, window=window, prefix=prefix,
                           scale=scale, dropout=dropout_p, seed=seed, kernels=kernels)
