"""The small layers a Transformer is built from: Linear, Embedding, norms, Dropout, MLP."""
import math

import numpy

from .. import ops
from ..random import normal_array
from ..backend import default_device
from . import functional as F
from .module import Module, Parameter


def init_normal(shape, std, device=None):
    """A Parameter drawn from N(0, std^2) (float32; cast a whole model with .to(dtype=...))."""
    return Parameter(normal_array(shape, "float32", device or default_device()) * std)


def init_constant(shape, value, device=None):
    return Parameter(numpy.full(shape, value, dtype="float32"), device=device or default_device())


class Linear(Module):
    """y = x W^T + b with W (d_out, d_in), initialised N(0, std^2) (GPT-2 uses std 0.02)."""

    def __init__(self, d_in, d_out, bias=True, std=0.02):
        self.weight = init_normal((d_out, d_in), std)
        self.bias = init_constant((d_out,), 0.0) if bias else None

    def forward(self, x):
        if x.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"Linear expects inputs (..., {self.weight.shape[1]}), got {x.shape}")
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    """A table of vocab_size vectors; ids (...) -> (..., d_model)."""

    def __init__(self, vocab_size, d_model, std=0.02):
        self.weight = init_normal((vocab_size, d_model), std)

    def forward(self, ids):
        return F.embedding(ids, self.weight)


def _trailing(d_model):
    """A norm's shape: d_model (the last axis), or a tuple of trailing sizes (PyTorch's
    normalized_shape) normalised together."""
    return (d_model,) if isinstance(d_model, int) else tuple(d_model)


class LayerNorm(Module):
    """Normalise each vector to zero mean, unit variance, then scale and shift (Ba et al. 2016)."""

    def __init__(self, d_model, bias=True, eps=1e-5, kernels="auto"):
        self.weight = init_constant(_trailing(d_model), 1.0)
        self.bias = init_constant(_trailing(d_model), 0.0) if bias else None
        self.eps, self.kernels = eps, kernels

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps, self.kernels)


class RMSNorm(Module):
    """Divide each vector by its root mean square, then scale (Zhang & Sennrich 2019): no mean, no bias."""

    def __init__(self, d_model, bias=False, eps=1e-6, kernels="auto"):
        self.weight = init_constant(_trailing(d_model), 1.0)
        self.eps, self.kernels = eps, kernels

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps, self.kernels)


NORMS = {"layer": LayerNorm, "rms": RMSNorm}


class Dropout(Module):
    def __init__(self, p=0.0):
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class MLP(Module):
    """The position-wise feed-forward network.

    "gelu":   W2 gelu(W1 x)                       (GPT-2, BERT)
    "swiglu": W2 (silu(W1 x) * (W3 x))            (Shazeer 2020; LLaMA)
    `proj_std` scales the output projection's init (GPT-2: 0.02 / sqrt(2 n_layer)).
    `approximate` is the GELU form: "tanh" (GPT-2) or "none", the exact erf form (BERT).
    """

    def __init__(self, d_model, d_ff, kind="gelu", bias=True, dropout=0.0, proj_std=0.02,
                 kernels="auto", approximate="tanh"):
        if kind not in ("gelu", "swiglu"):
            raise ValueError(f"unknown MLP kind {kind!r}: expected 'gelu' or 'swiglu'")
        self.kind, self.kernels, self.approximate = kind, kernels, approximate
        self.up = Linear(d_model, d_ff, bias)
        self.gate = Linear(d_model, d_ff, bias) if kind == "swiglu" else None
        self.down = Linear(d_ff, d_model, bias, std=proj_std)
        self.drop = Dropout(dropout)

    def forward(self, x):
        h = self.up(x)
        if self.kind == "gelu":
            h = ops.gelu(h, approximate=self.approximate, kernels=self.kernels)
        else:
            g = self.gate(x)
            h = g * ops.sigmoid(g) * h
        return self.drop(self.down(h))


def residual_std(n_layer, std=0.02):
    """Init std of the projections that write into the residual stream: it grows with depth, so
    scale by 1/sqrt(2 n_layer) (two such writes per layer), as GPT-2 does."""
    return std / math.sqrt(2 * n_layer)
