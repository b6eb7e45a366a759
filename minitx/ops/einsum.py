"""einsum: the one contraction op. matmul, Linear and the attention scores are all einsum.

Forward. Operands are contracted two at a time, left to right. Each pairwise contraction is
a batched matrix product, so it runs on BLAS (cuBLAS on the GPU):
  letters in both operands and kept      -> batch axes      (b)
  letters in both operands, not kept     -> summed by BLAS  (k)
  letters in one operand and kept        -> its rows/cols   (m for the left, n for the right)
  letters in one operand, not kept       -> summed before the product
  left  -> transpose to (b, m, k), reshape to (B, M, K)
  right -> transpose to (b, k, n), reshape to (B, K, N)
  (B, M, K) @ (B, K, N) -> (B, M, N) -> reshape to (b, m, n)
A letter is "kept" if the output or a later operand still needs it. The plan (which axes go
where) depends only on the subscripts and the shapes, so it is worked out once and cached.
A letter repeated within one operand ("ii->i", "ii->") first takes that operand's diagonal (see
`diagonal`); a size-0 axis is an axis like any other.

Backward is einsum again: for out = einsum("ij,jk->ik", a, b), dL/da = einsum("ik,jk->ij", g, b).
In general, operand i's gradient is the einsum of the output gradient with all other operands,
with operand i's subscripts as the output; letters that only operand i had (summed away in the
forward) come back by broadcasting.
"""
import functools
import string

import numpy

from ..autograd import Function
from ..backend import get_array_module


@functools.lru_cache(maxsize=4096)
def parse(subscripts, shapes):
    """Explicit subscripts for each operand and the output, with '...' spelled out as letters.

    Checks the subscripts against the operands' ranks and sizes, and returns
    (input_subs, output_sub, sizes) where sizes maps each letter to its (broadcast) size.
    """
    subscripts = subscripts.replace(" ", "")
    inputs, arrow, output = subscripts.partition("->")
    input_subs = inputs.split(",")
    if len(input_subs) != len(shapes):
        raise ValueError(f"einsum {subscripts!r} names {len(input_subs)} operands, got {len(shapes)}")
    used = set(subscripts) - set(".,->")
    free = [c for c in string.ascii_letters if c not in used]
    n_ellipsis = 0
    for sub, shape in zip(input_subs, shapes):
        if "..." in sub:
            n_ellipsis = max(n_ellipsis, len(shape) - (len(sub) - 3))
    ellipsis = "".join(free[:n_ellipsis])

    explicit = []
    for sub, shape in zip(input_subs, shapes):
        if "..." in sub:
            width = len(shape) - (len(sub) - 3)
            if width < 0:
                raise ValueError(f"einsum operand {sub!r} has more letters than its {len(shape)} dimensions")
            sub = sub.replace("...", ellipsis[n_ellipsis - width:])
        if not all(c in string.ascii_letters for c in sub):
            raise ValueError(f"einsum subscripts may only use letters and '...', got {sub!r}")
        if len(sub) != len(shape):
            raise ValueError(f"einsum operand {sub!r} has {len(sub)} letters but shape {shape}")
        explicit.append(sub)

    if arrow:
        output = output.replace("...", ellipsis)
    else:  # implicit output: '...' then the letters that appear exactly once, sorted
        counts = "".join(explicit)
        output = ellipsis + "".join(sorted(c for c in set(counts) - set(ellipsis) if counts.count(c) == 1))
    if len(set(output)) != len(output) or not set(output) <= set("".join(explicit)):
        raise ValueError(f"einsum output {output!r} must use distinct letters from the inputs")

    sizes = {}  # a letter's sizes must agree, or be 1 (broadcast); 0 is a size like any other
    for sub, shape in zip(explicit, shapes):
        for c, n in zip(sub, shape):
            if sizes.get(c, 1) == 1:
                sizes[c] = n
            elif n not in (1, sizes[c]):
                raise ValueError(f"einsum {subscripts!r}: letter {c!r} has sizes {sizes[c]} and {n} "
                                 f"(operand shapes {list(shapes)})")
    for sub, shape in zip(explicit, shapes):
        if len(set(sub)) != len(sub) and shape != tuple(sizes[c] for c in sub):
            raise ValueError(f"einsum operand {sub!r} repeats a letter over axes of sizes {shape}: "
                             "a diagonal needs equal sizes")
    return explicit, output, sizes


def distinct(sub):
    """The letters of `sub`, each once, in order of first appearance: "iij" -> "ij"."""
    return "".join(dict.fromkeys(sub))


def diagonal(sub, shape, xp):
    """The index that picks an operand's diagonal over the letters `sub` repeats: for "iij",
    a[i, i, j] for every (i, j), as index arrays that broadcast to the axes `distinct(sub)`.
    Forward reads a[index]; backward writes the gradient back to the same places."""
    letters = distinct(sub)
    grids = {c: xp.arange(shape[sub.index(c)]).reshape([shape[sub.index(c)] if d == c else 1
                                                         for d in letters]) for c in letters}
    return tuple(grids[c] for c in sub)


