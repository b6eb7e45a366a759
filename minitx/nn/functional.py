"""Stateless versions of the layers: what a layer computes, given its weights as arguments.

Every one is an op from minitx.ops (where the differentiable ops live); this module gathers the
ones a layer is made of, under the names the papers and PyTorch use.
"""
from ..ops import (cross_entropy, dropout, gelu, layer_norm, linear, log_softmax, rms_norm,
                   scaled_dot_product_attention, softmax, take)

__all__ = ["linear", "embedding", "layer_norm", "rms_norm", "dropout", "gelu", "softmax",
           "log_softmax", "cross_entropy", "scaled_dot_product_attention"]


def embedding(ids, weight):
    """Rows of `weight` (vocab_size, d_model) for integer `ids` (...): (..., d_model)."""
    return take(weight, ids, axis=0)
