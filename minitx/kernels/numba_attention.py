"""Fused attention on the CPU, compiled with numba: flash attention without the N x N matrix.

Forward, for each (b, h, block of query rows): stream the key/value blocks; per row keep the
running maximum m_i of the scores, the running sum l_i of exp(score - m_i) and the unnormalised
output acc; when a block raises m_i, first rescale l_i and acc by exp(m_old - m_new). At the end
o = acc / l_i and lse = m_i + log(l_i). Only block-sized scratch is allocated, never N x N.
Backward recomputes each score block from q, k and the saved lse (P = exp(S - lse)).
An additive bias is read block by block like the scores it is added to; attention dropout is
recomputed, not stored: its mask is a hash of (seed, b, h, i, j) (kernels/dropout_mask.py).

Set NUMBA_DISABLE_JIT=1 to run these functions as plain Python, e.g. to step through them in a
debugger (slow: use small inputs).

Parallelism without races: the forward runs one task per (b, h, query block), each writing its
own rows of o and lse. The backward runs one task per (b, kv head): it walks the key blocks and,
for each, every query block of every query head in the group, so it alone writes that kv head's
dk, dv and those query heads' dq: no atomics, no second pass over the scores. That is B * Hkv
parallel tasks, plenty for a CPU's few cores.

Where the time goes: each block product is one `np.dot`, which numba hands to BLAS (through
SciPy), the fastest matrix product the machine has. The other cost is one exp per score, and
numba's np.exp is a scalar libm call (no vectorised exp ships with pip's numba), slower than the
products themselves; `numba_math.exp` computes it from multiplications and additions instead,
and builds the power of two from its bits, in loops LLVM vectorises (12x faster than the scalar
call in float32, and faster than NumPy's own vectorised exp).
The score blocks are kept transposed, S^T (keys x queries), so that the per-query numbers
(m_i, l_i, lse, delta) run along the contiguous axis: every elementwise loop is then a plain
loop over a row that LLVM vectorises, and no reduction has to be reordered to get there.
Measured at (B=4, H=4, N=1024, D=32) float32 on one thread, the 7 products per block pair (2
forward, 5 backward) take about 85 % of the time, near the core's peak; the products whose big
operand is a transposed block (P^T v forward, dS^T k backward) run 30 % slower than the others,
as BLAS copies that operand into its own layout first.
"""
import functools
import sys

import numba
import numpy as np
import threadpoolctl

from . import dropout_mask
from ._checks import check_backward, check_forward, full_bias, kernel_options
from .numba_math import exp, exp_constants

SUPPORTED_DTYPES = ("float32", "float64")
# Block sizes, measured at (B=4, H=4, N=1024, D=32) on 2 cores (benchmarks/RESULTS.md): larger
# blocks make each BLAS call longer (its set-up is paid less often) while the blocks still fit in
# a core's L2 cache. The backward's five products per block pair favour square 256 blocks.
BLOCK_Q = 128            # forward: query rows per block
BLOCK_K = 256            # forward: keys per block
BACKWARD_BLOCK_Q = 256   # backward: query rows per block
BACKWARD_BLOCK_K = 256   # backward: keys per block


@numba.njit(cache=True, fastmath={"contract"})
def _exp_shifted(x, shift, taylor, log2e, ln2_hi, ln2_lo, t_min):
    """x[j, i] = exp(x[j, i] - shift[i]) in place, for x <= shift (scores minus their query's
    running maximum or lse; x is a transposed block, one column per query). The constants come
    from `exp_constants`; see numba_math.exp. Below t_min = -87 the result is 0: under 1e-37 of
    a softmax row's sum, which is at least 1."""
    for j in range(x.shape[0]):
        for i in range(x.shape[1]):
            x[j, i] = exp(x[j, i] - shift[i], taylor, log2e, ln2_hi, ln2_lo, t_min)


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
def _mask_scores(sT, key_mask, i0, j0, offset, causal, window, prefix):
    """Set the hidden entries of the transposed score block sT (keys j0..., queries i0...)
    to -inf."""
    n_j, n_i = sT.shape
    if _block_all_visible(i0 + offset, i0 + n_i - 1 + offset, j0, j0 + n_j, key_mask,
                          causal, window, prefix):
        return
    for jj in range(n_j):
        j = j0 + jj
        for ii in range(n_i):
            if not (key_mask[j] and _visible(i0 + ii + offset, j, causal, window, prefix)):
                sT[jj, ii] = -np.inf


