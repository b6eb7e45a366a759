"""Ops that move elements around without arithmetic: reshape, permute, expand, indexing, take,
gather, concatenate, pad.

Their backward moves the gradient back to where each element came from. Where one input
element feeds several outputs (expand, take with repeated indices) the gradients add up.
"""
import numpy

from ..autograd import Function
from ..backend import get_array_module, move_array


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


def _index_arrays(index, xp):
    """The index with Tensors replaced by their arrays and host index arrays copied to xp's
    device (backward scatters with them there)."""
    from ..tensor import Tensor
    if isinstance(index, tuple):
        return tuple(_index_arrays(i, xp) for i in index)
    index = index.data if isinstance(index, Tensor) else index
    return xp.asarray(index) if isinstance(index, numpy.ndarray) else index


def check_index(shape, index):
    """IndexError unless `index` fits an array of `shape`, checked on the host: NumPy indexes a
    zero-stride stand-in of that shape (no memory) and raises where an index is out of range.
    CuPy instead wraps out-of-range indices around silently. A device index array costs one
    transfer to the host; host arrays, ints and slices cost nothing on the GPU."""
    def host(i):
        if isinstance(i, tuple):
            return tuple(host(j) for j in i)
        return move_array(i, "cpu") if hasattr(i, "shape") else i
    probe = numpy.lib.stride_tricks.as_strided(numpy.zeros(1, bool), shape, (0,) * len(shape))
    probe[host(index)]


