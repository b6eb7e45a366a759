"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): every rank holds a slice of every block.

Attention heads are independent of each other until the output projection sums over them, and
the MLP's hidden units are independent until the down projection sums over them. So rank r of p
keeps heads H_r (H/p of them) and hidden units F_r (F/p), and in einsum notation the only change
from one process is the range of one letter:

    one process                               rank r of p
    q = einsum("bnc,hdc->bhnd", x, Wq)        the same with h in H_r: no communication
    o = attention(q, k, v)   per head         the same heads H_r
    y = einsum("bhnd,chd->bnc", o, Wo)        the same with h in H_r: a partial sum over heads,
                                              y = allreduce_r(y_r)                       (g)
    u = gelu(einsum("bnc,fc->bnf", x, W1))    the same with f in F_r: no communication
    y = einsum("bnf,cf->bnc", u, W2)          a partial sum over F_r, y = allreduce_r(y_r)  (g)

A letter that stays in the output (h in q, f in u) splits the work with nothing to send; a letter
that is summed over (h in y, f in y) leaves each rank a partial sum, completed by an allreduce.
Backward is the mirror image: x feeds every rank's heads, so its gradient is the sum of every
rank's contribution, one allreduce where x enters the layer (f); y's gradient reaches every rank
whole and needs none (g's backward). Per block: two allreduces of (B, N, d_model) forward, two
backward. Everything outside the blocks' attention and MLP (embeddings, norms, the biases added
after g) is held whole by every rank, and its gradients come out identical on every rank.
"""
import numpy

from .. import ops
from ..autograd import Function
from ..nn.module import Module
from ..nn.positions import apply_rope
from ..optim import clip_grad_norm
from .data_parallel import broadcast_parameters
from .strategy import SingleProcess


class CopyToShards(Function):
    """Megatron's f: x (the same on every rank) goes on unchanged; backward sums over ranks the
    partial gradients that each rank's shard of the layer sends back to x."""

    @staticmethod
    def forward(ctx, x, world):
        ctx.world = world
        return x

    @staticmethod
    def backward(ctx, grad):
        return ctx.world.allreduce(grad.copy())  # a copy: grad may be shared with another branch


class SumShards(Function):
    """Megatron's g: forward sums the ranks' partial outputs; backward hands the gradient of the
    sum on unchanged (d sum / d y_r = 1, and every rank already holds all of it)."""

    @staticmethod
    def forward(ctx, y, world):
        return world.allreduce(y.copy())

    @staticmethod
    def backward(ctx, grad):
        return grad


def layouts(cfg):
    """Parameter name (in a block) -> (its shape viewed so the split axis stands apart, that
    axis). Parameters not listed are held whole by every rank."""
    H, Hkv, C = cfg.n_head, cfg.n_kv_head or cfg.n_head, cfg.d_model
    D, Ff = C // H, cfg.d_ff or 4 * C
    return {
        "attn.q.weight": ((H, D, C), 0),           # rows (head, d)
        "attn.q.bias": ((H, D), 0),
        "attn.kv.weight": ((2, Hkv, D, C), 1),     # rows (k or v, kv head, d)
        "attn.kv.bias": ((2, Hkv, D), 1),
        "attn.out.weight": ((C, H, D), 1),         # columns (head, d)
        "mlp.up.weight": ((Ff, C), 0),             # rows: hidden units
        "mlp.up.bias": ((Ff,), 0),
        "mlp.gate.weight": ((Ff, C), 0),
        "mlp.gate.bias": ((Ff,), 0),
        "mlp.down.weight": ((C, Ff), 1),           # columns: hidden units
    }


def sharded_parameters(model):
    """{full parameter name: (view, axis)} for every parameter of `model` that ranks split."""
    table = layouts(model.config)
    out = {}
    for name, _ in model.named_parameters():
        parts = name.split(".", 3)  # stack, blocks, i, attn.q.weight
        if parts[:2] == ["stack", "blocks"] and parts[3] in table:
            out[name] = table[parts[3]]
    return out


def _split_dim(shape, view, axis):
    """The axis of `shape` that holds axis `axis` of `view` (a view only splits axes into factors)."""
    i, product = 0, 1
    for n in view[:axis]:
        product *= n
        if product == shape[i]:
            i, product = i + 1, 1
    return i


def shard(array, view, axis, rank, size):
    """Rank's 1/size of `array` along `axis` of its view, in the array's own layout."""
    n = view[axis] // size
    part = array.reshape(view).take(numpy.arange(rank * n, (rank + 1) * n), axis=axis)
    shape = list(array.shape)
    shape[_split_dim(shape, view, axis)] //= size
    return numpy.ascontiguousarray(part).reshape(shape)


