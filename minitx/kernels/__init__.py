"""Kernels on raw numpy/cupy arrays, and the one place that picks among them.

Two families, each a readable reference beside its fused twins:

    attention  reference.py (einsum + softmax, memory N^2)    numba_attention.py (flash),
                                                              numba_attention_short.py (one tile
                                                              per head), cupy_attention.py
    pointwise  reference_pointwise.py (GELU, norms, erf,      numba_pointwise.py (CPU only)
               the AdamW update)

    o, lse = attention_forward(q, k, v, causal=True)   # q (B, H, Nq, D); k, v (B, Hkv, Nk, D)
    dq, dk, dv = attention_backward(q, k, v, o, lse, do, causal=True)
    y, t = gelu_tanh_forward(x);  dx = gelu_tanh_grad(x, t, dy);  e = erf(x)
    y, xhat, rstd = normalize(x, weight, bias, eps, center);  dx = normalize_grad(...)
    p = adamw_update(p, g, m, v, lr, b1, b2, eps, decay, t)   # in place on p, m, v

Attention options (the same for every implementation; see `reference.visibility_mask`): causal,
key_mask (B, Nk) bool, window, prefix, scale (default 1/sqrt(D)), bias (added to the scores,
broadcast to (B, H, Nq, Nk); backward then returns dbias too), dropout and seed (attention
dropout, its mask a hash of the seed and the position: kernels/dropout_mask.py).

The rule (`choose`): kernels="reference" runs the reference, "fused" the fused kernel of the
arrays' device, "auto" (the default) the fused kernel unless the environment variable
MINITX_KERNELS=reference|fused asks otherwise for every kernel, or the call is too small for the
fused kernel to pay (FUSED_MIN_SIZE). On the CPU, attention over fewer than SHORT_BELOW keys runs
the short-sequence kernel (a whole score tile per head) rather than the flash kernel. A device or
dtype the fused kernel lacks falls back to the reference (with a one-time warning for a dtype it
lacks).
"""
import functools
import os
import warnings

import numpy

from ..backend import device_of
from . import (cupy_attention, numba_attention, numba_attention_short, numba_pointwise, reference,
               reference_pointwise)
from .reference import visibility_mask

KERNELS = ("auto", "fused", "reference")
REFERENCE = {"attention": reference, "pointwise": reference_pointwise}
FUSED = {"attention": {"cpu": numba_attention, "cuda": cupy_attention},
         "pointwise": {"cpu": numba_pointwise}}   # on the GPU the reference array code runs
# Below this size (attention: number of keys) the reference is faster on that device, and below
# SHORT_BELOW the CPU's fused attention is the short-sequence kernel, whose score tile per head
# beats the flash kernel's streaming there (measured in benchmarks/RESULTS.md, "CPU attention:
# which kernel where"): the reference below 128 keys (at the training preset's 64 keys the short
# kernel was no faster inside the training step: its BLAS products of 64 x 32 x 64 cost as much
# as the reference's few large NumPy calls), the short kernel from 128 to 511, the flash kernel
# from 512 on, where causal masks let it skip whole blocks and its memory stays linear in N.
# No CUDA threshold yet: it has not been measured (no GPU so far); the attention run of
# benchmarks/gpu_acceptance.sh is where to set one.
FUSED_MIN_SIZE = {("attention", "cpu"): 128}
SHORT_BELOW = {("attention", "cpu"): (512, numba_attention_short)}
_warned = set()


@functools.lru_cache(maxsize=None)
def _dtypes(module):
    """The dtypes a kernel module supports, as a set of numpy dtypes (a set lookup is 40x faster
    than reading dtype.name, and choose runs before every kernel call)."""
    return frozenset(numpy.dtype(name) for name in module.SUPPORTED_DTYPES)


