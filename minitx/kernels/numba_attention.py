"""Fused attention on the CPU, compiled with numba: flash attention without the N x N matrix.

Forward, for each (b, h, block of query rows): stream the key/value blocks; per row keep the
running maximum m_i of the scores, the running sum l_i of exp(score - m_i) and the unnormalised
output acc; when a block raises m_i, first rescale l_i and acc by exp(m_old - m_new). At the end
o = acc / l_i and lse = m_i + log(l_i). Only block-sized scratch is allocated, never N x N.
Backward recomputes each score block from q, k and the saved lse (P = exp(S - lse)).

Set NUMBA_DISABLE_JIT=1 to run these functions as plain Python, e.g. to step through them in a
debugger (slow: use small inputs).

Parallelism without races: the forward runs one task per (b, h, query block), each writing its
own rows of o and lse. The backward runs one task per (b, kv head): it walks the key blocks and,
for each, every query block of every query head in the group, so it alone writes that kv head's
dk, dv and those query heads' dq: no atomics, no second pass over the scores. That is B * Hkv
parallel tasks, plenty for a CPU's few cores.

Speed without fastmath: LLVM vectorises a loop y[c] += w * x[c] over contiguous memory, but not
a dot product (that would reorder its additions). So every block product is a loop of such row
updates (`_add_rows`), and its innermost loop runs along a block of 64 keys or queries, never
along D (often only 32 long). Hence the transposed layouts: kT, vT, qT, doT are (D, N), the
accumulators o^T, dq^T, dk^T, dv^T are (D, N), and a P or dS block is transposed before it is
accumulated along queries. Arithmetic stays in the input dtype (float32 accumulates in float32).
"""
import os

import numba
import numpy as np

from ._checks import check_backward, check_forward, kernel_options

# numba's default thread pool on Linux is OpenMP, whose idle threads spin for a while after each
# kernel and take the core that NumPy's BLAS threads need next (on 2 cores a training step ran
# 3x slower). numba's own "workqueue" pool lets idle threads sleep. A user's choice wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

SUPPORTED_DTYPES = ("float32", "float64")
BLOCK_Q = 64   # query rows per block
BLOCK_K = 128   # keys per block


@numba.njit(cache=True)
def _visible(pos, j, causal, window, prefix):
    """May the query at absolute position pos see key j? (the key mask is checked apart)"""
    return not causal or j < prefix or pos - window < j <= pos


@numba.njit(cache=True)
def _block_visible(pos_first, pos_last, j0, j1, causal, window, prefix):
    """Does any query with position in [pos_first, pos_last] see any key in [j0, j1)?"""
    return not causal or j0 < prefix or (j0 <= pos_last and j1 - 1 > pos_first - window)


@numba.njit(cache=True)
def _block_all_visible(pos_first, pos_last, j0, j1, key_mask, causal, window, prefix):
    """Does every query with position in [pos_first, pos_last] see every key in [j0, j1)?"""
    for j in range(j0, j1):
        if not key_mask[j]:
            return False
    return not causal or j1 <= prefix or (j1 - 1 <= pos_first and j0 > pos_last - window)


@numba.njit(cache=True)
def _add_rows(y, w, x, c0):
    """y += w @ x[:len(w), c0:c0+len(y)]: the rows of x, weighted by w, added to y.

    Four rows of x per pass, so y is loaded and stored once per four rows; the additions still
    happen one row after the other, exactly as in the plain loop.
    """
    n, m = w.shape[0], y.shape[0]
    n4 = n - n % 4
    for t in range(0, n4, 4):
        w0, w1, w2, w3 = w[t], w[t + 1], w[t + 2], w[t + 3]
        x0, x1 = x[t, c0:c0 + m], x[t + 1, c0:c0 + m]
        x2, x3 = x[t + 2, c0:c0 + m], x[t + 3, c0:c0 + m]
        for c in range(m):
            y[c] = y[c] + w0 * x0[c] + w1 * x1[c] + w2 * x2[c] + w3 * x3[c]
    for t in range(n4, n):
        w0, x0 = w[t], x[t, c0:c0 + m]
        for c in range(m):
            y[c] += w0 * x0[c]


@numba.njit(cache=True)
def _product(a, i0, n_i, bT, j0, n_j, out):
    """out[:n_i, :n_j] = a[i0:i0+n_i] @ bT[:, j0:j0+n_j]; a (N, D), bT (D, M)."""
    for ii in range(n_i):
        out[ii, :n_j] = 0
        _add_rows(out[ii, :n_j], a[i0 + ii], bT, j0)


