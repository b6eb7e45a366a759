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

All heads of a batch run in one call (numba.prange over the heads); each head's q, k, v are
copied into contiguous tiles (scaled, in cache) straight from the strided views that splitting
heads off a projection gives, and the outputs go back in their inputs' memory order, so neither
side of the kernel copies whole arrays. Each product is one BLAS call (`np.dot` with `out=`, no
temporary), every elementwise loop runs along the contiguous query axis of the transposed tile
so LLVM vectorises it, and exp is numba_math.exp. Memory is Nq x Nk per head in flight (a few tiles per
thread), not per call: the dispatch (kernels.choose) uses this kernel below SHORT_BELOW keys
only, where it beats both the reference and the flash kernel (benchmarks/RESULTS.md).

Same contract, options and tests as the other kernels; NUMBA_DISABLE_JIT=1 runs it as Python.
"""
import numba
import numpy as np

from ._checks import check_backward, check_forward, kernel_options
from .numba_attention import _announce_compiling, _check_dtype, _exp_shifted, _mask_scores
from .numba_math import exp_constants

SUPPORTED_DTYPES = ("float32", "float64")


@numba.njit(cache=True)
def _load(x, scale, out):
    """out = scale * x: a strided (N, D) slice of a head into a contiguous tile, in cache."""
    for i in range(x.shape[0]):
        for d in range(x.shape[1]):
            out[i, d] = x[i, d] * scale


@numba.njit(cache=True)
def _store(x, scale, out):
    """out = scale * x: a contiguous tile back into a (perhaps strided) slice of the output."""
    for i in range(x.shape[0]):
        for d in range(x.shape[1]):
            out[i, d] = x[i, d] * scale


@numba.njit(parallel=True, cache=True)
def _forward_kernel(q, k, v, scale, key_mask, causal, window, prefix, taylor, log2e, ln2_hi,
                    ln2_lo, t_min, o, lse):
    """Writes o (B, H, Nq, D) and lse (B, H, Nq). q, k, v and o may be strided views (heads
    split off a (B, N, H, D) projection): each head is copied into a contiguous tile first."""
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = H // Hkv
    offset = Nk - Nq                   # query i sits at position i + offset
    one = q.dtype.type(1)
    for task in numba.prange(B * H):
        b, h = task // H, task % H
        q_h = np.empty((Nq, D), q.dtype)               # scale q: then S = q k^T
        k_h, v_h = np.empty((Nk, D), q.dtype), np.empty((Nk, D), q.dtype)
        o_h = np.empty((Nq, D), q.dtype)
        sT = np.empty((Nk, Nq), q.dtype)
        m = np.empty(Nq, q.dtype)                      # column max, then the shift of exp
        l = np.zeros(Nq, q.dtype)                      # column sum, then its inverse
        _load(q[b, h], scale, q_h)
        _load(k[b, h // G], one, k_h)
        _load(v[b, h // G], one, v_h)
        np.dot(k_h, q_h.T, sT)                         # S^T (Nk, Nq): a column per query
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
        np.dot(sT.T, v_h, o_h)                         # o = P v
        _store(o_h, one, o[b, h])


@numba.njit(parallel=True, cache=True)
def _backward_kernel(q, k, v, o, do, lse, scale, key_mask, causal, window, prefix, taylor,
                     log2e, ln2_hi, ln2_lo, t_min, dq, dk, dv):
    """Writes dq (B, H, Nq, D), dk and dv (B, Hkv, Nk, D); every array may be a strided view.
    Rows with lse = -inf see no key: their P = 0, and so are their gradients."""
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = H // Hkv
    offset = Nk - Nq
    one, zero = q.dtype.type(1), q.dtype.type(0)
    for task in numba.prange(B * Hkv):
        b, kv = task // Hkv, task % Hkv
        k_b, v_b = np.empty((Nk, D), q.dtype), np.empty((Nk, D), q.dtype)
        q_h, do_h, dq_h = (np.empty((Nq, D), q.dtype), np.empty((Nq, D), q.dtype),
                           np.empty((Nq, D), q.dtype))
        lse_h, delta_h = np.empty(Nq, q.dtype), np.empty(Nq, q.dtype)
        pT, dsT = np.empty((Nk, Nq), q.dtype), np.empty((Nk, Nq), q.dtype)
        part = np.empty((Nk, D), q.dtype)              # one query head's share of dk, dv
        dk_b, dv_b = np.zeros((Nk, D), q.dtype), np.zeros((Nk, D), q.dtype)
        _load(k[b, kv], one, k_b)
        _load(v[b, kv], one, v_b)
        for h in range(kv * G, (kv + 1) * G):
            _load(q[b, h], scale, q_h)                 # scale q: S = q k^T, dk = dS^T q
            _load(do[b, h], one, do_h)
            for i in range(Nq):
                lse_h[i] = zero if lse[b, h, i] == -np.inf else lse[b, h, i]   # P = 0 there
                total = zero
                for d in range(D):
                    total += do[b, h, i, d] * o[b, h, i, d]
                delta_h[i] = total                     # delta = rowsum(do * o)
            # forward: S = q k^T, P = exp(S - lse)           (transposed here)
            np.dot(k_b, q_h.T, pT)
            _mask_scores(pT, key_mask[b], 0, 0, offset, causal, window, prefix)
            _exp_shifted(pT, lse_h, taylor, log2e, ln2_hi, ln2_lo, t_min)
            # forward: o = P v  =>  dv += P^T do,  dP^T = v do^T
            np.dot(pT, do_h, part)
            dv_b += part
            np.dot(v_b, do_h.T, dsT)
            # forward: P = softmax(S)  =>  dS = P (dP - delta)
            for j in range(Nk):
                for i in range(Nq):
                    dsT[j, i] = pT[j, i] * (dsT[j, i] - delta_h[i])
            # forward: S = scale q k^T  =>  dk += dS^T (scale q),  dq = scale dS k
            np.dot(dsT, q_h, part)
            dk_b += part
            np.dot(dsT.T, k_b, dq_h)
            _store(dq_h, scale, dq[b, h])
        _store(dk_b, one, dk[b, kv])
        _store(dv_b, one, dv[b, kv])


def attention_forward(q, k, v, *, causal=False, key_mask=None, window=None, prefix=None,
                      scale=None):
    """Fused forward: (o (B, H, Nq, D), lse (B, H, Nq)); same contract as reference. o is laid
    out in memory as q is (np.empty_like), so heads split off a (B, N, H, D) projection come
    back in that order and joining them again needs no copy."""
    shape = check_forward(q, k, v, causal=causal, key_mask=key_mask, window=window,
                          prefix=prefix, scale=scale)
    _check_dtype(q)
    mask, causal, window, prefix = kernel_options(shape, key_mask, causal, window, prefix, np)
    o = np.empty_like(q)
    lse = np.empty(q.shape[:3], q.dtype)
    _announce_compiling(_forward_kernel, q.dtype)
    _forward_kernel(q, k, v, q.dtype.type(shape.scale), mask, causal, window, prefix,
                    *exp_constants(q.dtype), o, lse)
    return o, lse


def attention_backward(q, k, v, o, lse, do, *, causal=False, key_mask=None, window=None,
                       prefix=None, scale=None):
    """Fused backward: (dq, dk, dv), each laid out in memory as q, k, v are; same contract as
    reference."""
    shape = check_backward(q, k, v, o, lse, do, causal=causal, key_mask=key_mask,
                           window=window, prefix=prefix, scale=scale)
    _check_dtype(q)
    mask, causal, window, prefix = kernel_options(shape, key_mask, causal, window, prefix, np)
    o, lse, do = (x.astype(q.dtype, copy=False) for x in (o, lse, do))
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    _announce_compiling(_backward_kernel, q.dtype)
    _backward_kernel(q, k, v, o, do, lse, q.dtype.type(shape.scale), mask, causal, window,
                     prefix, *exp_constants(q.dtype), dq, dk, dv)
    return dq, dk, dv