def choose(family, x, size=0, kernels="auto"):
    """The module (reference or a fused kernel of `family`) that runs a call on array `x`."""
    if kernels == "auto":
        kernels = os.environ.get("MINITX_KERNELS", "auto")
        if kernels not in KERNELS:
            raise ValueError(f"MINITX_KERNELS={kernels!r}: expected one of {KERNELS}")
    elif kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}: expected one of {KERNELS}")
    device = device_of(x)
    fused = FUSED[family].get(device)
    if (kernels == "reference" or fused is None
            or (kernels == "auto" and size < FUSED_MIN_SIZE.get((family, device), 0))):
        return REFERENCE[family]
    if x.dtype not in _dtypes(fused):
        if (family, device, x.dtype.name) not in _warned:
            _warned.add((family, device, x.dtype.name))
            warnings.warn(f"no fused {family} kernel for {x.dtype} on {device} "
                          f"(it has {fused.SUPPORTED_DTYPES}); using the reference", stacklevel=3)
        return REFERENCE[family]
    short = SHORT_BELOW.get((family, device))
    return short[1] if short is not None and size < short[0] else fused


def use_workqueue_threads():
    """Run numba's parallel kernels on numba's own "workqueue" thread pool, unless the user's
    NUMBA_THREADING_LAYER says otherwise; call it before the first kernel runs.

    numba's default pool on Linux is OpenMP, whose idle threads spin for a while after each kernel
    and take the core that NumPy's BLAS threads need next (on 2 cores a training step ran 3x
    slower); workqueue's idle threads sleep. A process-wide setting, so the caller's choice: the
    command line and the benchmarks make it (minitx.use_fast_cpu_settings).
    """
    import numba
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"


# Fused kernels that take no bias and no attention dropout yet, and the kernel that runs such
# calls instead: the flash kernel for the CPU's short-sequence one, the reference on the GPU.
WITHOUT_BIAS_OR_DROPOUT = {cupy_attention: reference, numba_attention_short: numba_attention}


def _attention(q, n_keys, kernels, options):
    """The attention kernel `choose` picks and the options it takes: a kernel that has the
    options where the chosen one lacks an option the call uses; the options without bias and
    dropout where it has none to take."""
    module = choose("attention", q, n_keys, kernels)
    if module not in WITHOUT_BIAS_OR_DROPOUT:
        return module, options
    if options.get("bias") is not None or options.get("dropout"):
        instead = WITHOUT_BIAS_OR_DROPOUT[module]
        if instead is reference and (module, "bias") not in _warned:
            _warned.add((module, "bias"))
            warnings.warn(f"{module.__name__} has no attention bias (attn_mask) or attention "
                          "dropout yet; such calls run the reference kernel (N x N memory)",
                          stacklevel=4)
        return instead, options
    return module, {k: v for k, v in options.items() if k not in ("bias", "dropout", "seed")}


def attention_forward(q, k, v, *, kernels="auto", **options):
    """(o (B, H, Nq, D), lse (B, H, Nq)) from the kernel `choose` picks."""
    module, options = _attention(q, k.shape[2], kernels, options)
    return module.attention_forward(q, k, v, **options)


def attention_backward(q, k, v, o, lse, do, *, kernels="auto", **options):
    """(dq, dk, dv), and dbias with a bias, from the kernel `choose` picks."""
    module, options = _attention(q, k.shape[2], kernels, options)
    return module.attention_backward(q, k, v, o, lse, do, **options)


def gelu_tanh_forward(x, kernels="auto"):
    return choose("pointwise", x, x.size, kernels).gelu_tanh_forward(x)


def gelu_tanh_grad(x, t, grad, kernels="auto"):
    return choose("pointwise", x, x.size, kernels).gelu_tanh_grad(x, t, grad)


def erf(x, kernels="auto"):
    return choose("pointwise", x, x.size, kernels).erf(x)


def normalize(x, weight, bias, eps, center, kernels="auto"):
    return choose("pointwise", x, x.size, kernels).normalize(x, weight, bias, eps, center)


def normalize_grad(grad, xhat, rstd, weight, center, kernels="auto"):
    return choose("pointwise", xhat, xhat.size, kernels).normalize_grad(grad, xhat, rstd, weight,
                                                                        center)


def adamw_update(p, g, m, v, lr, b1, b2, eps, decay, t, kernels="auto"):
    return choose("pointwise", p, p.size, kernels).adamw_update(p, g, m, v, lr, b1, b2, eps, decay,
                                                                t)


__all__ = ["attention_forward", "attention_backward", "gelu_tanh_forward", "gelu_tanh_grad", "erf",
           "normalize", "normalize_grad", "adamw_update", "visibility_mask", "choose", "KERNELS",
           "REFERENCE", "FUSED", "FUSED_MIN_SIZE", "SHORT_BELOW", "use_workqueue_threads"]