@numba.njit(cache=True)
def _add_product(yT, c0, wT, r0, x, n, m):
    """yT[:, c0:c0+m] += wT[:, r0:r0+n] @ x[:n, :m]; yT (D, .), wT (D, .), x a block."""
    for d in range(yT.shape[0]):
        _add_rows(yT[d, c0:c0 + m], wT[d, r0:r0 + n], x, 0)


@numba.njit(cache=True)
def _transpose(a, n_i, n_j, out):
    """out[:n_j, :n_i] = a[:n_i, :n_j].T"""
    for jj in range(n_j):
        for ii in range(n_i):
            out[jj, ii] = a[ii, jj]


@numba.njit(cache=True)
def _mask_scores(s, key_mask, i0, n_i, j0, n_j, offset, causal, window, prefix):
    """Set hidden entries of the score block s[:n_i, :n_j] to -inf."""
    if _block_all_visible(i0 + offset, i0 + n_i - 1 + offset, j0, j0 + n_j, key_mask,
                          causal, window, prefix):
        return
    for ii in range(n_i):
        pos = i0 + ii + offset
        for jj in range(n_j):
            j = j0 + jj
            if not (key_mask[j] and _visible(pos, j, causal, window, prefix)):
                s[ii, jj] = -np.inf


@numba.njit(parallel=True, cache=True)
def _forward_kernel(q, kT, vT, key_mask, causal, window, prefix, o, lse):
    """q arrives multiplied by scale, so S = q k^T. Writes o (B, H, Nq, D) and lse (B, H, Nq)."""
    B, H, Nq, D = q.shape
    Hkv, Nk = kT.shape[1], kT.shape[3]
    G = H // Hkv
    offset = Nk - Nq                  # query i sits at position i + offset
    n_qblocks = (Nq + BLOCK_Q - 1) // BLOCK_Q
    for task in numba.prange(B * H * n_qblocks):
        b, h, i0 = task // (H * n_qblocks), task // n_qblocks % H, task % n_qblocks * BLOCK_Q
        n_i = min(BLOCK_Q, Nq - i0)
        q_bh, kT_b, vT_b, mask_b = q[b, h], kT[b, h // G], vT[b, h // G], key_mask[b]
        s = np.empty((BLOCK_Q, BLOCK_K), q.dtype)       # S block, then P block
        pT = np.empty((BLOCK_K, BLOCK_Q), q.dtype)
        accT = np.zeros((D, BLOCK_Q), q.dtype)          # unnormalised o^T
        m_i = np.full(BLOCK_Q, -np.inf, q.dtype)
        l_i = np.zeros(BLOCK_Q, q.dtype)
        alpha = np.empty(BLOCK_Q, q.dtype)
        for j0 in range(0, Nk, BLOCK_K):
            n_j = min(BLOCK_K, Nk - j0)
            if not _block_visible(i0 + offset, i0 + n_i - 1 + offset, j0, j0 + n_j,
                                  causal, window, prefix):
                continue
            _product(q_bh, i0, n_i, kT_b, j0, n_j, s)                     # S = q k^T
            _mask_scores(s, mask_b, i0, n_i, j0, n_j, offset, causal, window, prefix)
            # online softmax: each row of S becomes P = exp(S - m_new); alpha rescales the past
            for ii in range(n_i):
                m_new = m_i[ii]
                for jj in range(n_j):
                    m_new = max(m_new, s[ii, jj])
                if m_new == -np.inf:           # nothing visible in this row yet
                    alpha[ii] = 1
                    s[ii, :n_j] = 0
                    continue
                alpha[ii] = np.exp(m_i[ii] - m_new)    # 0 at the row's first visible block
                l = l_i[ii] * alpha[ii]
                for jj in range(n_j):
                    s[ii, jj] = np.exp(s[ii, jj] - m_new)
                    l += s[ii, jj]
                l_i[ii] = l
                m_i[ii] = m_new
            # acc = alpha acc + P v, kept transposed: o^T = alpha o^T + v^T P^T
            for d in range(D):
                for ii in range(n_i):
                    accT[d, ii] *= alpha[ii]
            _transpose(s, n_i, n_j, pT)
            _add_product(accT, 0, vT_b, j0, pT, n_j, n_i)
        for ii in range(n_i):
            if l_i[ii] > 0:
                lse[b, h, i0 + ii] = m_i[ii] + np.log(l_i[ii])
                for d in range(D):
                    o[b, h, i0 + ii, d] = accT[d, ii] / l_i[ii]
            else:                              # the row sees no key at all
                lse[b, h, i0 + ii] = -np.inf
                o[b, h, i0 + ii, :] = 0


@numba.njit(parallel=True, cache=True)
def _backward_kernel(q, qT, kT, vT, do, doT, lse, delta, key_mask, causal, window, prefix,
                     dqT, dkT, dvT):
    """q, qT arrive multiplied by scale, so S = q k^T and dk = dS^T q; dq^T comes out without
    the factor scale. Adds into dqT (B, H, D, Nq), dkT and dvT (B, Hkv, D, Nk), zeroed."""
    B, H, Nq, D = q.shape
    Hkv, Nk = kT.shape[1], kT.shape[3]
    G = H // Hkv
    offset = Nk - Nq
    for task in numba.prange(B * Hkv):
        b, kv = task // Hkv, task % Hkv
        kT_b, vT_b, mask_b = kT[b, kv], vT[b, kv], key_mask[b]
        p = np.empty((BLOCK_Q, BLOCK_K), q.dtype)
        ds = np.empty((BLOCK_Q, BLOCK_K), q.dtype)
        dsT = np.empty((BLOCK_K, BLOCK_Q), q.dtype)
        for j0 in range(0, Nk, BLOCK_K):
            n_j = min(BLOCK_K, Nk - j0)
            for h in range(kv * G, (kv + 1) * G):
                for i0 in range(0, Nq, BLOCK_Q):
                    n_i = min(BLOCK_Q, Nq - i0)
                    if not _block_visible(i0 + offset, i0 + n_i - 1 + offset, j0, j0 + n_j,
                                          causal, window, prefix):
                        continue
                    # forward: S = q k^T, P = exp(S - lse)
                    _product(q[b, h], i0, n_i, kT_b, j0, n_j, p)
                    _mask_scores(p, mask_b, i0, n_i, j0, n_j, offset, causal, window, prefix)
                    for ii in range(n_i):
                        lse_i = lse[b, h, i0 + ii]
                        if lse_i == -np.inf:            # the row sees no key: P = 0
                            p[ii, :n_j] = 0
                        else:
                            for jj in range(n_j):
                                p[ii, jj] = np.exp(p[ii, jj] - lse_i)
                    # forward: o = P v  =>  dv += P^T do (as dv^T += do^T P),  dP = do v^T
                    _add_product(dvT[b, kv], j0, doT[b, h], i0, p, n_i, n_j)
                    _product(do[b, h], i0, n_i, vT_b, j0, n_j, ds)
                    # forward: P = softmax(S)  =>  dS = P (dP - delta)
                    for ii in range(n_i):
                        delta_i = delta[b, h, i0 + ii]
                        for jj in range(n_j):
                            ds[ii, jj] = p[ii, jj] * (ds[ii, jj] - delta_i)
                    # forward: S = q k^T  =>  dk^T += q^T dS,  dq^T += k^T dS^T
                    _add_product(dkT[b, kv], j0, qT[b, h], i0, ds, n_i, n_j)
                    _transpose(ds, n_i, n_j, dsT)
                    _add_product(dqT[b, h], i0, kT_b, j0, dsT, n_j, n_i)


def _check_dtype(q):
    if q.dtype.name not in SUPPORTED_DTYPES:
        raise ValueError(f"the numba attention kernel supports {SUPPORTED_DTYPES}, "
                         f"got {q.dtype}")


def _transposed(x):
    """(B, H, N, D) <-> (B, H, D, N), as a new contiguous array."""
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2))


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
    _forward_kernel(q, _transposed(k), _transposed(v), mask, causal, window, prefix, o, lse)
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
    o, lse, do = (np.ascontiguousarray(x, dtype=q.dtype) for x in (o, lse, do))
    B, H, Hkv, Nq, Nk, D, _ = shape
    delta = (do * o).sum(axis=-1)                           # rowsum(do * o): (B, H, Nq)
    dqT = np.zeros((B, H, D, Nq), q.dtype)
    dkT = np.zeros((B, Hkv, D, Nk), q.dtype)
    dvT = np.zeros((B, Hkv, D, Nk), q.dtype)
    _backward_kernel(q, _transposed(q), _transposed(k), _transposed(v), do, _transposed(do),
                     lse, delta, mask, causal, window, prefix, dqT, dkT, dvT)
    dq = _transposed(dqT)
    dq *= scale                          # the kernel saw S = (scale q) k^T
    return dq, _transposed(dkT), _transposed(dvT)
