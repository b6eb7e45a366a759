"""Optimizers, learning-rate schedules and gradient clipping.

An optimizer holds references to the parameters and, per parameter, whatever state its update
rule needs (momentum, Adam's moment estimates). `step()` updates `p.data` in place from `p.grad`;
each `p.data -= ...` is an assignment to `.data`, so it counts as a new version of p and a graph
built from the old values refuses to run backward (tensor.py).
"""
import math

import numpy

from . import kernels
from .backend import get_array_module
from .tensor import Tensor


class Optimizer:
    """Base class: `update(p, grad, state, decay)` is the rule; decay says whether weight decay
    applies to p (by default only to matrices, ndim >= 2: not to biases and norm gains)."""

    def __init__(self, params, lr, weight_decay=0.0, decay_filter=lambda p: p.ndim >= 2):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got no parameters")
        self.lr, self.weight_decay = lr, weight_decay
        self.decays = [bool(weight_decay) and decay_filter(p) for p in self.params]
        self.state = [{} for _ in self.params]  # per parameter, by position in self.params
        self.n_steps = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        self.n_steps += 1
        for p, state, decay in zip(self.params, self.state, self.decays):
            if p.grad is not None:
                self.update(p, p.grad.data, state, decay)

    def update(self, p, grad, state, decay):
        raise NotImplementedError

    def state_dict(self):
        """Plain data for checkpoints: hyper-parameters, the step count, and per-parameter arrays."""
        return {"lr": self.lr, "n_steps": self.n_steps,
                "state": [{k: v for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, state):
        if len(state["state"]) != len(self.params):
            raise ValueError(f"optimizer state has {len(state['state'])} parameters, this optimizer "
                             f"{len(self.params)}")
        self.lr, self.n_steps = state["lr"], state["n_steps"]
        self.state = []
        for p, s in zip(self.params, state["state"]):
            xp = get_array_module(p.data)
            self.state.append({k: xp.asarray(v, dtype=p.dtype) for k, v in s.items()})


class SGD(Optimizer):
    """p -= lr * (g + weight_decay * p), with momentum: b = momentum * b + g, p -= lr * b."""

    def __init__(self, params, lr=1e-2, momentum=0.0, weight_decay=0.0, **kwargs):
        super().__init__(params, lr, weight_decay, **kwargs)
        self.momentum = momentum

    def update(self, p, grad, state, decay):
        if decay:
            grad = grad + self.weight_decay * p.data
        if self.momentum:
            if "momentum" not in state:
                state["momentum"] = grad.copy()
            else:
                state["momentum"] *= self.momentum
                state["momentum"] += grad
            grad = state["momentum"]
        p.data -= self.lr * grad


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019).

        p *= 1 - lr * weight_decay       decay applied to the weights directly, not through g
        m = b1 m + (1 - b1) g            first moment (mean of g)
        v = b2 v + (1 - b2) g^2          second moment (mean of g^2)
        p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, **kwargs):
        super().__init__(params, lr, weight_decay, **kwargs)
        self.betas, self.eps = tuple(betas), eps

    def update(self, p, grad, state, decay):
        """The step runs as one kernel (kernels.adamw_update: a single pass over p, g, m and v on
        the CPU) that writes p in place; assigning p back counts that as a new version of p."""
        if not state:
            xp = get_array_module(p.data)
            state["m"], state["v"] = xp.zeros_like(p.data), xp.zeros_like(p.data)
        b1, b2 = self.betas
        p.data = kernels.adamw_update(p.data, grad, state["m"], state["v"], self.lr, b1, b2,
                                      self.eps, self.lr * self.weight_decay if decay else 0.0,
                                      self.n_steps)


def clip_grad_norm(params, max_norm, norm=None):
    """Scale all gradients together so their global L2 norm is at most max_norm; returns the norm
    before clipping (worth logging: spikes show instabilities) as a 0-d Tensor on the gradients'
    device, as PyTorch does. Everything stays on that device: `.item()` on the result is the one
    wait for the GPU, and the caller chooses when to pay it. `norm`: that norm, when it was
    computed elsewhere (tensor parallel: over the shards of every rank)."""
    grads = [p.grad.data for p in params if p.grad is not None]
    if not grads:
        return Tensor(0.0)
    xp = get_array_module(grads[0])
    total = (xp.sqrt(sum(xp.vdot(g, g) for g in grads))   # 0-d, on the device; vdot (of g
             if norm is None else xp.asarray(norm))         # flattened) makes no g * g array
    scale = xp.minimum(max_norm / (total + 1e-6), 1)          # 1 when the norm is within bounds
    if xp is not numpy or scale < 1:     # testing scale on the GPU would cost a sync; here it is free
        for g in grads:
            g *= scale
    return Tensor(total, dtype=total.dtype)


def cosine_schedule(step, *, lr, min_lr, warmup, total):
    """Learning rate at `step`: linear warmup, then cosine decay from lr to min_lr.

    1. during warmup (step < warmup): lr * (step + 1) / warmup
    2. after the last step (step >= total): min_lr
    3. in between: min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2, progress from 0 to 1
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
