"""Ops that move elements around without arithmetic: reshape, permute, expand, indexing, take, concat.

Their backward moves the gradient back to where each element came from. Where one input
element feeds several outputs (expand, take with repeated indices) the gradients add up.
"""
import numpy

from ..autograd import Function
from ..backend import get_array_module


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape {a.shape} ({a.size} elements) to {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        if sorted(ax % max(a.ndim, 1) for ax in axes) != list(range(a.ndim)):
            raise ValueError(f"permute axes {tuple(axes)} are not a permutation of {a.ndim} axes")
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, grad):
        return grad.transpose(numpy.argsort([ax % grad.ndim for ax in ctx.axes]))


class Expand(Function):
    """Broadcast to a larger shape (a view); the engine's unbroadcast sums the gradient back."""

    @staticmethod
    def forward(ctx, a, shape):
        return get_array_module(a).broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, grad):
        return grad


def _index_arrays(index):
    """Replace Tensors inside an index by their arrays."""
    from ..tensor import Tensor
    if isinstance(index, tuple):
        return tuple(_index_arrays(i) for i in index)
    return index.data if isinstance(index, Tensor) else index


def _is_basic(index):
    """True for indices made only of ints, slices, None and Ellipsis (each element picked once)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


class GetItem(Function):
    """a[index], with NumPy's basic and advanced indexing."""

    @staticmethod
    def forward(ctx, a, index):
        ctx.index, ctx.shape, ctx.dtype = _index_arrays(index), a.shape, a.dtype
        try:
            return a[ctx.index]
        except IndexError as error:
            raise ValueError(f"index {index!r} does not fit shape {a.shape}: {error}") from None

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        da = xp.zeros(ctx.shape, ctx.dtype)
        if _is_basic(ctx.index):
            da[ctx.index] = grad  # each element was picked at most once
        else:
            xp.add.at(da, ctx.index, grad)  # repeated indices add up
        return da


class Take(Function):
    """Rows of `a` along `axis` picked by an integer array: the embedding lookup.

    Backward adds each output row's gradient into the row it came from; a token that appears
    several times in a batch collects all of them.
    """

    @staticmethod
    def forward(ctx, a, indices, axis=0):
        xp = get_array_module(a)
        axis = axis % a.ndim
        n = a.shape[axis]
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise ValueError(f"indices must lie in [0, {n}) for axis {axis} of shape {a.shape}, "
                             f"got values from {int(indices.min())} to {int(indices.max())}")
        ctx.indices, ctx.axis, ctx.shape = indices, axis, a.shape
        return xp.take(a, indices, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        axis, indices = ctx.axis, ctx.indices
        # move the looked-up axis to the front: grad (*before, *indices.shape, *after) -> (N, rest)
        k = indices.ndim
        grad = xp.moveaxis(grad, tuple(range(axis, axis + k)), tuple(range(k)))
        grad = grad.reshape(indices.size, -1)
        da = xp.zeros((ctx.shape[axis], grad.shape[1]), grad.dtype)
        if xp is numpy:
            _add_rows(da, indices.ravel(), grad)
        else:
            xp.add.at(da, indices.ravel(), grad)
        rest = ctx.shape[:axis] + ctx.shape[axis + 1:]
        return xp.moveaxis(da.reshape((ctx.shape[axis],) + rest), 0, axis)


def _add_rows(out, indices, rows):
    """out[indices[i]] += rows[i] for every i, repeated indices adding up: numpy.add.at(out,
    indices, rows), but sorted so that each run of equal indices is one numpy.add.reduceat
    (add.at handles one element at a time, about 20x slower for an embedding's gradient)."""
    if not len(indices):
        return
    indices = numpy.where(indices < 0, indices + len(out), indices)
    order = numpy.argsort(indices, kind="stable")
    ordered = indices[order]
    starts = numpy.flatnonzero(numpy.r_[True, ordered[1:] != ordered[:-1]])
    out[ordered[starts]] += numpy.add.reduceat(rows[order], starts, axis=0)


class Concatenate(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        xp = get_array_module(*arrays)
        ctx.axis = axis
        ctx.bounds = numpy.cumsum([a.shape[axis] for a in arrays])[:-1].tolist()
        return xp.concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        return tuple(get_array_module(grad).split(grad, ctx.bounds, axis=ctx.axis))
