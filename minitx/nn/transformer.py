"""One Transformer block, one stack of them, and the three architectures built from it.

    encoder-decoder  (Vaswani et al. 2017)  bidirectional encoder; a causal decoder whose every
                     layer also cross-attends to the encoder's final layer
    encoder-only     (BERT, Devlin et al. 2018)  a bidirectional stack; one vector per sequence
                     (first token or mean) feeds a task head
    decoder-only     (GPT, Radford et al. 2018)  one causal stack predicting the next token; a
                     supervised task is input + target concatenated, the loss on the target only,
                     and the prefix-LM mask (bidirectional over the input) is one argument away
All three use the same Block; what differs is a handful of switches: the mask (causal or
not), cross-attention on or off, and which parameters are shared.
"""
from dataclasses import dataclass, fields
from typing import Optional

from .. import ops
from ..backend import array_module, device_of, get_array_module
from ..config_check import UNIT_INTERVAL, above, at_least, check, one_of, require
from ..kernels import KERNELS
from ..ops.shape import check_range
from ..tensor import Tensor, as_array
from .attention import KVCache, MultiHeadAttention
from .layers import MLP, NORMS, Dropout, Embedding, Linear, residual_std
from .module import Module
from .positions import POSITIONS, make_positions


MODEL_RULES = {name: at_least(1) for name in ("vocab_size", "block_size", "n_layer", "n_head",
                                              "n_kv_head", "d_model", "d_ff", "window")}
MODEL_RULES.update(dropout=UNIT_INTERVAL, norm=one_of(*NORMS), pos=one_of(*POSITIONS),
                   mlp=one_of("gelu", "swiglu"), kernels=one_of(*KERNELS), norm_eps=above(0),
                   gelu=one_of("tanh", "none"), rope_base=above(0), n_token_types=at_least(0))