_mix = numba.njit(cache=True)(dropout_mask.mix)


@numba.njit(cache=True)
def _add_bias(sT, bias, b, h, i0, j0):
    """sT[jj, ii] += bias[b, h, i0 + ii, j0 + jj]; bias's batch and head axes may be 1."""
    bias_bh = bias[b % bias.shape[0], h % bias.shape[1]]
    for jj in range(sT.shape[0]):
        for ii in range(sT.shape[1]):
            sT[jj, ii] += bias_bh[i0 + ii, j0 + jj]


@numba.njit(cache=True)
def _drop(xT, seed, threshold, keep_scale, b, h, H, Nq, Nk, i0, j0):
    """Multiply the transposed block xT (keys j0..., queries i0...) by the dropout factors:
    0 where the hash of (seed, b, h, i, j) says drop, 1 / (1 - p) where it says keep."""
    zero = keep_scale - keep_scale
    for jj in range(xT.shape[0]):
        for ii in range(xT.shape[1]):
            index = np.uint64(((b * H + h) * Nq + i0 + ii) * Nk + j0 + jj)
            kept = (_mix(index * dropout_mask.GOLDEN + seed) >> dropout_mask.S11) >= threshold
            xT[jj, ii] = xT[jj, ii] * keep_scale if kept else zero


