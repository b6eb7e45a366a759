"""minitx: a Transformer library written from scratch on NumPy, with its own autograd.

    import minitx as mx
    x = mx.randn(4, 8, requires_grad=True, dtype="float64")
    w = mx.randn(8, 3, requires_grad=True, dtype="float64")
    y = mx.einsum("nd,dk->nk", x, w).tanh().sum()
    y.backward()                      # x.grad, w.grad
    mx.gradcheck(lambda x, w: mx.einsum("nd,dk->nk", x, w).tanh().sum(), (x, w))
"""
from . import backend, kernels
from .autograd import Function, is_grad_enabled, no_grad
from .backend import cuda_available, default_device, set_default_device
from .gradcheck import GradcheckError, gradcheck
from .ops import (abs, argmax, argmin, broadcast_to, chunk, clip, concatenate, cos, cross_entropy,
                  cumsum, dropout, einsum, erf, exp, expand, flatten, flip, gather, gelu, layer_norm,
                  leaky_relu, log, log_softmax, logsumexp, masked_fill, matmul, max, maximum, mean,
                  min, minimum, pad, permute, prod, relu, repeat, reshape, rms_norm, rsqrt, sigmoid,
                  sign, silu, sin, softmax, softplus, split, sqrt, squeeze, stack, std, sum, take,
                  tanh, transpose, tril, triu, unsqueeze, var, where)
from .random import get_rng_state, manual_seed, set_rng_state
from . import nn, optim
from .tensor import Tensor, arange, ones, ones_like, rand, randn, tensor, zeros, zeros_like

__version__ = "0.1.0"


def use_fast_cpu_settings():
    """Tune this process for minitx on the CPU: glibc keeps freed memory for reuse
    (backend.keep_freed_memory) and numba's kernels use a thread pool whose idle threads sleep
    (kernels.use_workqueue_threads); benchmarks/RESULTS.md has what each gained. Both change the
    whole process, not only minitx, so importing minitx does neither: the command line and the
    benchmarks call this, and so may you."""
    backend.keep_freed_memory()
    kernels.use_workqueue_threads()
