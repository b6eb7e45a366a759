"""Multi-head attention: self-attention, cross-attention, grouped-query heads and a KV cache.

    q = x Wq,  k = m Wk,  v = m Wv      m = x for self-attention, the encoder output for cross
    split into heads: q (B, H, N, D), k and v (B, Hkv, M, D)
    y = softmax(q k^T / sqrt(D) + mask) v, heads joined again, then y Wo
With a KV cache, the keys and values of earlier tokens are kept, so decoding one more token
costs one row of attention instead of re-running the whole sequence.
"""
from ..autograd import is_grad_enabled
from ..backend import get_array_module
from ..tensor import Tensor
from . import functional as F
from .layers import Dropout, Linear
from .module import Module
from .positions import apply_rope


class KVCache:
    """Keys and values of the tokens processed so far, per attention layer, for incremental decoding.

    `length` counts the tokens already processed (the position of the next one). Each layer's
    keys and values live in a buffer that doubles when full, so appending a token writes one
    position instead of copying the whole history. Cross-attention keys and values depend only
    on the encoder output, so they are computed once and kept. The cache is for inference: it
    holds plain arrays outside the graph, so it must be used under `minitx.no_grad()`.
    """

    def __init__(self):
        self.length = 0
        self._entries = {}  # key -> (k buffer, v buffer, positions filled) or a static (k, v)

    def update(self, key, k, v, static=False):
        """Append k, v (B, Hkv, N, D) to what `key` holds (or keep them as they are when static);
        returns all keys and values so far."""
        if is_grad_enabled():
            raise RuntimeError("KVCache is for inference: run the model under minitx.no_grad()")
        if static:
            self._entries[key] = (k, v)
            return k, v
        kbuf, vbuf, n = self._entries.get(key, (None, None, 0))
        new = k.shape[2]
        if kbuf is None or n + new > kbuf.shape[2]:
            xp = get_array_module(k.data)
            capacity = max(2 * (n + new), 16)
            grown = [xp.empty(k.shape[:2] + (capacity,) + k.shape[3:], k.dtype) for _ in range(2)]
            if kbuf is not None:
                grown[0][:, :, :n], grown[1][:, :, :n] = kbuf[:, :, :n], vbuf[:, :, :n]
            kbuf, vbuf = grown
        kbuf[:, :, n:n + new], vbuf[:, :, n:n + new] = k.data, v.data
        self._entries[key] = (kbuf, vbuf, n + new)
        return Tensor._make(kbuf[:, :, :n + new], False, None), Tensor._make(vbuf[:, :, :n + new], False, None)

    def truncate(self, n):
        """Forget every token after the first n, as if only they had been processed: the buffers
        stay, and the next update writes over the forgotten positions (speculative decoding rolls
        back rejected draft tokens this way). Cross-attention keys and values are kept."""
        if not 0 <= n <= self.length:
            raise ValueError(f"can only truncate to 0..{self.length} tokens, got {n}")
        self.length = n
        self._entries = {key: (entry[0], entry[1], min(entry[2], n)) if len(entry) == 3 else entry
                         for key, entry in self._entries.items()}

    def get_static(self, key):
        return self._entries.get(key)


class MultiHeadAttention(Module):
    def __init__(self, d_model, n_head, n_kv_head=None, bias=True, dropout=0.0, rope=False,
                 window=None, proj_std=0.02, kernels="auto", rope_base=10000.0):
        n_kv_head = n_kv_head or n_head
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        if n_head % n_kv_head:
            raise ValueError(f"n_head={n_head} is not divisible by n_kv_head={n_kv_head}")
        self.n_head, self.n_kv_head, self.d_head = n_head, n_kv_head, d_model // n_head
        self.rope, self.rope_base, self.window, self.kernels = rope, rope_base, window, kernels
        self.q = Linear(d_model, n_head * self.d_head, bias)
        self.kv = Linear(d_model, 2 * n_kv_head * self.d_head, bias)
        self.out = Linear(n_head * self.d_head, d_model, bias, std=proj_std)
        self.drop = Dropout(dropout)

    def forward(self, x, memory=None, *, causal=False, mask=None, prefix=None, cache=None, start=0):
        """x (B, N, d_model) -> (B, N, d_model). memory (B, M, d_model) makes it cross-attention;
        mask (B, M) marks the keys that may be attended (False = padding)."""
        B, N, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.d_head
        cross = memory is not None
        q = self.q(x).reshape(B, N, H, D).permute(0, 2, 1, 3)                   # (B, H, N, D)
        cached = cache.get_static((self, cross)) if cache is not None and cross else None
        if cached is not None:
            k, v = cached
        else:
            source = memory if cross else x
            M = source.shape[1]
            kv = self.kv(source).reshape(B, M, 2, Hkv, D).permute(2, 0, 3, 1, 4)  # (2, B, Hkv, M, D)
            k, v = kv[0], kv[1]
            if self.rope and not cross:
                q, k = apply_rope(q, start, self.rope_base), apply_rope(k, start, self.rope_base)
            if cache is not None:
                k, v = cache.update((self, cross), k, v, static=cross)
        causal = causal and not cross  # window and prefix refine the causal mask
        y = F.scaled_dot_product_attention(q, k, v, causal=causal, mask=mask,
                                           window=self.window if causal else None,
                                           prefix=prefix if causal else None,
                                           kernels=self.kernels)
        y = y.permute(0, 2, 1, 3).reshape(B, N, H * D)                          # (B, N, d_model)
        return self.drop(self.out(y))