@dataclass
class TransformerConfig:
    vocab_size: int = 65
    block_size: int = 64           # longest sequence (positions 0 .. block_size-1)
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: Optional[int] = None  # key/value heads; None = n_head, fewer = grouped-query
    d_model: int = 128
    d_ff: Optional[int] = None     # MLP width; None = 4 * d_model
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layer"            # "layer" | "rms"
    norm_first: bool = True        # pre-LN (GPT-2); False = post-LN (the original Transformer)
    pos: str = "learned"           # "learned" | "sinusoidal" | "rope"
    mlp: str = "gelu"              # "gelu" | "swiglu"
    window: Optional[int] = None   # sliding-window attention in causal layers
    kernels: str = "auto"          # "auto" | "fused" | "reference" (see minitx.kernels.choose)
    # switches that published models need (the defaults are minitx's own choices)
    norm_eps: Optional[float] = None  # None = the norm's default (LayerNorm 1e-5, RMSNorm 1e-6)
    gelu: str = "tanh"             # GELU form: "tanh" (GPT-2) | "none", the exact erf (BERT)
    rope_base: float = 10000.0     # RoPE frequencies base^(-2i/D)
    n_token_types: int = 0         # segment embeddings added to the tokens (BERT: 2)
    embed_norm: bool = False       # a norm on the embeddings before layer 0 (BERT)
    tied_output: bool = True       # output layer = the token embedding; False = a Linear of its own

    def __post_init__(self):
        check(self, MODEL_RULES)
        require(self.d_model % self.n_head == 0,
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        require(self.n_head % (self.n_kv_head or self.n_head) == 0,
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def make_norm(cfg):
    """The norm that cfg asks for, with its epsilon."""
    eps = {} if cfg.norm_eps is None else {"eps": cfg.norm_eps}
    return NORMS[cfg.norm](cfg.d_model, cfg.bias, kernels=cfg.kernels, **eps)


class Block(Module):
    """Self-attention, then (optionally) cross-attention, then the MLP, each a residual branch.

    share_cross_self: cross-attention reuses the self-attention's weights.
    shared: another Block whose self-attention, MLP and norms this one reuses (parameter sharing
    between an encoder layer and a decoder layer).
    """

    def __init__(self, cfg, cross_attn=False, share_cross_self=False, shared=None):
        proj_std = residual_std(cfg.n_layer)

        def attention():
            return MultiHeadAttention(cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.bias, cfg.dropout,
                                      rope=cfg.pos == "rope", window=cfg.window, proj_std=proj_std,
                                      kernels=cfg.kernels, rope_base=cfg.rope_base)
        self.norm_first = cfg.norm_first
        self.ln_attn = shared.ln_attn if shared else make_norm(cfg)
        self.attn = shared.attn if shared else attention()
        self.ln_mlp = shared.ln_mlp if shared else make_norm(cfg)
        self.mlp = shared.mlp if shared else MLP(cfg.d_model, cfg.d_ff or 4 * cfg.d_model, cfg.mlp,
                                                 cfg.bias, cfg.dropout, proj_std, cfg.kernels,
                                                 cfg.gelu)
        self.ln_cross = make_norm(cfg) if cross_attn else None
        self.cross = (self.attn if share_cross_self else attention()) if cross_attn else None

    def residual(self, x, norm, sublayer):
        """pre-LN: x + f(norm(x));  post-LN: norm(x + f(x))."""
        return x + sublayer(norm(x)) if self.norm_first else norm(x + sublayer(x))

    def forward(self, x, *, causal, mask=None, prefix=None, memory=None, memory_mask=None,
                cache=None, start=0):
        x = self.residual(x, self.ln_attn, lambda h: self.attn(
            h, causal=causal, mask=mask, prefix=prefix, cache=cache, start=start))
        if self.cross is not None:
            x = self.residual(x, self.ln_cross, lambda h: self.cross(h, memory, mask=memory_mask,
                                                                     cache=cache))
        return self.residual(x, self.ln_mlp, self.mlp)


class Stack(Module):
    """n_layer Blocks and, with pre-LN, a final norm."""

    def __init__(self, cfg, cross_attn=False, share_cross_self=False, shared=None):
        self.blocks = [Block(cfg, cross_attn, share_cross_self, shared.blocks[i] if shared else None)
                       for i in range(cfg.n_layer)]
        self.ln_final = make_norm(cfg) if cfg.norm_first else None

    def forward(self, x, memories=None, every_layer=False, **kwargs):
        """x (B, N, d_model) -> (B, N, d_model); `memories` has one encoder output per block.
        every_layer=True returns the (final-normed) output of every block instead of the last."""
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x, memory=memories[i] if memories else None, **kwargs)
            if every_layer or i == len(self.blocks) - 1:
                outputs.append(self.ln_final(x) if self.ln_final else x)
        return outputs if every_layer else outputs[-1]


class Embedder(Module):
    """Token ids (B, N) -> vectors (B, N, d_model): token embedding + positions (+ segment
    embeddings, then a norm, as in BERT), then dropout; and the output layer back to the vocabulary."""

    def __init__(self, cfg, vocab_size):
        self.vocab_size, self.block_size = vocab_size, cfg.block_size
        self.tokens = Embedding(vocab_size, cfg.d_model)
        self.positions = make_positions(cfg.pos, cfg.block_size, cfg.d_model)
        self.token_types = Embedding(cfg.n_token_types, cfg.d_model) if cfg.n_token_types else None
        self.norm = make_norm(cfg) if cfg.embed_norm else None
        self.drop = Dropout(cfg.dropout)
        self.output = None if cfg.tied_output else Linear(cfg.d_model, vocab_size, bias=False)

    def forward(self, ids, start=0, token_types=None):
        """token_types (B, N): the segment of each token (all 0 when None)."""
        ids = as_array(ids)                   # where they live: host ids are checked for free
        if ids.ndim != 2:
            raise ValueError(f"token ids must be (batch, sequence), got shape {ids.shape}")
        if start + ids.shape[1] > self.block_size:
            raise ValueError(f"sequence of {start + ids.shape[1]} tokens is longer than "
                             f"block_size={self.block_size}")
        check_range(ids, 0, self.vocab_size, "token ids")
        x = self.positions(self.tokens(ids), start)                             # (B, N, d_model)
        if self.token_types is not None:
            xp = get_array_module(ids)
            types = xp.zeros(ids.shape, int) if token_types is None else as_array(token_types)
            x = x + self.token_types(types)
        return self.drop(self.norm(x) if self.norm else x)

    def logits(self, h):
        """Scores over the vocabulary: the output layer, or the embedding matrix when tied."""
        if self.output is not None:
            return self.output(h)
        return ops.einsum("bnd,vd->bnv", h, self.tokens.weight)


def lm_loss(logits, targets, loss_mask=None):
    """Next-token cross-entropy; positions where loss_mask is False (or targets are -100) don't count."""
    targets = as_array(targets)                 # where they live, as ops.cross_entropy checks them
    if loss_mask is not None:
        loss_mask = as_array(loss_mask, device_of(targets))
        if loss_mask.shape != targets.shape:
            raise ValueError(f"loss_mask of shape {loss_mask.shape} does not match targets {targets.shape}")
        targets = get_array_module(targets).where(loss_mask, targets, -100)
    return ops.cross_entropy(logits, targets, ignore_index=-100)


class DecoderOnly(Module):
    """GPT: a causal stack over tokens, predicting each next token; output layer tied to the
    token embedding (or its own, with tied_output=False)."""

    def __init__(self, cfg):
        self.config = cfg
        self.embed = Embedder(cfg, cfg.vocab_size)
        self.stack = Stack(cfg)

    def forward(self, ids, targets=None, *, loss_mask=None, prefix=None, mask=None, cache=None):
        """ids (B, N) -> (logits (B, N, vocab_size), loss or None).

        targets (B, N): the next tokens; loss_mask (B, N): count the loss only where True
        (the target part of an input+target example); prefix=P: the first P tokens attend
        bidirectionally (prefix LM); cache: a KVCache to decode incrementally.
        """
        start = cache.length if cache is not None else 0
        h = self.stack(self.embed(ids, start), causal=True, prefix=prefix, mask=mask, cache=cache,
                       start=start)
        if cache is not None:
            cache.length += h.shape[1]
        logits = self.embed.logits(h)
        return logits, (lm_loss(logits, targets, loss_mask) if targets is not None else None)


class EncoderOnly(Module):
    """BERT-style: a bidirectional stack, one pooled vector per sequence, a classification head.

    n_classes=None: no head; the pooled vector is the output (a sentence embedding, as in
    Sentence-BERT, Reimers & Gurevych 2019)."""

    def __init__(self, cfg, n_classes, pool="first"):
        if pool not in ("first", "mean"):
            raise ValueError(f"unknown pool {pool!r}: expected 'first' or 'mean'")
        self.config, self.pool = cfg, pool
        self.embed = Embedder(cfg, cfg.vocab_size)
        self.stack = Stack(cfg)
        self.head = Linear(cfg.d_model, n_classes) if n_classes is not None else None

    def hidden_states(self, ids, *, mask=None, token_types=None):
        """ids (B, N), mask (B, N) True on real tokens -> the last layer's vectors (B, N, d_model)."""
        return self.stack(self.embed(ids, token_types=token_types), causal=False, mask=mask)

    def pooled(self, ids, *, mask=None, token_types=None):
        """One vector per sequence (B, d_model): the first token's, or the mean over real tokens."""
        h = self.hidden_states(ids, mask=mask, token_types=token_types)         # (B, N, d_model)
        if self.pool == "first":
            return h[:, 0]
        m = (array_module(h.device).ones(h.shape[:2], dtype=bool) if mask is None
             else as_array(mask, h.device))
        weights = Tensor(m / m.sum(axis=1, keepdims=True), dtype=h.dtype, device=h.device)   # (B, N)
        return ops.einsum("bnd,bn->bd", h, weights)

    def sentence_embedding(self, ids, *, mask=None, token_types=None):
        """The pooled vectors scaled to length 1 (B, d_model): their dot products are cosine
        similarities."""
        pooled = self.pooled(ids, mask=mask, token_types=token_types)
        return pooled / ops.sqrt(ops.sum(pooled * pooled, axis=-1, keepdims=True))

    def forward(self, ids, labels=None, *, mask=None, token_types=None):
        """ids (B, N), mask (B, N) True on real tokens -> (logits (B, n_classes), loss or None);
        without a head, (the pooled vectors (B, d_model), None)."""
        pooled = self.pooled(ids, mask=mask, token_types=token_types)
        if self.head is None:
            if labels is not None:
                raise ValueError("this encoder has no head (n_classes=None): it cannot take labels")
            return pooled, None
        logits = self.head(pooled)
        return logits, (ops.cross_entropy(logits, labels) if labels is not None else None)


@dataclass
class EncoderDecoderConfig(TransformerConfig):
    src_vocab_size: Optional[int] = None  # None: the same vocabulary as the target
    share_embeddings: bool = False        # one embedding table for input and target
    share_cross_self: bool = False        # cross-attention reuses the self-attention weights
    share_encoder_decoder: bool = False   # decoder layer i reuses encoder layer i's weights
    cross_to: str = "final"               # "final": every decoder layer sees the last encoder
                                          # layer; "same": layer i sees encoder layer i
    encoder_causal: bool = False          # a causal encoder: with sharing, a decoder-only model

    def __post_init__(self):
        super().__post_init__()
        if self.cross_to not in ("final", "same"):
            raise ValueError(f"unknown cross_to {self.cross_to!r}: expected 'final' or 'same'")


class EncoderDecoder(Module):
    """The original Transformer: the encoder reads the input, the decoder writes the target,
    cross-attending in every layer to the encoder's final layer."""

    def __init__(self, cfg):
        self.config = cfg
        self.src_embed = Embedder(cfg, cfg.src_vocab_size or cfg.vocab_size)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else Embedder(cfg, cfg.vocab_size)
        self.encoder = Stack(cfg)
        self.decoder = Stack(cfg, cross_attn=True, share_cross_self=cfg.share_cross_self,
                             shared=self.encoder if cfg.share_encoder_decoder else None)

    def encode(self, src, src_mask=None):
        """src (B, M) -> one memory (B, M, d_model) per decoder layer."""
        outputs = self.encoder(self.src_embed(src), causal=self.config.encoder_causal, mask=src_mask,
                               every_layer=self.config.cross_to == "same")
        return outputs if self.config.cross_to == "same" else [outputs] * self.config.n_layer

    def decode(self, tgt, memories, src_mask=None, cache=None):
        """tgt (B, N) -> logits (B, N, vocab_size)."""
        start = cache.length if cache is not None else 0
        h = self.decoder(self.tgt_embed(tgt, start), memories, causal=True, memory_mask=src_mask,
                         cache=cache, start=start)
        if cache is not None:
            cache.length += h.shape[1]
        return self.tgt_embed.logits(h)

    def forward(self, src, tgt, targets=None, *, src_mask=None):
        logits = self.decode(tgt, self.encode(src, src_mask), src_mask)
        return logits, (lm_loss(logits, targets) if targets is not None else None)


__all__ = ["TransformerConfig", "EncoderDecoderConfig", "make_norm", "Block", "Stack", "Embedder",
           "DecoderOnly",
           "EncoderOnly", "EncoderDecoder", "KVCache", "lm_loss"]
