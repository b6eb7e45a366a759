"""Fused attention on the CPU for short sequences: one whole score tile per head, compiled with numba.

At a few dozen keys (the CPU training preset has 64) the whole (Nk, Nq) score matrix of one head
fits in the core's L1/L2 cache, so the flash kernel's streaming (numba_attention.py: running
maximum, rescaling, a loop over key blocks) buys nothing and its per-block set-up dominates.
Here each head is one task that does what the reference does, in one pass over a cached tile:

    forward, per (b, h):   S^T = k q^T (Nk, Nq), masked; m = column max; P^T = exp(S^T - m);
                           l = column sum; P^T /= l; o = P v; lse = m + log l
    backward, per (b, kv head), for each query head h of its group:
                           P^T = exp(k q^T - lse) (recomputed, masked); dv += P^T do;
                           dP^T = v do^T; dS^T = P^T (dP^T - delta); dk += dS^T q; dq = dS k

All heads of a batch run in one call (numba.prange over the heads); each product is one BLAS
call (`np.dot` with `out=`, no temporary), every elementwise loop runs along the contiguous
query axis of the transposed tile so LLVM vectorises it, and exp is numba_math.exp. Nothing is
allocated per head but the tile itself. Memory is N^2 per head in flight (one tile per thread),
not per call: the dispatch (kernels.choose) uses this kernel below FUSED_MIN_SIZE keys only,
where it beats both the reference and the flash kernel (benchmarks/RESULTS.md).

Same contract, options and tests as the other kernels; NUMBA_DISABLE_JIT=1 runs it as Python.
"""
import numba
import numpy as np

from ._checks import check_backward, check_forward, kernel_options
from .numba_attention import _announce_compiling, _check_dtype, _exp_shifted, _mask_scores
from .numba_math import exp_constants

SUPPORTED_DTYPES = ("float32", "float64")


