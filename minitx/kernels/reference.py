"""Reference attention: the readable specification the fused kernels are tested against.

It builds the full (Nq, Nk) score matrix, so its memory grows as N^2; the fused kernels compute
the same numbers block by block. Written with the array module of its inputs (`xp`), it runs on
numpy and cupy alike.

    S = scale * q k^T + bias     masked entries set to -inf; bias optional (ALiBi, a learned
                                 relative-position bias: anything broadcast to (B, H, Nq, Nk))
    P = softmax(S)               row-wise, after subtracting the row maximum
    o = (P * M) v                lse = log(sum(exp(S))) per query row; M the dropout factors,
                                 0 or 1 / (1 - dropout) (kernels/dropout_mask.py), or 1

Grouped-query attention: query head h reads key/value head h // G, where G = H // Hkv. The code
views q as (B, Hkv, G, Nq, D) so that the G query heads of one group line up against their shared
key/value head, and sums the G contributions when it returns dk, dv.
"""
import numpy

from ..backend import get_array_module
from ._checks import check_backward, check_forward
from .dropout_mask import keep_mask


def visibility_mask(n_q, n_k, *, causal=False, key_mask=None, window=None, prefix=None,
                    xp=numpy):
    """Boolean (B or 1, 1, Nq, Nk): True where query row i may attend to key j.

    Query i sits at absolute position pos_i = i + (Nk - Nq), so the queries are the last Nq
    positions of the key sequence (a single query in KV-cache decoding sees every key).
    causal: j <= pos_i.  window=W: also j > pos_i - W.  prefix=P: keys j < P are visible to
    every query as well.  key_mask (B, Nk): False marks padding keys, hidden from every query.
    """
    pos = xp.arange(n_q)[:, None] + (n_k - n_q)   # (Nq, 1)
    j = xp.arange(n_k)[None, :]                   # (1, Nk)
    if causal:
        visible = j <= pos                        # (Nq, Nk)
        if window is not None:
            visible &= j > pos - window
        if prefix is not None:
            visible |= j < prefix
    else:
        visible = xp.ones((n_q, n_k), dtype=bool)
    visible = visible[None, None]                 # (1, 1, Nq, Nk)
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :]   # (B, 1, Nq, Nk)
    return visible


