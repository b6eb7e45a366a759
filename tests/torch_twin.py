"""A PyTorch twin of minitx's three Transformers: the same parameters under the same names, the same math.

It is the yardstick minitx is measured against. tests/test_torch_oracle.py loads identical
float64 weights into a minitx model and its twin and checks that the loss and every gradient
agree; benchmarks/run.py times a training step of each. The twin is built from PyTorch's own
pieces (nn.Linear, F.layer_norm, F.rms_norm, F.scaled_dot_product_attention, F.cross_entropy),
so it shares no code with minitx, only the specification:

    twin = from_minitx(model)                  # DecoderOnly, EncoderOnly or EncoderDecoder
    logits, loss = twin(ids, targets)          # ids, targets: torch int64 tensors (B, N)

Like minitx it has one Block with switches (causal or not, cross-attention on or off, shared
weights); the model classes only wire Blocks together. It covers training-time forward passes
(no KV cache). Parameter names follow minitx's `named_parameters()`, e.g.
`stack.blocks.0.attn.kv.weight`; torch.nn.Linear keeps its weight as (d_out, d_in), as minitx does.
"""
import torch
import torch.nn.functional as F
from torch import nn


def make_norm(cfg):
    """minitx's norms with their default eps: LayerNorm 1e-5 (bias optional), RMSNorm 1e-6 (no bias)."""
    if cfg.norm == "layer":
        return nn.LayerNorm(cfg.d_model, eps=1e-5, bias=cfg.bias)
    return nn.RMSNorm(cfg.d_model, eps=1e-6)


def _frequencies(n_pairs, device, base=10000.0):
    """base^(-i / n_pairs) for i = 0 .. n_pairs-1, in float64 like minitx (cast at the end)."""
    return base ** (-torch.arange(n_pairs, dtype=torch.float64, device=device) / n_pairs)


def _angles(n, n_pairs, device):
    positions = torch.arange(n, dtype=torch.float64, device=device)
    return positions[:, None] * _frequencies(n_pairs, device)[None, :]          # (N, n_pairs)


def rotate(x):
    """RoPE on x (B, H, N, D): the pair (x[i], x[i + D/2]) turns by angle position * frequency_i."""
    n, d = x.shape[2], x.shape[3]
    angles = _angles(n, d // 2, x.device)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)               # (N, D/2)
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def visibility(n_q, n_k, causal, key_mask, window, prefix, device):
    """Boolean (B or 1, 1, Nq, Nk), True where query i may see key j (minitx's rules: query i sits at
    position i + Nk - Nq; causal j <= pos; window W: j > pos - W; prefix P: j < P always visible;
    key_mask (B, Nk) False hides a padding key from every query)."""
    pos = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)               # (Nq, 1)
    j = torch.arange(n_k, device=device)[None, :]                               # (1, Nk)
    visible = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if causal:
        visible = j <= pos
        if window is not None:
            visible = visible & (j > pos - window)
        if prefix is not None:
            visible = visible | (j < prefix)
    visible = visible[None, None]                                               # (1, 1, Nq, Nk)
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :]                          # (B, 1, Nq, Nk)
    return visible