@numba.njit(parallel=True, cache=True)
def _forward_kernel(q, k, v, key_mask, causal, window, prefix, taylor, log2e, ln2_hi, ln2_lo,
                    t_min, o, lse):
    """q arrives multiplied by scale, so S = q k^T. Writes o (B, H, Nq, D) and lse (B, H, Nq)."""
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = H // Hkv
    offset = Nk - Nq                   # query i sits at position i + offset
    for task in numba.prange(B * H):
        b, h = task // H, task % H
        sT = np.empty((Nk, Nq), q.dtype)
        m = np.empty(Nq, q.dtype)                      # column max, then the shift of exp
        l = np.zeros(Nq, q.dtype)                      # column sum, then its inverse
        np.dot(k[b, h // G], q[b, h].T, sT)            # S^T (Nk, Nq): a column per query
        _mask_scores(sT, key_mask[b], 0, 0, offset, causal, window, prefix)
        m[:] = -np.inf
        for j in range(Nk):
            for i in range(Nq):
                m[i] = max(m[i], sT[j, i])
        for i in range(Nq):                            # a query that sees no key: P = 0
            m[i] = 0 if m[i] == -np.inf else m[i]
        _exp_shifted(sT, m, taylor, log2e, ln2_hi, ln2_lo, t_min)   # P^T, unnormalised
        for j in range(Nk):
            for i in range(Nq):
                l[i] += sT[j, i]
        for i in range(Nq):
            if l[i] > 0:
                lse[b, h, i] = m[i] + np.log(l[i])
                l[i] = 1 / l[i]
            else:                                      # o = 0, lse = -inf
                lse[b, h, i] = -np.inf
        for j in range(Nk):
            for i in range(Nq):
                sT[j, i] *= l[i]                       # P^T = softmax, column by column
        np.dot(sT.T, v[b, h // G], o[b, h])            # o = P v


@numba.njit(parallel=True, cache=True)
def _backward_kernel(q, k, v, do, lse, delta, key_mask, causal, window, prefix, taylor,
                     log2e, ln2_hi, ln2_lo, t_min, dq, dk, dv):
    """q arrives multiplied by scale (S = q k^T, dk = dS^T q); dq comes out without the factor
    scale. lse arrives with 0 for rows that see no key (all their scores are -inf: P = 0).
    Writes dq (B, H, Nq, D), dk and dv (B, Hkv, Nk, D)."""
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = H // Hkv
    offset = Nk - Nq
    for task in numba.prange(B * Hkv):
        b, kv = task // Hkv, task % Hkv
        k_b, v_b = k[b, kv], v[b, kv]                  # (Nk, D)
        pT = np.empty((Nk, Nq), q.dtype)
        dsT = np.empty((Nk, Nq), q.dtype)
        part = np.empty((Nk, D), q.dtype)              # one query head's share of dk, dv
        dk[b, kv] = 0
        dv[b, kv] = 0
        for h in range(kv * G, (kv + 1) * G):
            q_h, do_h, lse_h, delta_h = q[b, h], do[b, h], lse[b, h], delta[b, h]
            # forward: S = q k^T, P = exp(S - lse)           (transposed here)
            np.dot(k_b, q_h.T, pT)
            _mask_scores(pT, key_mask[b], 0, 0, offset, causal, window, prefix)
            _exp_shifted(pT, lse_h, taylor, log2e, ln2_hi, ln2_lo, t_min)
            # forward: o = P v  =>  dv += P^T do,  dP^T = v do^T
            np.dot(pT, do_h, part)
            dv[b, kv] += part
            np.dot(v_b, do_h.T, dsT)
            # forward: P = softmax(S)  =>  dS = P (dP - delta)
            for j in range(Nk):
                for i in range(Nq):
                    dsT[j, i] = pT[j, i] * (dsT[j, i] - delta_h[i])
            # forward: S = q k^T  =>  dk += dS^T q,  dq = dS k
            np.dot(dsT, q_h, part)
            dk[b, kv] += part
            np.dot(dsT.T, k_b, dq[b, h])


def attention_forward(q, k, v, *, causal=False, key_mask=None, window=None, prefix=None,
                      scale=None):
    """Fused forward: (o (B, H, Nq, D), lse (B, H, Nq)); same contract as reference."""
    shape = check_forward(q, k, v, causal=causal, key_mask=key_mask, window=window,
                          prefix=prefix, scale=scale)
    _check_dtype(q)
    mask, causal, window, prefix = kernel_options(shape, key_mask, causal, window, prefix, np)
    scale = q.dtype.type(shape.scale)
    q = np.multiply(q, scale, order="C")
    o = np.empty_like(q)
    lse = np.empty(q.shape[:3], q.dtype)
    _announce_compiling(_forward_kernel, q.dtype)
    _forward_kernel(q, np.ascontiguousarray(k), np.ascontiguousarray(v), mask, causal, window,
                    prefix, *exp_constants(q.dtype), o, lse)
    return o, lse


def attention_backward(q, k, v, o, lse, do, *, causal=False, key_mask=None, window=None,
                       prefix=None, scale=None):
    """Fused backward: (dq, dk, dv); same contract as reference."""
    shape = check_backward(q, k, v, o, lse, do, causal=causal, key_mask=key_mask,
                           window=window, prefix=prefix, scale=scale)
    _check_dtype(q)
    mask, causal, window, prefix = kernel_options(shape, key_mask, causal, window, prefix, np)
    scale = q.dtype.type(shape.scale)
    q = np.multiply(q, scale, order="C")
    k, v, o, lse, do = (np.ascontiguousarray(x, dtype=q.dtype) for x in (k, v, o, lse, do))
    delta = (do * o).sum(axis=-1)                           # rowsum(do * o): (B, H, Nq)
    lse = np.where(lse == -np.inf, 0, lse).astype(q.dtype)  # see _backward_kernel
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    _announce_compiling(_backward_kernel, q.dtype)
    _backward_kernel(q, k, v, do, lse, delta, mask, causal, window, prefix,
                     *exp_constants(q.dtype), dq, dk, dv)
    dq *= scale                          # the kernel saw S = (scale q) k^T
    return dq, dk, dv
