"""What the training loop asks of a parallel strategy, answered for a single process.

DataParallel and TensorParallel override the steps that change; the loop calls the same
methods whichever it runs under:

    model = strategy.prepare(model)             same weights on every rank (and, TP, the shards)
    strategy.global_batch(batch_size)           windows per step over all ranks
    x, y = strategy.get_batch(...)              this rank's windows
    loss.backward(); strategy.reduce_gradients()
    norm = strategy.clip_grad_norm(params, max_norm)
    strategy.loss(value)                        the loss of the global batch
    strategy.full(name, array) / part(...)      checkpoints hold whole arrays, whatever the strategy
"""
from .. import data
from ..optim import clip_grad_norm
from .comm import Communicator


class SingleProcess:
    def __init__(self, world=None):
        self.world = world or Communicator()

    @property
    def is_main(self):
        return self.world.is_main

    def prepare(self, model):
        """Ready `model` for training on this rank; returns it."""
        return model

    def global_batch(self, batch_size):
        """Windows per step over all ranks, given the batch size of one rank."""
        return batch_size

    def get_batch(self, tokens, batch_size, block_size, rng):
        return data.get_batch(tokens, batch_size, block_size, rng)

    def reduce_gradients(self):
        """Make every rank's gradients those of the global batch (nothing to do on one process)."""

    def clip_grad_norm(self, params, max_norm):
        return clip_grad_norm(params, max_norm)

    def loss(self, value):
        return value

    def full(self, name, array):
        """The whole of parameter `name` (or of its optimizer state), given this rank's part."""
        return array

    def part(self, name, array):
        """This rank's part of the whole array of parameter `name`."""
        return array
