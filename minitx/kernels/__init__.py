"""Attention kernels on raw numpy/cupy arrays, and the one place that picks among them.

    o, lse = attention_forward(q, k, v, causal=True)   # q (B, H, Nq, D); k, v (B, Hkv, Nk, D)
    dq, dk, dv = attention_backward(q, k, v, o, lse, do, causal=True)

Options (the same for every implementation; see `reference.visibility_mask`): causal, key_mask
(B, Nk) bool, window, prefix, scale (default 1/sqrt(D)).

impl="reference" is the readable einsum + softmax specification (memory grows as N^2);
impl="fused" is the flash-attention kernel of the arrays' device (numba on the CPU, CUDA through
cupy on the GPU), which never stores the N x N matrix; impl="auto" means fused, unless the
environment variable MINITX_ATTENTION=reference asks for the reference everywhere, or the
keys are too few for the fused kernel to pay on this device (FUSED_MIN_KEYS). A dtype the
fused kernel lacks (float16 on the CPU, say) falls back to the reference with a one-time warning.
"""
import os
import warnings

from ..backend import device_of
from . import cupy_attention, numba_attention, reference
from .reference import visibility_mask

IMPLEMENTATIONS = ("auto", "fused", "reference")
FUSED = {"cpu": numba_attention, "cuda": cupy_attention}   # the fused kernel of each device
# On the CPU the fused kernel pays one scalar exp call per score (numba has no vectorised exp)
# and its per-block set-up, while the reference runs on NumPy's vectorised exp and BLAS. Measured
# forward + backward, float32, 2 cores, B = 4, H = 4, D = 32 (benchmarks/RESULTS.md), reference
# time / fused time: causal 0.85 at N = 256, 0.90 at 512, 1.25 at 1024, 1.60 at 2048; not causal
# 0.59 to 0.75. Peak memory, reference / fused: 10.6 / 4.7 MiB at N = 256, 139 / 18 at 1024,
# 536 / 36 at 2048. So the reference runs short sequences, where its N x N score matrix is small,
# and the fused kernel long ones, where that matrix would grow as N^2.
FUSED_MIN_KEYS = {"cpu": 1024, "cuda": 0}
_warned = set()


def _implementation(impl, q, n_keys):
    """The module (reference, numba_attention or cupy_attention) that runs this call."""
    if impl == "auto":
        impl = os.environ.get("MINITX_ATTENTION", "auto")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"MINITX_ATTENTION={impl!r}: expected one of {IMPLEMENTATIONS}")
    elif impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention impl {impl!r}: expected one of {IMPLEMENTATIONS}")
    device = device_of(q)
    if impl == "reference" or (impl == "auto" and n_keys < FUSED_MIN_KEYS[device]):
        return reference
    fused = FUSED[device]
    if q.dtype.name not in fused.SUPPORTED_DTYPES:
        if (device, q.dtype.name) not in _warned:
            _warned.add((device, q.dtype.name))
            warnings.warn(f"no fused attention kernel for {q.dtype} on {device} "
                          f"(it has {fused.SUPPORTED_DTYPES}); using the reference",
                          stacklevel=3)
        return reference
    return fused


def attention_forward(q, k, v, *, impl="auto", **options):
    """(o (B, H, Nq, D), lse (B, H, Nq)) from the implementation chosen by `impl`."""
    return _implementation(impl, q, k.shape[2]).attention_forward(q, k, v, **options)


def attention_backward(q, k, v, o, lse, do, *, impl="auto", **options):
    """(dq, dk, dv) from the implementation chosen by `impl`."""
    return _implementation(impl, q, k.shape[2]).attention_backward(q, k, v, o, lse, do, **options)


__all__ = ["attention_forward", "attention_backward", "visibility_mask", "IMPLEMENTATIONS",
           "FUSED", "FUSED_MIN_KEYS"]
