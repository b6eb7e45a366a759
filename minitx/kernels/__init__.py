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
# On the CPU both kernels run their products on BLAS; the fused kernel saves the N x N memory
# traffic but pays a per-block set-up. Measured forward + backward, float32, 2 cores, D = 32
# (benchmarks/RESULTS.md), reference time / fused time is 0.7 to 1.2 at 64 keys depending on the
# run (a training step at 64 keys was no faster with the fused kernel), 1.0 to 1.3 at 128 and 256,
# and 2.0 (full) to 3.9 (causal) at 1024. So the reference keeps the shortest sequences, where its
# score matrix is small. The CUDA threshold has not been measured (no GPU yet): the attention run
# of benchmarks/gpu_acceptance.sh is where to set it.
FUSED_MIN_KEYS = {"cpu": 128, "cuda": 0}
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
