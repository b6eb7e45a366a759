"""Position information: attention by itself is blind to order, so positions are added in.

learned     a trained vector per position, added to the token embedding (GPT-2, BERT)
sinusoidal  fixed sines and cosines of geometrically spaced frequencies, added likewise
            (Vaswani et al. 2017): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)
rotary      nothing added; q and k are rotated by a position-dependent angle per pair of
            dimensions, so q.k depends only on the distance between them (Su et al. 2021, RoPE)
Every function takes `start`, the position of the first token, so decoding with a KV cache
continues where the cache left off.
"""
import numpy

from .. import ops
from ..backend import array_module
from .layers import Embedding
from .module import Module

POSITIONS = ("learned", "sinusoidal", "rope")


def _frequencies(n_pairs, base=10000.0):
    return base ** (-numpy.arange(n_pairs) / n_pairs)  # (n_pairs,)


def _angles(start, n, n_pairs, base=10000.0):
    return numpy.arange(start, start + n)[:, None] * _frequencies(n_pairs, base)[None, :]  # (n, n_pairs)


class LearnedPositions(Module):
    def __init__(self, block_size, d_model):
        self.table = Embedding(block_size, d_model)

    def forward(self, x, start=0):
        """x (B, N, d_model) + the vectors of positions start..start+N-1."""
        ids = numpy.arange(start, start + x.shape[1])   # from the host: checked there, then moved
        return x + self.table(ids)


class SinusoidalPositions(Module):
    def __init__(self, block_size, d_model):
        self.d_model = d_model

    def forward(self, x, start=0):
        n, d = x.shape[1], self.d_model
        angles = _angles(start, n, (d + 1) // 2)
        table = numpy.empty((n, 2 * angles.shape[1]))
        table[:, 0::2], table[:, 1::2] = numpy.sin(angles), numpy.cos(angles)  # interleaved
        return x + array_module(x.device).asarray(table[:, :d], dtype=x.dtype)


def apply_rope(x, start=0, base=10000.0):
    """Rotate x (B, H, N, D) by position: each pair (x[i], x[i + D/2]) turns by angle p * f_i,
    f_i = base^(-2i/D) (10000 in the paper; larger bases reach longer contexts, e.g. SmolLM2's 1e5).

        [x1, x2] -> [x1 cos - x2 sin, x1 sin + x2 cos]   with x1 = x[..., :D/2], x2 = x[..., D/2:]
    """
    n, d = x.shape[2], x.shape[3]
    if d % 2:
        raise ValueError(f"rotary positions need an even head dimension, got d_head={d}")
    xp = array_module(x.device)
    angles = _angles(start, n, d // 2, base)
    cos = xp.asarray(numpy.cos(angles), dtype=x.dtype)  # (N, D/2)
    sin = xp.asarray(numpy.sin(angles), dtype=x.dtype)
    x1, x2 = ops.split(x, [d // 2, d // 2], axis=-1)
    return ops.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class NoPositions(Module):
    """The embedding passes through unchanged (positions come from RoPE inside attention)."""

    def forward(self, x, start=0):
        return x


def make_positions(kind, block_size, d_model):
    if kind == "learned":
        return LearnedPositions(block_size, d_model)
    if kind == "sinusoidal":
        return SinusoidalPositions(block_size, d_model)
    if kind == "rope":
        return NoPositions()
    raise ValueError(f"unknown positions {kind!r}: expected one of {POSITIONS}")