def unshard(parts, view, axis):
    """The whole array from every rank's shard; parts (size, *shard shape) in rank order."""
    size, shape = len(parts), list(parts.shape[1:])
    part_view = tuple(n // size if j == axis else n for j, n in enumerate(view))
    shape[_split_dim(shape, part_view, axis)] *= size
    return numpy.concatenate([p.reshape(part_view) for p in parts], axis=axis).reshape(shape)


class ShardedAttention(Module):
    """Causal self-attention over this rank's heads; the parameters keep their names and hold
    this rank's slices (see `layouts`)."""

    def __init__(self, attn, world):
        self.world = world
        self.n_head, self.n_kv_head = attn.n_head // world.size, attn.n_kv_head // world.size
        self.d_head, self.rope, self.window, self.kernels = attn.d_head, attn.rope, attn.window, attn.kernels
        self.q, self.kv, self.out, self.drop = attn.q, attn.kv, attn.out, attn.drop

    def forward(self, x, *, causal=False, mask=None, prefix=None, cache=None, start=0):
        """x (B, N, C), the same on every rank -> (B, N, C), the same on every rank."""
        B, N, C = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.d_head                 # this rank's heads
        x = CopyToShards.apply(x, world=self.world)          # f: backward allreduces dL/dx
        # one process's einsums, with h over this rank's heads only: nothing to send
        q = ops.einsum("bnc,hdc->bhnd", x, self.q.weight.reshape(H, D, C))          # (B, H, N, D)
        kv = ops.einsum("bnc,jgdc->jbgnd", x, self.kv.weight.reshape(2, Hkv, D, C))  # (2, B, Hkv, N, D)
        if self.q.bias is not None:
            q = q + self.q.bias.reshape(H, 1, D)
            kv = kv + self.kv.bias.reshape(2, 1, Hkv, 1, D)
        k, v = kv[0], kv[1]
        if self.rope:
            q, k = apply_rope(q, start), apply_rope(k, start)
        if cache is not None:
            k, v = cache.update((self, False), k, v)
        o = ops.scaled_dot_product_attention(q, k, v, causal=causal, mask=mask,
                                             window=self.window if causal else None,
                                             prefix=prefix if causal else None, kernels=self.kernels)
        # one process's einsum sums over all H heads; here over H/p of them: a partial sum
        y = ops.einsum("bhnd,chd->bnc", o, self.out.weight.reshape(C, H, D))       # (B, N, C)
        y = SumShards.apply(y, world=self.world)             # g: forward allreduces y
        if self.out.bias is not None:
            y = y + self.out.bias                            # once, after the sum
        return self.drop(y)


class ShardedMLP(Module):
    """The MLP over this rank's hidden units (GELU or SwiGLU), parameters named as in nn.MLP."""

    def __init__(self, mlp, world):
        self.world, self.kind, self.kernels = world, mlp.kind, mlp.kernels
        self.up, self.gate, self.down, self.drop = mlp.up, mlp.gate, mlp.down, mlp.drop

    def _hidden(self, x, layer):
        h = ops.einsum("bnc,fc->bnf", x, layer.weight)                                # (B, N, F_r)
        return h if layer.bias is None else h + layer.bias

    def forward(self, x):
        """x (B, N, C), the same on every rank -> (B, N, C), the same on every rank."""
        x = CopyToShards.apply(x, world=self.world)          # f: backward allreduces dL/dx
        u = self._hidden(x, self.up)                         # f over this rank's hidden units
        if self.kind == "gelu":
            u = ops.gelu(u, approximate="tanh", kernels=self.kernels)
        else:
            g = self._hidden(x, self.gate)
            u = g * ops.sigmoid(g) * u
        # one process's einsum sums over all F hidden units; here over F/p: a partial sum
        y = ops.einsum("bnf,cf->bnc", u, self.down.weight)                            # (B, N, C)
        y = SumShards.apply(y, world=self.world)             # g: forward allreduces y
        if self.down.bias is not None:
            y = y + self.down.bias
        return self.drop(y)


def shard_model(model, world):
    """Make a DecoderOnly model this rank's tensor-parallel part, in place, and return it: each
    block's attention and MLP keep 1/size of their heads and hidden units."""
    cfg, p = model.config, world.size
    Hkv, Ff = cfg.n_kv_head or cfg.n_head, cfg.d_ff or 4 * cfg.d_model
    if cfg.n_head % p or Hkv % p or Ff % p:
        raise ValueError(f"tensor parallel over {p} ranks needs n_head ({cfg.n_head}), n_kv_head "
                         f"({Hkv}) and the MLP width ({Ff}) divisible by {p}")
    params = dict(model.named_parameters())
    for name, (view, axis) in sharded_parameters(model).items():
        params[name].data = shard(params[name].data, view, axis, world.rank, p)
    for block in model.stack.blocks:
        block.attn, block.mlp = ShardedAttention(block.attn, world), ShardedMLP(block.mlp, world)
    return model


class TensorParallel(SingleProcess):
    """Training with every block split over the ranks; every rank sees the whole batch."""

    def prepare(self, model):
        super().prepare(model)
        broadcast_parameters(model.parameters(), self.world)
        self.layout = sharded_parameters(model)
        self.sharded = {id(p) for name, p in model.named_parameters() if name in self.layout}
        return shard_model(model, self.world)

    def clip_grad_norm(self, params, max_norm):
        """Clip on the norm of the whole model's gradient: each rank's shards summed over ranks,
        the parameters every rank holds whole counted once."""
        squares = numpy.zeros(2)  # [sharded, whole]
        for p in params:
            if p.grad is not None:
                squares[int(id(p) not in self.sharded)] += float((p.grad.data ** 2).sum())
        self.world.allreduce(squares[:1])
        return clip_grad_norm(params, max_norm, norm=float(numpy.sqrt(squares.sum())))

    def full(self, name, array):
        if name not in self.layout:
            return array
        return unshard(self.world.allgather(array), *self.layout[name])

    def part(self, name, array):
        if name not in self.layout:
            return array
        return shard(array, *self.layout[name], self.world.rank, self.world.size)
