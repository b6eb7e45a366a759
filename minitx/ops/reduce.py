"""Reductions over axes: sum, prod, max/min, variance and the stable log-sum-exp; and the
running sum (cumsum). mean is composed from sum.

A reduction's backward spreads the output gradient back over the reduced axes. With
keepdims=False those axes were dropped, so the gradient first gets them back as size-1 axes
(`_keep_axes`) and then broadcasts.
"""
import math

import numpy

from ..autograd import Function
from ..backend import get_array_module
from .elementwise import quiet


def normalize_axes(axis, ndim):
    """axis (None, int or tuple, negatives allowed) as a sorted tuple of non-negative ints.

    A 0-d tensor accepts axis 0 and -1, as in PyTorch (it has one element, as if of shape (1,)),
    and reducing over it leaves it as it is: the result is ().
    """
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor of {ndim} dimensions")
        out.append(a % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {axis}")
    return tuple(sorted(out)) if ndim else ()


def count(shape, axes):
    """How many elements a reduction over `axes` of `shape` combines."""
    return math.prod(shape[ax] for ax in axes)


def _keep_axes(grad, axes, keepdims):
    """Re-insert the reduced axes (size 1) so `grad` broadcasts against the input."""
    if keepdims or not axes:
        return grad
    xp = get_array_module(grad)
    return xp.expand_dims(grad, axes)


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes, ctx.keepdims, ctx.shape = normalize_axes(axis, a.ndim), keepdims, a.shape
        return a.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        return xp.broadcast_to(_keep_axes(grad, ctx.axes, ctx.keepdims), ctx.shape)


class Extremum(Function):
    """max (kind="max") or min over axes. The gradient goes to the elements equal to the extremum,
    shared equally between ties (so it is the same whichever of the tied elements one picks)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False, kind="max"):
        ctx.axes, ctx.keepdims, ctx.a = normalize_axes(axis, a.ndim), keepdims, a
        if a.size == 0:
            raise ValueError(f"{kind} of an empty tensor")
        reduce = a.max if kind == "max" else a.min
        ctx.out = reduce(axis=ctx.axes, keepdims=True)
        return ctx.out if keepdims else ctx.out.squeeze(ctx.axes)

    @staticmethod
    def backward(ctx, grad):
        hit = ctx.a == ctx.out
        share = hit / hit.sum(axis=ctx.axes, keepdims=True)
        return _keep_axes(grad, ctx.axes, ctx.keepdims) * share


class LogSumExp(Function):
    """log(sum(exp(a))) over axes, computed as m + log(sum(exp(a - m))) with m the maximum,
    so logits of 1e4 do not overflow. A slice of all -inf gives -inf."""

    @staticmethod
    def forward(ctx, a, axis=-1, keepdims=False):
        xp = get_array_module(a)
        axes = normalize_axes(axis, a.ndim)
        m = a.max(axis=axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        e = xp.exp(a - m)
        s = e.sum(axis=axes, keepdims=True)
        with quiet():  # log(0) = -inf is the right answer for a slice of all -inf
            out = m + xp.log(s)
        ctx.axes, ctx.keepdims, ctx.softmax = axes, keepdims, e / xp.where(s > 0, s, 1)
        return out if keepdims else out.squeeze(axes)

    @staticmethod
    def backward(ctx, grad):
        # d/da logsumexp(a) = softmax(a)
        return _keep_axes(grad, ctx.axes, ctx.keepdims) * ctx.softmax


class Prod(Function):
    """Product over axes. Its gradient is the product of the *other* elements, computed without
    dividing by the element itself, so it is exact where elements are 0."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes, ctx.keepdims, ctx.a = normalize_axes(axis, a.ndim), keepdims, a
        return a.prod(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        # y = prod_k a_k:  dy/da_j = (prod_{k<j} a_k) (prod_{k>j} a_k), the product of the others
        a, axes = ctx.a, ctx.axes
        rest = tuple(i for i in range(a.ndim) if i not in axes)
        flat = a.transpose(rest + axes).reshape(tuple(a.shape[i] for i in rest) + (count(a.shape, axes),))
        before = _product_before(flat)                             # (..., n): prod_{k<j} a_k
        after = _product_before(flat[..., ::-1])[..., ::-1]         # (..., n): prod_{k>j} a_k
        others = (before * after).reshape(tuple(a.shape[i] for i in rest + axes))
        return _keep_axes(grad, axes, ctx.keepdims) * others.transpose(numpy.argsort(rest + axes))


def _product_before(x):
    """[1, x0, x0 x1, ...]: the product of the elements before each one along the last axis."""
    xp = get_array_module(x)
    one = xp.ones(x.shape[:-1] + (1,), x.dtype)
    return xp.cumprod(xp.concatenate([one, x], -1), -1)[..., :-1]


class Variance(Function):
    """sum((a - mean(a))^2) / (n - correction) over axes, or its square root (root=True, the
    standard deviation). correction=0 is the population variance, 1 the unbiased estimate.
    A divisor n - correction <= 0 gives inf or nan, as the formula does (and as PyTorch does)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False, correction=0, root=False):
        xp = get_array_module(a)
        axes = normalize_axes(axis, a.ndim)
        n = count(a.shape, axes)
        divisor = max(n - correction, 0)
        with quiet():  # an empty axis (n = 0) or a divisor of 0: nan and inf are the answers
            ctx.d = a - a.sum(axis=axes, keepdims=True) / n
            var = (ctx.d * ctx.d).sum(axis=axes, keepdims=True) / divisor
            out = xp.sqrt(var) if root else var
        ctx.axes, ctx.keepdims, ctx.divisor, ctx.root, ctx.out = axes, keepdims, divisor, root, out
        return out if keepdims else out.reshape(tuple(s for i, s in enumerate(a.shape) if i not in axes))

    @staticmethod
    def backward(ctx, grad):
        # v = sum(d^2) / divisor, d = a - mean(a):  dv/da = 2 d / divisor (the mean's own
        # gradient term, -2 sum(d) / (n divisor), is 0 since sum(d) = 0)
        # s = sqrt(v):  ds/da = dv/da / (2 s) = d / (divisor s), taken as 0 where s = 0 (PyTorch's
        # choice: a constant slice has no slope to follow)
        xp = get_array_module(grad)
        grad = _keep_axes(grad, ctx.axes, ctx.keepdims)
        with quiet():
            if ctx.root:
                scale = xp.where(ctx.out == 0, 0, 1 / (ctx.divisor * ctx.out))
            else:
                scale = 2 / ctx.divisor if ctx.divisor else math.inf
            return grad * scale * ctx.d


class CumSum(Function):
    """Running sum along one axis: out[i] = a[0] + ... + a[i]."""

    @staticmethod
    def forward(ctx, a, axis):
        ctx.axis = axis
        return get_array_module(a).cumsum(a, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        # out[i] = sum_{j<=i} a[j]:  dL/da[j] = sum_{i>=j} g[i], a running sum from the end
        backwards = (slice(None),) * (ctx.axis % grad.ndim) + (slice(None, None, -1),)
        return grad[backwards].cumsum(axis=ctx.axis)[backwards]
