"""Fused attention on the CPU for short sequences: one score tile per head, compiled with numba.

At a few hundred keys the whole (Nk, Nq) score matrix of one head fits in the core's L1/L2
cache, so the flash kernel's streaming (numba_attention.py: running maximum, rescaling, a loop
over key blocks) buys nothing and its per-block set-up dominates.
Here each head is one task that does what the reference does, over cached tiles, for each block
of BLOCK_Q queries (i: the block's queries, keys :n the keys any of them may see):

    forward, per (b, h):   S^T = k[:n] q_i^T (n, BLOCK_Q), masked; m = column max;
                           P^T = exp(S^T - m); l = column sum; lse = m + log l; o_i = P v[:n] / l
    backward, per (b, kv head), for each query head h of its group:
                           P^T = exp(k[:n] q_i^T - lse) (recomputed, masked); dv[:n] += P^T do_i;
                           dP^T = v[:n] do_i^T; dS^T = P^T (dP^T - delta);
                           dk[:n] += dS^T q_i; dq_i = dS k[:n]

Causal blocks: queries i see no key past their own position, so a block multiplies only
against the keys up to its last query's (n < Nk for all but the last block): at 64 keys and
32-query blocks that skips a quarter of the products, at 256 keys nearly half. The mask
within a block is two fills of -inf per key (the queries that see key j are one run, lo <= i <
hi), not a test per score. The backward walks the blocks last first, so the first product
of a kv head (all Nk keys) writes dk and dv directly and the others add to them.

All heads of a batch run in one call (numba.prange over the heads); each head's q, k, v are
copied into contiguous tiles (scaled, in cache) straight from the strided views that splitting
heads off a projection gives, and the outputs go back in their inputs' memory order, so neither
side of the kernel copies whole arrays. Each product is one BLAS call (`np.dot` with `out=`, no
temporary), every elementwise loop runs along the contiguous query axis of the transposed tile
so LLVM vectorises it, and exp is numba_math.exp. Memory is Nk x BLOCK_Q per head in flight (a
few tiles per thread), not per call: the dispatch (kernels.choose) uses this kernel from
FUSED_MIN_SIZE to SHORT_BELOW keys only (128 to 511), where it beats both the reference and the
flash kernel (benchmarks/RESULTS.md); below that the reference's few large NumPy calls win.

Same contract, options and tests as the other kernels; NUMBA_DISABLE_JIT=1 runs it as Python.
"""
import numba
import numpy as np

from ._checks import check_backward, check_forward, kernel_options
from .numba_attention import _announce_compiling, _check_dtype, _exp_shifted, one_blas_thread
from .numba_math import exp_constants

SUPPORTED_DTYPES = ("float32", "float64")
BLOCK_Q = 32    # query rows per block: a causal block multiplies only against the keys it sees


@numba.njit(cache=True)
def _copy(x, scale, out):
    """out = scale * x: a strided (N, D) slice of a head into a contiguous tile in cache, or a
    tile back into a (perhaps strided) slice of an output."""
    for i in range(x.shape[0]):
        for d in range(x.shape[1]):
            out[i, d] = x[i, d] * scale


@numba.njit(cache=True)
def _add(x, acc):
    """acc += x, in place (a loop: numba's `acc[:n] += x[:n]` makes a temporary)."""
    for j in range(x.shape[0]):
        for d in range(x.shape[1]):
            acc[j, d] += x[j, d]


@numba.njit(cache=True)
def _dot_add(a, b, acc, part, first):
    """acc = a b if first (then a has all of acc's rows), else acc[:n] += a b, through part
    (np.dot has no beta)."""
    if first:
        np.dot(a, b, acc)
    else:
        np.dot(a, b, part[:a.shape[0]])
        _add(part[:a.shape[0]], acc)


@numba.njit(cache=True)
def _keys_seen(pos_last, Nk, causal, prefix):
    """How many leading keys the queries up to position pos_last may see (at least 1: a block
    whose queries see no key is masked like any other)."""
    return Nk if not causal else max(1, min(Nk, max(pos_last + 1, prefix)))


