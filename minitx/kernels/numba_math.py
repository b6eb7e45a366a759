"""Scalar math for the numba kernels that numba's own functions leave slow: a power of two made
from its bits, and exp built on it.

numba's np.exp and np.tanh are scalar libm calls (no vectorised math library ships with pip's
numba); a loop that calls them cannot be vectorised. `exp` below is multiplications, additions
and `pow2`, so LLVM vectorises the loops that call it (about 12x faster than the libm call in
float32 and faster than NumPy's vectorised np.exp). Used by numba_attention.py (softmax) and
numba_pointwise.py (GELU's tanh).
"""
import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic


@intrinsic
def pow2(typingctx, n, like):
    """2^n as a float of `like`'s type (float32 or float64), for an integer n whose power is a
    normal number (float32: -126 <= n <= 127): the exponent field n + bias, shifted into place,
    read as a float. No arithmetic, so LLVM vectorises the loops it sits in."""
    if like == types.float32:
        width, bias, shift, float_type = 32, 127, 23, ir.FloatType()
    else:
        width, bias, shift, float_type = 64, 1023, 52, ir.DoubleType()

    def codegen(context, builder, signature, args):
        n = args[0]
        if n.type.width > width:
            n = builder.trunc(n, ir.IntType(width))
        elif n.type.width < width:
            n = builder.sext(n, ir.IntType(width))
        exponent = builder.add(n, ir.Constant(ir.IntType(width), bias))
        bits = builder.shl(exponent, ir.Constant(ir.IntType(width), shift))
        return builder.bitcast(bits, float_type)
    return like(n, like), codegen


if numba.config.DISABLE_JIT:   # plain Python (NUMBA_DISABLE_JIT=1) has no intrinsics
    def pow2(n, like):
        return type(like)(2.0 ** int(n))


def exp_constants(dtype):
    """The constants of `exp`, in `dtype` so that float32 arithmetic stays float32: the Taylor
    coefficients of e^r (1/7! down to 1/0! for float32, 1/12! for float64), 1/ln 2, ln 2 split in
    a high part with few bits and the rest (Cody and Waite), and the cut-off t_min = -87 below
    which e^t counts as 0."""
    dtype = np.dtype(dtype)
    degree = 7 if dtype == np.float32 else 12
    taylor = tuple(dtype.type(1 / math.factorial(i)) for i in range(degree, -1, -1))
    ln2_hi = 0.693145751953125 if dtype == np.float32 else 0.6931471803691238   # 15 / 32 bits
    ln2_lo = math.log(2) - ln2_hi
    return taylor, dtype.type(1 / math.log(2)), dtype.type(ln2_hi), dtype.type(ln2_lo), \
        dtype.type(-87)


@numba.njit(cache=True, fastmath={"contract"})
def exp(t, taylor, log2e, ln2_hi, ln2_lo, t_min):
    """e^t for t <= 88 (0 below t_min = -87; NaN stays NaN), with the constants of exp_constants.

    e^t = e^r * 2^n, with n = round(t / ln 2) and r = t - n ln 2 in [-0.35, 0.35]; n ln 2 is
    subtracted in two parts, the first exact (n * ln2_hi has few bits), so r keeps its precision.
    e^r is its Taylor series (degree 7 for float32, 12 for float64: relative error below the
    dtype's rounding); 2^n is made from its bits (`pow2`). Below t_min, e^t is under float32's
    smallest normal number and under 1e-37 of anything it is added to here: the result is 0.
    """
    n = np.rint((t if t >= t_min else t_min) * log2e)   # -126 <= n <= 127, even for NaN
    r = (t - n * ln2_hi) - n * ln2_lo
    p = taylor[0]
    for c in taylor[1:]:
        p = p * r + c
    p *= pow2(np.int32(n), p)
    return t_min - t_min if t < t_min else p