def _grouped(x, n_kv_head):
    """View (B, H, N, D) as (B, Hkv, G, N, D): query head h is member h % G of group h // G."""
    B, H, N, D = x.shape
    return x.reshape(B, n_kv_head, H // n_kv_head, N, D)


def _scores(q, k, mask, scale, bias):
    """Scaled scores of grouped q (B, Hkv, G, Nq, D) and k (B, Hkv, Nk, D), plus the bias;
    -inf where hidden."""
    xp = get_array_module(q, k)
    s = xp.matmul(q * q.dtype.type(scale), k[:, :, None].swapaxes(-1, -2))   # (B, Hkv, G, Nq, Nk)
    if bias is not None:
        s += _grouped(xp.broadcast_to(bias, s.shape[:1] + (s.shape[1] * s.shape[2],) + s.shape[3:]),
                      s.shape[1])
    xp.copyto(s, q.dtype.type(-numpy.inf), where=~mask)  # in place: s is the largest array here
    return s


def _dropout_factors(shape, dropout, seed, dtype, xp):
    """M, grouped (B, Hkv, G, Nq, Nk): 1 / (1 - dropout) where a probability is kept, else 0."""
    keep = keep_mask((shape.B, shape.H, shape.Nq, shape.Nk), dropout, seed, xp)
    return _grouped(keep * dtype.type(1 / (1 - dropout)), shape.Hkv)


def _mask(shape, xp, causal, key_mask, window, prefix):
    """The visibility mask broadcastable against grouped scores (B, Hkv, G, Nq, Nk)."""
    mask = visibility_mask(shape.Nq, shape.Nk, causal=causal, key_mask=key_mask, window=window,
                           prefix=prefix, xp=xp)
    return mask[:, :, None]                                      # (B or 1, 1, 1, Nq, Nk)


def attention_forward(q, k, v, *, causal=False, key_mask=None, window=None, prefix=None,
                      scale=None, bias=None, dropout=0.0, seed=0):
    """o = (softmax(scale q k^T + bias, masked) * M) v and the row log-sum-exp lse; see
    `visibility_mask` and the module docstring (M: dropout, drawn from `seed`).

    Returns o (B, H, Nq, D) and lse (B, H, Nq). A row with no visible key has o = 0, lse = -inf.
    """
    shape = check_forward(q, k, v, causal=causal, key_mask=key_mask, window=window,
                          prefix=prefix, scale=scale, bias=bias, dropout=dropout)
    B, H, Hkv, Nq, Nk, D, scale = shape
    xp = get_array_module(q, k, v)
    zero = q.dtype.type(0)
    mask = _mask(shape, xp, causal, key_mask, window, prefix)
    s = _scores(_grouped(q, Hkv), k, mask, scale, bias)      # (B, Hkv, G, Nq, Nk)
    m = s.max(axis=-1, keepdims=True)                         # (B, Hkv, G, Nq, 1)
    m = xp.where(m == -numpy.inf, zero, m)   # empty row: exp(-inf - 0) = 0 rather than NaN
    p = s
    p -= m                                   # in place, s becomes p = exp(s - m)
    xp.exp(p, out=p)
    l = p.sum(axis=-1, keepdims=True)                         # (B, Hkv, G, Nq, 1)
    has_key = l > 0
    l = xp.where(has_key, l, q.dtype.type(1))                 # empty row: divide 0 by 1
    p /= l
    if dropout:
        p *= _dropout_factors(shape, dropout, seed, q.dtype, xp)
    o = xp.matmul(p, v[:, :, None])                           # (B, Hkv, G, Nq, D)
    lse = xp.where(has_key, m + xp.log(l), q.dtype.type(-numpy.inf))
    return o.reshape(B, H, Nq, D), lse.reshape(B, H, Nq)


def attention_backward(q, k, v, o, lse, do, *, causal=False, key_mask=None, window=None,
                       prefix=None, scale=None, bias=None, dropout=0.0, seed=0):
    """Gradients (dq, dk, dv) of attention given o, lse from the forward and the output grad do;
    with a bias, (dq, dk, dv, dbias), dbias (B, H, Nq, Nk) (summed to the bias's own shape by
    the caller).

    P is recomputed from the saved lse, as the fused kernels do, and M from the seed. Rows with
    no visible key (lse = -inf) have P = 0, hence zero gradients.
    """
    shape = check_backward(q, k, v, o, lse, do, causal=causal, key_mask=key_mask,
                           window=window, prefix=prefix, scale=scale, bias=bias, dropout=dropout)
    B, H, Hkv, Nq, Nk, D, scale = shape
    xp = get_array_module(q, k, v, o, lse, do)
    mask = _mask(shape, xp, causal, key_mask, window, prefix)
    q, o, do = (_grouped(x, Hkv) for x in (q, o, do))         # (B, Hkv, G, Nq, D)
    lse = lse.reshape(B, Hkv, H // Hkv, Nq, 1)
    lse = xp.where(lse == -numpy.inf, q.dtype.type(0), lse)  # empty row: every s is -inf, P = 0
    p = _scores(q, k, mask, scale, bias)
    p -= lse
    xp.exp(p, out=p)                                          # P = exp(S - lse), in place
    m = _dropout_factors(shape, dropout, seed, q.dtype, xp) if dropout else None
    # forward: o = (P M) v  =>  dv = (P M)^T do (summed over the G query heads), dP = M do v^T
    dv = xp.matmul((p if m is None else p * m).swapaxes(-1, -2), do).sum(axis=2)  # (B, Hkv, Nk, D)
    ds = xp.matmul(do, v[:, :, None].swapaxes(-1, -2))        # (B, Hkv, G, Nq, Nk)
    if m is not None:
        ds *= m
    # forward: P = softmax(S)  =>  dS = P * (dP - delta), delta = rowsum(P * dP) = rowsum(do * o)
    ds -= (do * o).sum(axis=-1, keepdims=True)               # delta: (B, Hkv, G, Nq, 1)
    ds *= p                                                   # dP becomes dS in place
    # forward: S = scale q k^T + bias  =>  dq = scale dS k,  dk = scale dS^T q,  dbias = dS
    dq = xp.matmul(ds, k[:, :, None]) * scale                 # (B, Hkv, G, Nq, D)
    dk = xp.matmul(ds.swapaxes(-1, -2), q).sum(axis=2) * scale   # (B, Hkv, Nk, D)
    grads = dq.reshape(B, H, Nq, D), dk, dv
    return grads if bias is None else grads + (ds.reshape(B, H, Nq, Nk),)
