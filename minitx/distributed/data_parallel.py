"""Data parallelism: every rank holds the whole model and computes on a slice of the batch.

    1. rank 0's initial weights are broadcast, so every rank starts from the same model
    2. the global batch of size x batch_size windows is drawn exactly as one process with that
       batch would draw it (the same generator on every rank); rank r keeps rows
       [r batch_size, (r + 1) batch_size)
    3. each rank runs forward and backward on its rows
    4. the gradients are summed over ranks and divided by size: every rank now holds the
       gradient of the mean loss over the global batch, the one a single process would get
    5. every rank takes the same optimizer step, and the weights stay identical
Per step each rank communicates the gradient once: P numbers, whatever the batch size (a ring
allreduce sends 2 (size - 1) / size x P of them per rank). Because the gradients are identical
after step 4, clipping on their norm is clipping on the global norm.
"""
import numpy

from .. import data
from ..tensor import Tensor
from .strategy import SingleProcess


def broadcast_parameters(params, world):
    """Overwrite every parameter with rank 0's (in place)."""
    for p in params:
        world.broadcast(p.data)


def get_batch(tokens, batch_size, block_size, rng, world):
    """This rank's rows of the global batch of world.size x batch_size windows (see step 2)."""
    x, y = data.get_batch(tokens, world.size * batch_size, block_size, rng)  # (size B, N) each
    rows = slice(world.rank * batch_size, (world.rank + 1) * batch_size)
    return x[rows], y[rows]                                                   # (B, N) each


class GradientBuckets:
    """Average gradients over the ranks in a few large allreduces instead of one per parameter.

    The parameters are grouped, in order, into buckets of about `bucket_bytes` (one dtype per
    bucket). `allreduce_mean()` copies each bucket's gradients into one flat buffer, reduces
    the buffer in one call, and makes the gradients views of the result. Fewer, larger messages
    pay MPI's per-call latency a few times instead of once per tensor.
    """

    def __init__(self, params, world, bucket_bytes=2 ** 22):
        self.world, self.buckets = world, []  # bucket: (flat buffer, [(param, offset)])
        members, size, dtype = [], 0, None
        for p in params:
            if members and (size * dtype.itemsize >= bucket_bytes or p.dtype != dtype):
                self.buckets.append((numpy.empty(size, dtype), members))
                members, size = [], 0
            members.append((p, size))
            size, dtype = size + p.size, p.dtype
        if members:
            self.buckets.append((numpy.empty(size, dtype), members))

    def allreduce_mean(self):
        for flat, members in self.buckets:
            for p, offset in members:
                flat[offset:offset + p.size] = 0 if p.grad is None else p.grad.data.reshape(-1)
            self.world.allreduce(flat)
            flat /= self.world.size
            for p, offset in members:
                p.grad = Tensor._make(flat[offset:offset + p.size].reshape(p.shape), False, None)


class DataParallel(SingleProcess):
    """Training with the whole model on every rank and the batch split over them."""

    def prepare(self, model):
        super().prepare(model)
        broadcast_parameters(model.parameters(), self.world)
        self.buckets = GradientBuckets(model.parameters(), self.world)
        return model

    def global_batch(self, batch_size):
        return self.world.size * batch_size

    def get_batch(self, tokens, batch_size, block_size, rng):
        return get_batch(tokens, batch_size, block_size, rng, self.world)

    def reduce_gradients(self):
        self.buckets.allreduce_mean()

    def loss(self, value):
        return self.world.mean(value)