@numba.njit(cache=True)
def _mask_unseen(sT, key_mask, i0, offset, causal, window, prefix):
    """Set the hidden entries of the transposed score block sT (keys 0..., queries i0...) to
    -inf. Query i sits at position pos = i + offset and sees the keys with pos - window < j <=
    pos and those below prefix, if key_mask allows: for key j, a run of queries lo <= ii < hi,
    so the mask is two fills per key rather than a test per score."""
    n_i = sT.shape[1]
    for j in range(sT.shape[0]):
        lo, hi = 0, n_i
        if not key_mask[j]:
            hi = 0
        elif causal and j >= prefix:
            lo = min(max(j - offset - i0, 0), n_i)
            hi = min(max(j + window - offset - i0, lo), n_i)
        sT[j, :lo] = -np.inf
        sT[j, hi:] = -np.inf


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
        s = np.empty(Nk * BLOCK_Q, q.dtype)            # a block's S^T, then P^T
        o_s = np.empty(BLOCK_Q * D, q.dtype)           # a block's o
        m = np.empty(BLOCK_Q, q.dtype)                 # column max, the shift of exp
        l = np.empty(BLOCK_Q, q.dtype)                 # column sum, then its inverse
        _copy(q[b, h], scale, q_h)
        _copy(k[b, h // G], one, k_h)
        _copy(v[b, h // G], one, v_h)
        for i0 in range(0, Nq, BLOCK_Q):
            n_i = min(BLOCK_Q, Nq - i0)
            n_j = _keys_seen(i0 + n_i - 1 + offset, Nk, causal, prefix)
            sT = s[:n_j * n_i].reshape((n_j, n_i))     # S^T (n_j, n_i): a column per query
            np.dot(k_h[:n_j], q_h[i0:i0 + n_i].T, sT)
            _mask_unseen(sT, key_mask[b], i0, offset, causal, window, prefix)
            m[:] = -np.inf
            for j in range(n_j):
                for i in range(n_i):
                    m[i] = max(m[i], sT[j, i])
            for i in range(n_i):                       # a query that sees no key: P = 0
                m[i] = 0 if m[i] == -np.inf else m[i]
            _exp_shifted(sT, m, taylor, log2e, ln2_hi, ln2_lo, t_min)   # P^T, unnormalised
            l[:] = 0
            for j in range(n_j):
                for i in range(n_i):
                    l[i] += sT[j, i]
            for i in range(n_i):
                if l[i] > 0:
                    lse[b, h, i0 + i] = m[i] + np.log(l[i])
                    l[i] = 1 / l[i]
                else:                                  # a query that sees no key: o = 0
                    lse[b, h, i0 + i] = -np.inf
            o_i = o_s[:n_i * D].reshape((n_i, D))
            np.dot(sT.T, v_h[:n_j], o_i)               # o = P v, then each row / l
            for i in range(n_i):
                for d in range(D):
                    o_i[i, d] *= l[i]
            _copy(o_i, one, o[b, h, i0:i0 + n_i])


@numba.njit(parallel=True, cache=True)
def _backward_kernel(q, k, v, o, do, lse, scale, key_mask, causal, window, prefix, taylor,
                     log2e, ln2_hi, ln2_lo, t_min, dq, dk, dv):
    """Writes dq (B, H, Nq, D), dk and dv (B, Hkv, Nk, D); every array may be a strided view.
    Rows with lse = -inf see no key: their P = 0, and so are their gradients."""
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = H // Hkv
    offset = Nk - Nq
    one = q.dtype.type(1)
    for task in numba.prange(B * Hkv):
        b, kv = task // Hkv, task % Hkv
        k_b, v_b = np.empty((Nk, D), q.dtype), np.empty((Nk, D), q.dtype)
        q_h, do_h = np.empty((Nq, D), q.dtype), np.empty((Nq, D), q.dtype)
        lse_h, delta = np.empty(Nq, q.dtype), np.empty(Nq, q.dtype)
        p, ds = np.empty(Nk * BLOCK_Q, q.dtype), np.empty(Nk * BLOCK_Q, q.dtype)
        dq_s = np.empty(BLOCK_Q * D, q.dtype)
        part = np.empty((Nk, D), q.dtype)              # one query block's share of dk, dv
        dk_b, dv_b = np.zeros((Nk, D), q.dtype), np.zeros((Nk, D), q.dtype)   # if Nq = 0
        _copy(k[b, kv], one, k_b)
        _copy(v[b, kv], one, v_b)
        for h in range(kv * G, (kv + 1) * G):
            _copy(q[b, h], scale, q_h)                 # scale q: S = q k^T, dk = dS^T q
            _copy(do[b, h], one, do_h)
            for i in range(Nq):
                lse_h[i] = 0 if lse[b, h, i] == -np.inf else lse[b, h, i]   # P = 0 there
                total = q.dtype.type(0)
                for d in range(D):
                    total += do_h[i, d] * o[b, h, i, d]
                delta[i] = total                       # delta = rowsum(do * o)
            last = (Nq - 1) // BLOCK_Q * BLOCK_Q       # the block that sees every key: first
            for i0 in range(last, -1, -BLOCK_Q):
                first = h == kv * G and i0 == last
                n_i = min(BLOCK_Q, Nq - i0)
                n_j = _keys_seen(i0 + n_i - 1 + offset, Nk, causal, prefix)
                q_i, do_i = q_h[i0:i0 + n_i], do_h[i0:i0 + n_i]
                # forward: S = q k^T, P = exp(S - lse)           (transposed here)
                pT = p[:n_j * n_i].reshape((n_j, n_i))
                np.dot(k_b[:n_j], q_i.T, pT)
                _mask_unseen(pT, key_mask[b], i0, offset, causal, window, prefix)
                _exp_shifted(pT, lse_h[i0:], taylor, log2e, ln2_hi, ln2_lo, t_min)
                # forward: o = P v  =>  dv += P^T do,  dP^T = v do^T
                _dot_add(pT, do_i, dv_b, part, first)
                dsT = ds[:n_j * n_i].reshape((n_j, n_i))
                np.dot(v_b[:n_j], do_i.T, dsT)
                # forward: P = softmax(S)  =>  dS = P (dP - delta)
                for j in range(n_j):
                    for i in range(n_i):
                        dsT[j, i] = pT[j, i] * (dsT[j, i] - delta[i0 + i])
                # forward: S = scale q k^T  =>  dk += dS^T (scale q),  dq = scale dS k
                _dot_add(dsT, q_i, dk_b, part, first)
                dq_i = dq_s[:n_i * D].reshape((n_i, D))
                np.dot(dsT.T, k_b[:n_j], dq_i)
                _copy(dq_i, scale, dq[b, h, i0:i0 + n_i])
        _copy(dk_b, one, dk[b, kv])
        _copy(dv_b, one, dv[b, kv])


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
    with one_blas_thread():
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
    with one_blas_thread():
        _backward_kernel(q, k, v, o, do, lse, q.dtype.type(shape.scale), mask, causal, window,
                         prefix, *exp_constants(q.dtype), dq, dk, dv)
    return dq, dk, dv