@functools.lru_cache(maxsize=4096)
def plan(subscripts, shapes):
    """The steps that contract operands of these shapes: see the module docstring."""
    subs, output, sizes = parse(subscripts, shapes)
    diagonals = tuple(distinct(sub) != sub for sub in subs)
    shapes = [tuple(shape[sub.index(c)] for c in distinct(sub)) for sub, shape in zip(subs, shapes)]
    subs = [distinct(sub) for sub in subs]  # from here on, each operand's diagonal is taken
    broadcast = tuple(tuple(sizes[c] for c in sub) if tuple(sizes[c] for c in sub) != shape else None
                      for sub, shape in zip(subs, shapes))
    steps, left = [], subs[0]
    for i in range(1, len(subs)):
        right = subs[i]
        keep = set(output).union(*subs[i + 1:])
        step, left = _pair_step(left, right, keep, sizes)
        steps.append(step)
    # what is left: sum the letters the output does not have, then put the rest in output order
    drop = tuple(j for j, c in enumerate(left) if c not in output)
    left = "".join(c for c in left if c in output)
    final = tuple(left.index(c) for c in output)
    return diagonals, output, broadcast, tuple(steps), drop, final


def _pair_step(a, b, keep, sizes):
    """Plan one pairwise contraction of operands with subscripts a and b."""
    sum_a = tuple(j for j, c in enumerate(a) if c not in b and c not in keep)
    sum_b = tuple(j for j, c in enumerate(b) if c not in a and c not in keep)
    a = "".join(c for c in a if c in b or c in keep)
    b = "".join(c for c in b if c in a or c in keep)
    batch = [c for c in a if c in b and c in keep]
    contract = [c for c in a if c in b and c not in keep]
    rows = [c for c in a if c not in b]
    cols = [c for c in b if c not in a]
    size = lambda letters: int(numpy.prod([sizes[c] for c in letters], dtype=numpy.int64))
    perm_a = tuple(a.index(c) for c in batch + rows + contract)
    perm_b = tuple(b.index(c) for c in batch + contract + cols)
    shape_a = (size(batch), size(rows), size(contract))
    shape_b = (size(batch), size(contract), size(cols))
    if shape_a[0] == 1:  # no batch: a plain 2-D product is one BLAS call with less overhead
        shape_a, shape_b = shape_a[1:], shape_b[1:]
    out = "".join(batch + rows + cols)
    out_shape = tuple(sizes[c] for c in out)
    return (sum_a, perm_a, shape_a, sum_b, perm_b, shape_b, out_shape), out


def contract(subscripts, *arrays):
    """einsum on raw arrays (numpy or cupy) through cached BLAS-shaped steps."""
    diagonals, output, broadcast, steps, drop, final = plan(subscripts, tuple(a.shape for a in arrays))
    xp = get_array_module(*arrays)
    if any(diagonals):
        subs = parse(subscripts, tuple(a.shape for a in arrays))[0]
        arrays = [a[diagonal(sub, a.shape, xp)] if diag else a
                  for a, sub, diag in zip(arrays, subs, diagonals)]
    arrays = [a if shape is None else xp.broadcast_to(a, shape) for a, shape in zip(arrays, broadcast)]
    left = arrays[0]
    for right, (sum_a, perm_a, shape_a, sum_b, perm_b, shape_b, out_shape) in zip(arrays[1:], steps):
        if sum_a:
            left = left.sum(axis=sum_a)
        if sum_b:
            right = right.sum(axis=sum_b)
        left = left.transpose(perm_a).reshape(shape_a)
        right = right.transpose(perm_b).reshape(shape_b)
        left = xp.matmul(left, right).reshape(out_shape)
    if drop:
        left = left.sum(axis=drop)
    return left.transpose(final)


class Einsum(Function):
    @staticmethod
    def forward(ctx, *arrays, subscripts):
        ctx.arrays, ctx.subscripts = arrays, subscripts
        return contract(subscripts, *arrays)

    @staticmethod
    def backward(ctx, grad):
        xp = get_array_module(grad)
        subs, output = parse(ctx.subscripts, tuple(a.shape for a in ctx.arrays))[:2]
        grads = []
        for i, (a, sub) in enumerate(zip(ctx.arrays, subs)):
            if not ctx.needs_grad[i]:
                grads.append(None)
                continue
            others = [s for j, s in enumerate(subs) if j != i]
            present = set(output).union(*others)
            letters = distinct(sub)
            target = "".join(c for c in letters if c in present)
            g = contract(",".join([output] + others) + "->" + target,
                         grad, *[x for j, x in enumerate(ctx.arrays) if j != i])
            if target != letters:  # letters only this operand had: their gradient is constant along them
                kept = [g.shape[target.index(c)] if c in target else 1 for c in letters]
                g = xp.broadcast_to(g.reshape(kept), [k if c in target else a.shape[sub.index(c)]
                                                      for c, k in zip(letters, kept)])
            if letters != sub:  # forward took the diagonal: the gradient goes back onto it, 0 elsewhere
                full = xp.zeros(a.shape, g.dtype)
                full[diagonal(sub, a.shape, xp)] = g
                g = full
            grads.append(g)
        return tuple(grads)