def _is_basic(index):
    """True for indices made only of ints, slices, None and Ellipsis (each element picked once)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, numpy.integer, slice, type(None), type(Ellipsis))) for i in items)


def torch_order(index):
    """Split `index` into (outer, inner) with a[index] in PyTorch's axis order = a[outer][inner].

    NumPy and PyTorch agree except when integers and index arrays are mixed: NumPy counts the
    integers as index arrays, so in x[1, :, d] the two are apart and the picked axis goes first;
    PyTorch applies the integers first (as basic indexing) and keeps d's axis where d stood.
    `outer` applies the integers (a view), `inner` the rest; outer is () when there is nothing to
    split, so the two orders differ only where they must.
    """
    items = index if isinstance(index, tuple) else (index,)
    is_int = [isinstance(i, (int, numpy.integer)) for i in items]
    if not any(is_int) or _is_basic(index):
        return (), index
    outer, inner = [], []
    for i, integer in zip(items, is_int):
        if integer:             # applied first; its axis is gone before the arrays apply
            outer.append(i)
        elif i is None:         # the new axis is made first, then kept
            outer.append(None)
            inner.append(slice(None))
        elif i is Ellipsis:
            outer.append(i)
            inner.append(i)
        elif isinstance(i, slice):
            outer.append(slice(None))
            inner.append(i)
        else:                   # an index array; a boolean one spans one axis per dimension
            array = i if hasattr(i, "dtype") else numpy.asarray(i)
            outer.extend([slice(None)] * (array.ndim if array.dtype == bool else 1))
            inner.append(i)
    return tuple(outer), tuple(inner)


class GetItem(Function):
    """a[index], with NumPy's basic and advanced indexing, axes placed as PyTorch places them
    (see `torch_order`)."""

    @staticmethod
    def forward(ctx, a, index):
        index = _index_arrays(index, get_array_module(a))
        ctx.outer, ctx.inner = torch_order(index)
        ctx.shape, ctx.dtype = a.shape, a.dtype
        try:
            check_index(a.shape, index)
            return a[ctx.outer][ctx.inner]
        except IndexError as error:  # stays an IndexError: `for row in t` stops on it
            raise IndexError(f"index {index!r} does not fit shape {a.shape}: {error}") from None

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        da = xp.zeros(ctx.shape, ctx.dtype)
        view = da[ctx.outer]  # basic indexing: a view, so writes land in da
        if _is_basic(ctx.inner):
            view[ctx.inner] = grad  # each element was picked at most once
        else:
            xp.add.at(view, ctx.inner, grad)  # repeated indices add up
        return da


def check_range(indices, low, high, what, where=""):
    """ValueError unless low <= indices < high. On the host for host arrays (free); a device
    array costs one transfer, so the training step passes its ids and targets from the host."""
    if not indices.size:
        return
    bounds = get_array_module(indices).stack([indices.min(), indices.max()])
    smallest, largest = move_array(bounds, "cpu").tolist()
    if smallest < low or largest >= high:
        raise ValueError(f"{what} must lie in [{max(low, 0)}, {high}){where}, got values from "
                         f"{smallest} to {largest}")


class Take(Function):
    """Rows of `a` along `axis` picked by an integer array: the embedding lookup.

    Backward adds each output row's gradient into the row it came from; a token that appears
    several times in a batch collects all of them.
    """

    @staticmethod
    def forward(ctx, a, indices, axis=0):
        xp = get_array_module(a)
        axis = axis % a.ndim
        check_range(indices, -a.shape[axis], a.shape[axis], "indices",
                    f" for axis {axis} of shape {a.shape}")
        indices = xp.asarray(indices)
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


def along_axis(index, axis):
    """The full index that picks a[i0, .., index[i0, .., ik], .., ik] for every position of
    `index`: `index` itself at `axis`, and at every other axis an arange shaped to broadcast."""
    xp = get_array_module(index)
    grid = [xp.arange(n).reshape([n if d == ax else 1 for d in range(index.ndim)])
            for ax, n in enumerate(index.shape)]
    grid[axis] = index
    return tuple(grid)


class Gather(Function):
    """out[..., j, ...] = a[..., index[..., j, ...], ...] along `axis` (PyTorch's gather; NumPy's
    take_along_axis). index has a's number of axes and is no larger than a on the others."""

    @staticmethod
    def forward(ctx, a, index, axis):
        if index.ndim != a.ndim or any(m > n for d, (m, n) in enumerate(zip(index.shape, a.shape))
                                       if d != axis % a.ndim):
            raise ValueError(f"gather: index of shape {index.shape} does not fit input {a.shape} "
                             f"(same number of axes, no larger except along axis {axis})")
        check_range(index, -a.shape[axis], a.shape[axis], "gather: index", f" for axis {axis} of {a.shape}")
        ctx.where, ctx.shape = along_axis(index, axis % a.ndim), a.shape
        return a[ctx.where]

    @staticmethod
    def backward(ctx, grad):
        # out = a[where]:  dL/da = the gradients added back where they were picked (repeats add up)
        xp = get_array_module(grad)
        da = xp.zeros(ctx.shape, grad.dtype)
        xp.add.at(da, ctx.where, grad)
        return da, None


class Pad(Function):
    """a with (before, after) elements of `value` added on each axis; a negative width crops."""

    @staticmethod
    def forward(ctx, a, widths, value=0.0):
        # for each axis: the part of a that is kept (source) and where it lands in the output
        ctx.source, ctx.target, shape = [], [], []
        for n, (before, after) in zip(a.shape, widths):
            kept = max(n - max(-before, 0) - max(-after, 0), 0)
            shape.append(kept + max(before, 0) + max(after, 0))
            ctx.source.append(slice(max(-before, 0), max(-before, 0) + kept))
            ctx.target.append(slice(max(before, 0), max(before, 0) + kept))
        ctx.source, ctx.target, ctx.shape = tuple(ctx.source), tuple(ctx.target), a.shape
        out = get_array_module(a).full(shape, value, a.dtype)
        out[ctx.target] = a[ctx.source]
        return out

    @staticmethod
    def backward(ctx, grad):
        # out[target] = a[source]:  dL/da[source] = g[target], 0 on the cropped elements
        da = get_array_module(grad).zeros(ctx.shape, grad.dtype)
        da[ctx.source] = grad[ctx.target]
        return da