@numba.njit(parallel=True, cache=True)
def _forward_kernel(q, k, v, key_mask, causal, window, prefix, bias, has_bias, seed, threshold,
                    keep_scale, dropping, taylor, log2e, ln2_hi, ln2_lo, t_min, o, lse):
    """q arrives multiplied by scale, so S = q k^T (+ bias). Writes o (B, H, Nq, D) and
    lse (B, H, Nq)."""
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = H // Hkv
    offset = Nk - Nq                  # query i sits at position i + offset
    n_qblocks = (Nq + BLOCK_Q - 1) // BLOCK_Q
    for task in numba.prange(B * H * n_qblocks):
        b, h, i0 = task // (H * n_qblocks), task // n_qblocks % H, task % n_qblocks * BLOCK_Q
        i1 = min(i0 + BLOCK_Q, Nq)
        n_i = i1 - i0
        q_i = q[b, h, i0:i1]                            # (n_i, D)
        acc = np.zeros((n_i, D), q.dtype)               # unnormalised o
        m_i = np.full(n_i, -np.inf, q.dtype)
        l_i = np.zeros(n_i, q.dtype)
        shift = np.empty(n_i, q.dtype)
        alpha = np.empty((1, n_i), q.dtype)             # a one-row block for _exp_shifted
        for j0 in range(0, Nk, BLOCK_K):
            j1 = min(j0 + BLOCK_K, Nk)
            if not _block_visible(i0 + offset, i1 - 1 + offset, j0, j1, causal, window, prefix):
                continue
            k_j, v_j = k[b, h // G, j0:j1], v[b, h // G, j0:j1]     # (n_j, D)
            sT = np.dot(k_j, q_i.T)                     # S^T block (n_j, n_i): a column per query
            if has_bias:
                _add_bias(sT, bias, b, h, i0, j0)
            _mask_scores(sT, key_mask[b], i0, j0, offset, causal, window, prefix)
            # online softmax: m_new = max(m_i, block's max); P = exp(S - m_new); the past
            # (l_i and acc) is rescaled by alpha = exp(m_i - m_new)
            alpha[0] = m_i
            for jj in range(j1 - j0):
                for ii in range(n_i):
                    m_i[ii] = np.maximum(m_i[ii], sT[jj, ii])
            for ii in range(n_i):             # a row that sees nothing yet keeps P = 0
                shift[ii] = 0 if m_i[ii] == -np.inf else m_i[ii]
            _exp_shifted(alpha, shift, taylor, log2e, ln2_hi, ln2_lo, t_min)
            for ii in range(n_i):
                l_i[ii] *= alpha[0, ii]
                acc[ii] *= alpha[0, ii]
            for jj in range(j1 - j0):         # P^T, summed into l_i in the same sweep
                for ii in range(n_i):
                    sT[jj, ii] = exp(sT[jj, ii] - shift[ii], taylor, log2e, ln2_hi, ln2_lo, t_min)
                    l_i[ii] += sT[jj, ii]
            if dropping:                      # l_i sums the probabilities before dropout
                _drop(sT, seed, threshold, keep_scale, b, h, H, Nq, Nk, i0, j0)
            acc += np.dot(sT.T, v_j)                                 # acc = alpha acc + (P M) v
        for ii in range(n_i):
            if l_i[ii] > 0:
                lse[b, h, i0 + ii] = m_i[ii] + np.log(l_i[ii])
                o[b, h, i0 + ii] = acc[ii] / l_i[ii]
            else:                              # the row sees no key at all
                lse[b, h, i0 + ii] = -np.inf
                o[b, h, i0 + ii] = 0


@numba.njit(parallel=True, cache=True)
def _backward_kernel(q, k, v, do, lse, delta, key_mask, causal, window, prefix, bias, has_bias,
                     seed, threshold, keep_scale, dropping, taylor, log2e, ln2_hi, ln2_lo, t_min,
                     dq, dk, dv, dbias):
    """q arrives multiplied by scale, so S = q k^T (+ bias) and dk = dS^T q; dq comes out
    without the factor scale. lse arrives with 0 for the rows that see no key (their scores are
    all -inf, so P = 0 there). Adds into dq (B, H, Nq, D), dk and dv (B, Hkv, Nk, D), zeroed;
    with a bias, writes dS into dbias (B, H, Nq, Nk), zeroed (every block at most once)."""
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = H // Hkv
    offset = Nk - Nq
    for task in numba.prange(B * Hkv):
        b, kv = task // Hkv, task % Hkv
        for j0 in range(0, Nk, BACKWARD_BLOCK_K):
            j1 = min(j0 + BACKWARD_BLOCK_K, Nk)
            k_j, v_j = k[b, kv, j0:j1], v[b, kv, j0:j1]             # (n_j, D)
            dk_j, dv_j = dk[b, kv, j0:j1], dv[b, kv, j0:j1]
            for h in range(kv * G, (kv + 1) * G):
                for i0 in range(0, Nq, BACKWARD_BLOCK_Q):
                    i1 = min(i0 + BACKWARD_BLOCK_Q, Nq)
                    if not _block_visible(i0 + offset, i1 - 1 + offset, j0, j1,
                                          causal, window, prefix):
                        continue
                    q_i, do_i = q[b, h, i0:i1], do[b, h, i0:i1]     # (n_i, D)
                    lse_i, delta_i = lse[b, h, i0:i1], delta[b, h, i0:i1]
                    # forward: S = q k^T (+ bias), transposed; it becomes P = exp(S - lse) below
                    pT = np.dot(k_j, q_i.T)
                    if has_bias:
                        _add_bias(pT, bias, b, h, i0, j0)
                    _mask_scores(pT, key_mask[b], i0, j0, offset, causal, window, prefix)
                    # forward: o = (P M) v  =>  dv += (P M)^T do,  dP = M do v^T
                    dsT = np.dot(v_j, do_i.T)
                    if dropping:
                        _drop(dsT, seed, threshold, keep_scale, b, h, H, Nq, Nk, i0, j0)
                    # forward: P = softmax(S)  =>  dS = P (dP - delta); one sweep makes P and dS
                    for jj in range(j1 - j0):
                        for ii in range(i1 - i0):
                            pT[jj, ii] = exp(pT[jj, ii] - lse_i[ii],
                                             taylor, log2e, ln2_hi, ln2_lo, t_min)
                            dsT[jj, ii] = pT[jj, ii] * (dsT[jj, ii] - delta_i[ii])
                    if dropping:
                        _drop(pT, seed, threshold, keep_scale, b, h, H, Nq, Nk, i0, j0)
                    dv_j += np.dot(pT, do_i)
                    # forward: S = q k^T + bias  =>  dk += dS^T q,  dq += dS k,  dbias = dS
                    dk_j += np.dot(dsT, q_i)
                    dq[b, h, i0:i1] += np.dot(dsT.T, k_j)
                    if has_bias:
                        dbias[b, h, i0:i1, j0:j1] = dsT.T


def _announce_compiling(kernel, dtype):
    """numba compiles a kernel at its first call on a machine (15 s or so for each of these two;
    later processes load it from numba's cache in __pycache__): say so rather than hang silently,
    and only then. (Under NUMBA_DISABLE_JIT=1 a kernel is a plain function, with nothing to
    compile.)"""
    if not hasattr(kernel, "signatures"):
        return
    if any(sig[0].dtype.name == dtype.name for sig in kernel.signatures):
        return   # compiled or loaded in this process already: the common case, no file read
    signatures = []
    try:  # what numba's cache on disk holds (its index, keyed by signature)
        signatures = [key[0] for key in kernel._cache._cache_file._load_index()]
    except Exception:  # numba's internals moved: announce rather than stay silent
        pass
    if not any(sig[0].dtype.name == dtype.name for sig in signatures):
        print(f"minitx: preparing the CPU attention kernel {kernel.py_func.__name__} for {dtype} "
              f"(compiled once per machine, about 15 s; loaded from the cache afterwards)",
              file=sys.stderr)


@functools.cache
def _blas_controller():
    """threadpoolctl's handle on the BLAS libraries loaded (SciPy's, which numba's np.dot calls,
    among them)."""
    import scipy.linalg.cython_blas  # noqa: F401  (loaded first, so that the handle holds it)
    return threadpoolctl.ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS runs on one thread. The CPU attention kernels spread their tasks
    over numba's threads, one per core; a BLAS call that started threads of its own on top would
    share those cores (on 2 cores at 2 BLAS threads the kernels took twice as long)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _check_dtype(q):
    if q.dtype.name not in SUPPORTED_DTYPES:
        raise ValueError(f"the numba attention kernel supports {SUPPORTED_DTYPES}, "
                         f"got {q.dtype}")


def _bias_and_dropout(shape, bias, dropout, seed, dtype):
    """The kernels' bias and dropout arguments: bias array, has_bias, seed, threshold,
    keep_scale, dropping (the same types whether or not there is a bias or dropout)."""
    return (full_bias(shape, bias, dtype, np), bias is not None, np.uint64(seed),
            dropout_mask.threshold(dropout), dtype.type(1 / (1 - dropout)), dropout > 0)


def attention_forward(q, k, v, *, causal=False, key_mask=None, window=None, prefix=None,
                      scale=None, bias=None, dropout=0.0, seed=0):
    """Fused forward: (o (B, H, Nq, D), lse (B, H, Nq)); same contract as reference."""
    shape = check_forward(q, k, v, causal=causal, key_mask=key_mask, window=window,
                          prefix=prefix, scale=scale, bias=bias, dropout=dropout)
    _check_dtype(q)
    mask, causal, window, prefix = kernel_options(shape, key_mask, causal, window, prefix, np)
    scale = q.dtype.type(shape.scale)
    q = np.multiply(q, scale, order="C")
    o = np.empty_like(q)
    lse = np.empty(q.shape[:3], q.dtype)
    _announce_compiling(_forward_kernel, q.dtype)
    with one_blas_thread():
        _forward_kernel(q, np.ascontiguousarray(k), np.ascontiguousarray(v), mask, causal,
                        window, prefix, *_bias_and_dropout(shape, bias, dropout, seed, q.dtype),
                        *exp_constants(q.dtype), o, lse)
    return o, lse


def attention_backward(q, k, v, o, lse, do, *, causal=False, key_mask=None, window=None,
                       prefix=None, scale=None, bias=None, dropout=0.0, seed=0):
    """Fused backward: (dq, dk, dv), and dbias with a bias; same contract as reference."""
    shape = check_backward(q, k, v, o, lse, do, causal=causal, key_mask=key_mask,
                           window=window, prefix=prefix, scale=scale, bias=bias, dropout=dropout)
    _check_dtype(q)
    mask, causal, window, prefix = kernel_options(shape, key_mask, causal, window, prefix, np)
    scale = q.dtype.type(shape.scale)
    q = np.multiply(q, scale, order="C")
    k, v, o, lse, do = (np.ascontiguousarray(x, dtype=q.dtype) for x in (k, v, o, lse, do))
    delta = (do * o).sum(axis=-1)                           # rowsum(do * o): (B, H, Nq)
    lse = np.where(lse == -np.inf, 0, lse).astype(q.dtype)  # see _backward_kernel
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    dbias = np.zeros((shape.B, shape.H, shape.Nq, shape.Nk) if bias is not None else (1, 1, 1, 1),
                     q.dtype)
    _announce_compiling(_backward_kernel, q.dtype)
    with one_blas_thread():
        _backward_kernel(q, k, v, do, lse, delta, mask, causal, window, prefix,
                         *_bias_and_dropout(shape, bias, dropout, seed, q.dtype),
                         *exp_constants(q.dtype), dq, dk, dv, dbias)
    dq *= scale                          # the kernel saw S = (scale q) k^T
    return (dq, dk, dv) if bias is None else (dq, dk, dv, dbias)
