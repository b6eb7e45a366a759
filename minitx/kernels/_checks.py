"""Argument handling shared by every attention implementation.

Each kernel module calls `check_forward` / `check_backward` first, so a bad shape or option gives
the same ValueError whichever kernel runs, and the kernels themselves can trust their inputs.
`kernel_options` turns the options into the plain arrays and ints the fused kernels take.
"""
import math
import operator
from typing import NamedTuple

import numpy


class AttentionShape(NamedTuple):
    """Sizes of one attention call: q is (B, H, Nq, D), k and v are (B, Hkv, Nk, D)."""
    B: int
    H: int
    Hkv: int
    Nq: int
    Nk: int
    D: int
    scale: float


def _check_int(name, value, smallest):
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < smallest:
        raise ValueError(f"{name} must be >= {smallest}, got {value}")
    return value


def check_forward(q, k, v, *, causal=False, key_mask=None, window=None, prefix=None, scale=None,
                  bias=None, dropout=0.0, seed=0):
    """Validate the arguments of `attention_forward`; return their AttentionShape.

    Raises ValueError naming the offending shapes or values.
    """
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim != 4:
            raise ValueError(f"{name} must have rank 4 (B, H, N, D), got shape {tuple(a.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} "
                         f"and v {tuple(v.shape)}")
    B, H, Nq, D = q.shape
    _, Hkv, Nk, _ = k.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)} and k, v {tuple(k.shape)} must agree on the batch "
                         f"size B and head size D")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"the number of query heads ({H}, q {tuple(q.shape)}) must be a multiple "
                         f"of the number of key/value heads ({Hkv}, k {tuple(k.shape)})")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype.kind != "f":
        raise ValueError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if key_mask is not None:
        if tuple(key_mask.shape) != (B, Nk):
            raise ValueError(f"key_mask must have shape (B, Nk) = {(B, Nk)}, got "
                             f"{tuple(key_mask.shape)}")
        if key_mask.dtype != numpy.bool_:
            raise ValueError(f"key_mask must be a bool array (True = may be attended), "
                             f"got dtype {key_mask.dtype}")
    if window is not None:
        if not causal:
            raise ValueError(f"window={window} needs causal=True")
        _check_int("window", window, 1)
    if prefix is not None:
        if not causal:
            raise ValueError(f"prefix={prefix} needs causal=True")
        _check_int("prefix", prefix, 0)
    if bias is not None:
        if bias.ndim > 4 or any(n not in (1, m) for n, m in zip(bias.shape[::-1], (Nk, Nq, H, B))):
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not broadcast to "
                             f"(B, H, Nq, Nk) = {(B, H, Nq, Nk)}")
        if bias.dtype != q.dtype:
            raise ValueError(f"bias must have the dtype of q ({q.dtype}), got {bias.dtype}")
    if not 0 <= dropout < 1:
        raise ValueError(f"attention dropout must be in [0, 1), got {dropout}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    return AttentionShape(B, H, Hkv, Nq, Nk, D, scale)


def check_backward(q, k, v, o, lse, do, **options):
    """Validate the arguments of `attention_backward`; return their AttentionShape."""
    shape = check_forward(q, k, v, **options)
    for name, a in (("o", o), ("do", do)):
        if tuple(a.shape) != tuple(q.shape):
            raise ValueError(f"{name} must have the shape of q {tuple(q.shape)}, "
                             f"got {tuple(a.shape)}")
    if tuple(lse.shape) != tuple(q.shape[:3]):
        raise ValueError(f"lse must have shape (B, H, Nq) = {tuple(q.shape[:3])}, "
                         f"got {tuple(lse.shape)}")
    return shape


def full_bias(shape, bias, dtype, xp):
    """The bias as a fresh contiguous (B or 1, H or 1, Nq, Nk) array (a kernel reads batch row
    b % bias.shape[0]), or a (1, 1, 1, 1) zero when there is none: always the same array type,
    so one compiled kernel serves calls with and without a bias."""
    if bias is None:
        return xp.zeros((1, 1, 1, 1), dtype)
    bias = bias.reshape((1,) * (4 - bias.ndim) + tuple(bias.shape))
    out = xp.empty(bias.shape[:2] + (shape.Nq, shape.Nk), dtype)
    out[...] = bias
    return out


def kernel_options(shape, key_mask, causal, window, prefix, xp):
    """(key_mask, causal, window, prefix) as the fused kernels take them: a contiguous uint8
    (B, Nk) array of the module xp and three ints, so one compiled kernel serves every variant.
    No key mask is all ones, no window is a window of Nk keys, no prefix is 0."""
    if key_mask is None:
        mask = xp.ones((shape.B, shape.Nk), xp.uint8)
    else:
        mask = xp.ascontiguousarray(key_mask, dtype=xp.uint8)
    # a window of Nk or more keys and a prefix of Nk or more keys act as Nk: the ints stay small
    window = shape.Nk if window is None else min(int(window), shape.Nk)
    prefix = 0 if prefix is None else min(int(prefix), shape.Nk)
    return mask, int(bool(causal)), window, prefix
