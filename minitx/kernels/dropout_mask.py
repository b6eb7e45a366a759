"""The attention-dropout mask as a function of position, not a stored array.

A fused kernel never holds the N x N probability matrix, so it cannot hold an N x N dropout mask
either. As FlashAttention does, it draws the mask from a counter-based generator: whether
probability (b, h, i, j) is kept depends only on a seed and on that position's index, so the
backward pass recomputes the very same mask block by block. The generator here is the finaliser
of SplitMix64 (a bijection of 64-bit integers whose output bits pass statistical tests), applied to
index * golden ratio + seed; every implementation (reference, numba, cupy) computes it with the
same integer arithmetic, so they drop exactly the same probabilities and can be tested against
one another exactly.
"""
import math

import numpy

GOLDEN = numpy.uint64(0x9E3779B97F4A7C15)   # 2^64 / golden ratio: consecutive indices spread out
M1 = numpy.uint64(0xBF58476D1CE4E5B9)
M2 = numpy.uint64(0x94D049BB133111EB)
S11, S27, S30, S31 = (numpy.uint64(s) for s in (11, 27, 30, 31))


def mix(z):
    """SplitMix64's finaliser, on uint64 scalars or arrays (NumPy, CuPy, numba alike)."""
    z = (z ^ (z >> S30)) * M1
    z = (z ^ (z >> S27)) * M2
    return z ^ (z >> S31)


def threshold(p):
    """A probability is dropped when the top 53 bits of its hash, as a fraction of 2^53, are below
    p: the integer cut-off ceil(p 2^53)."""
    return numpy.uint64(math.ceil(p * 2.0 ** 53))


def keep_mask(shape, p, seed, xp=numpy):
    """Boolean array of `shape` (B, H, Nq, Nk): True where probability (b, h, i, j) is kept."""
    index = xp.arange(math.prod(shape), dtype=numpy.uint64).reshape(shape)   # b, h, i, j row-major
    return (mix(index * GOLDEN + numpy.uint64(seed)) >> S11) >= threshold(p)