def attend(q, k, v, causal=False, key_mask=None, window=None, prefix=None):
    """softmax(q k^T / sqrt(D) + mask) v for q (B, H, Nq, D), k, v (B, Hkv, Nk, D); query head h
    reads key/value head h // (H / Hkv), as PyTorch's enable_gqa does. Plain causal attention
    takes PyTorch's is_causal fast path; anything else passes an explicit boolean mask."""
    gqa = q.shape[1] != k.shape[1]
    if key_mask is None and window is None and prefix is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    mask = visibility(q.shape[2], k.shape[2], causal, key_mask, window, prefix, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class Attention(nn.Module):
    """Multi-head attention with minitx's layout: q one Linear; k and v one Linear `kv` whose
    output reshapes to (B, M, 2, Hkv, D)."""

    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.n_kv_head or cfg.n_head
        self.d_head = cfg.d_model // cfg.n_head
        self.rope, self.window = cfg.pos == "rope", cfg.window
        self.q = nn.Linear(cfg.d_model, self.n_head * self.d_head, bias=cfg.bias)
        self.kv = nn.Linear(cfg.d_model, 2 * self.n_kv_head * self.d_head, bias=cfg.bias)
        self.out = nn.Linear(self.n_head * self.d_head, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, memory=None, causal=False, mask=None, prefix=None):
        B, N, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.d_head
        cross = memory is not None
        source = memory if cross else x
        M = source.shape[1]
        q = self.q(x).view(B, N, H, D).transpose(1, 2)                          # (B, H, N, D)
        k, v = self.kv(source).view(B, M, 2, Hkv, D).permute(2, 0, 3, 1, 4)      # (B, Hkv, M, D) each
        if self.rope and not cross:
            q, k = rotate(q), rotate(k)
        causal = causal and not cross
        y = attend(q, k, v, causal, mask, self.window if causal else None, prefix if causal else None)
        y = y.transpose(1, 2).reshape(B, N, H * D)                              # (B, N, d_model)
        return self.drop(self.out(y))


class MLP(nn.Module):
    """gelu: down(gelu_tanh(up x));  swiglu: down(silu(gate x) * up x)."""

    def __init__(self, cfg):
        super().__init__()
        d_ff = cfg.d_ff or 4 * cfg.d_model
        self.kind = cfg.mlp
        self.up = nn.Linear(cfg.d_model, d_ff, bias=cfg.bias)
        self.gate = nn.Linear(cfg.d_model, d_ff, bias=cfg.bias) if cfg.mlp == "swiglu" else None
        self.down = nn.Linear(d_ff, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if self.kind == "gelu":
            h = F.gelu(self.up(x), approximate="tanh")
        else:
            h = F.silu(self.gate(x)) * self.up(x)
        return self.drop(self.down(h))


class Block(nn.Module):
    """Self-attention, then (optionally) cross-attention, then the MLP, each a residual branch;
    `shared` is a Block whose self-attention, MLP and norms this one reuses."""

    def __init__(self, cfg, cross_attn=False, share_cross_self=False, shared=None):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.ln_attn = shared.ln_attn if shared else make_norm(cfg)
        self.attn = shared.attn if shared else Attention(cfg)
        self.ln_mlp = shared.ln_mlp if shared else make_norm(cfg)
        self.mlp = shared.mlp if shared else MLP(cfg)
        self.ln_cross = make_norm(cfg) if cross_attn else None
        self.cross = (self.attn if share_cross_self else Attention(cfg)) if cross_attn else None

    def residual(self, x, norm, sublayer):
        """pre-LN: x + f(norm(x));  post-LN: norm(x + f(x))."""
        return x + sublayer(norm(x)) if self.norm_first else norm(x + sublayer(x))

    def forward(self, x, causal, mask=None, prefix=None, memory=None, memory_mask=None):
        x = self.residual(x, self.ln_attn, lambda h: self.attn(h, causal=causal, mask=mask, prefix=prefix))
        if self.cross is not None:
            x = self.residual(x, self.ln_cross, lambda h: self.cross(h, memory, mask=memory_mask))
        return self.residual(x, self.ln_mlp, self.mlp)


class Stack(nn.Module):
    """n_layer Blocks and, with pre-LN, a final norm; every_layer returns each block's output."""

    def __init__(self, cfg, cross_attn=False, share_cross_self=False, shared=None):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(cfg, cross_attn, share_cross_self, shared.blocks[i] if shared else None)
            for i in range(cfg.n_layer))
        self.ln_final = make_norm(cfg) if cfg.norm_first else None

    def forward(self, x, memories=None, every_layer=False, **kwargs):
        final = self.ln_final if self.ln_final is not None else nn.Identity()
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x, memory=memories[i] if memories else None, **kwargs)
            if every_layer:
                outputs.append(final(x))
        return outputs if every_layer else final(x)


class Positions(nn.Module):
    """What is added to the token embedding: a learned table, fixed interleaved sinusoids
    (PE[p, 2i] = sin, PE[p, 2i+1] = cos), or nothing (rope rotates q and k instead)."""

    def __init__(self, kind, block_size, d_model):
        super().__init__()
        self.kind = kind
        self.table = nn.Embedding(block_size, d_model) if kind == "learned" else None

    def forward(self, x):
        n, d = x.shape[1], x.shape[2]
        if self.kind == "learned":
            return x + self.table.weight[:n]
        if self.kind == "sinusoidal":
            angles = _angles(n, (d + 1) // 2, x.device)
            table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :d]
            return x + table.to(x.dtype)
        return x


class Embedder(nn.Module):
    """Token ids (B, N) -> token embedding + positions, then dropout; `logits` reuses the
    embedding matrix as the output layer (tied weights)."""

    def __init__(self, cfg, vocab_size):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, cfg.d_model)
        self.positions = Positions(cfg.pos, cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids):
        return self.drop(self.positions(self.tokens(ids)))

    def logits(self, h):
        return F.linear(h, self.tokens.weight)                                   # (B, N, vocab)


