"""Reductions over axes: sum, max/min and the stable log-sum-exp; mean and var are composed from them.

A reduction's backward spreads the output gradient back over the reduced axes. With
keepdims=False those axes were dropped, so the gradient first gets them back as size-1 axes
(`_keep_axes`) and then broadcasts.
"""
import contextlib

from ..autograd import Function
from ..backend import get_array_module


def normalize_axes(axis, ndim):
    """axis (None, int or tuple, negatives allowed) as a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor of {ndim} dimensions")
        out.append(a % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {axis}")
    return tuple(sorted(out))


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
        with _quiet(xp):  # log(0) = -inf is the right answer for a slice of all -inf
            out = m + xp.log(s)
        ctx.axes, ctx.keepdims, ctx.softmax = axes, keepdims, e / xp.where(s > 0, s, 1)
        return out if keepdims else out.squeeze(axes)

    @staticmethod
    def backward(ctx, grad):
        # d/da logsumexp(a) = softmax(a)
        return _keep_axes(grad, ctx.axes, ctx.keepdims) * ctx.softmax


def _quiet(xp):
    """Silence NumPy's divide-by-zero warning where -inf is the intended result."""
    return xp.errstate(divide="ignore") if hasattr(xp, "errstate") else contextlib.nullcontext()