def lm_loss(logits, targets, loss_mask=None):
    """Mean next-token cross-entropy over the positions where loss_mask is True (all by default)."""
    if loss_mask is not None:
        targets = targets.masked_fill(~loss_mask, -100)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


class TwinModule(nn.Module):
    """Loading minitx weights: the names and shapes must match exactly."""

    def load_minitx_state(self, state):
        """Copy {name: NumPy array} (minitx's `state_dict()`) into this twin; returns self."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"minitx state does not fit the twin: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for name, p in own.items():
                value = torch.as_tensor(state[name])
                if value.shape != p.shape:
                    raise ValueError(f"{name}: minitx has shape {tuple(value.shape)}, the twin {tuple(p.shape)}")
                p.copy_(value)
        return self


class DecoderOnly(TwinModule):
    def __init__(self, cfg):
        super().__init__()
        self.embed = Embedder(cfg, cfg.vocab_size)
        self.stack = Stack(cfg)

    def forward(self, ids, targets=None, loss_mask=None, prefix=None, mask=None):
        h = self.stack(self.embed(ids), causal=True, prefix=prefix, mask=mask)
        logits = self.embed.logits(h)
        return logits, (lm_loss(logits, targets, loss_mask) if targets is not None else None)


class EncoderOnly(TwinModule):
    def __init__(self, cfg, n_classes, pool="first"):
        super().__init__()
        self.pool = pool
        self.embed = Embedder(cfg, cfg.vocab_size)
        self.stack = Stack(cfg)
        self.head = nn.Linear(cfg.d_model, n_classes)

    def forward(self, ids, labels=None, mask=None):
        h = self.stack(self.embed(ids), causal=False, mask=mask)                # (B, N, d_model)
        if self.pool == "first":
            pooled = h[:, 0]
        else:
            m = torch.ones(h.shape[:2], device=h.device) if mask is None else mask
            m = m.to(h.dtype)
            pooled = torch.einsum("bnd,bn->bd", h, m / m.sum(dim=1, keepdim=True))
        logits = self.head(pooled)
        return logits, (F.cross_entropy(logits, labels) if labels is not None else None)


class EncoderDecoder(TwinModule):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.src_embed = Embedder(cfg, cfg.src_vocab_size or cfg.vocab_size)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else Embedder(cfg, cfg.vocab_size)
        self.encoder = Stack(cfg)
        self.decoder = Stack(cfg, cross_attn=True, share_cross_self=cfg.share_cross_self,
                             shared=self.encoder if cfg.share_encoder_decoder else None)

    def forward(self, src, tgt, targets=None, src_mask=None):
        same = self.cfg.cross_to == "same"
        memories = self.encoder(self.src_embed(src), causal=self.cfg.encoder_causal, mask=src_mask,
                                every_layer=same)
        memories = memories if same else [memories] * self.cfg.n_layer
        h = self.decoder(self.tgt_embed(tgt), memories, causal=True, memory_mask=src_mask)
        logits = self.tgt_embed.logits(h)
        return logits, (lm_loss(logits, targets) if targets is not None else None)


def from_minitx(model, device="cpu"):
    """The twin of a minitx DecoderOnly, EncoderOnly or EncoderDecoder, holding copies of its
    weights in their dtype, on `device` ("cpu" or "cuda"), in the same train/eval mode."""
    import minitx.nn
    if isinstance(model, minitx.nn.DecoderOnly):
        twin = DecoderOnly(model.config)
    elif isinstance(model, minitx.nn.EncoderOnly):
        twin = EncoderOnly(model.config, model.head.weight.shape[0], model.pool)
    elif isinstance(model, minitx.nn.EncoderDecoder):
        twin = EncoderDecoder(model.config)
    else:
        raise TypeError(f"no PyTorch twin for {type(model).__name__}")
    dtype = getattr(torch, model.parameters()[0].dtype.name)
    twin = twin.to(device=device, dtype=dtype).load_minitx_state(model.state_dict())
    return twin.train(model.training)


def adamw(model, lr, betas, weight_decay, eps=1e-8):
    """torch.optim.AdamW decaying the matrices only (ndim >= 2), as minitx's AdamW does by default."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def train_step(model, opt, x, y, grad_clip=1.0):
    """One training step as minitx/train.py takes it: forward, zero_grad, backward, gradient
    clipping, update; returns the loss (reading it waits for the GPU)."""
    loss = model(x, y)[1]
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item()
