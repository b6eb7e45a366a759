"""Where a minitx training step spends its time.

`train_step` is the step minitx/train.py takes (forward, zero_grad, backward, gradient clipping,
AdamW). `breakdown` runs a few of them with timers wrapped around the functions that matter and
splits the step into

    attention     inside minitx.kernels.attention_forward / attention_backward
    matmul        inside minitx.ops.einsum.contract (every einsum, forward and backward)
    other ops     inside the other ops' forward/backward bodies (elementwise, norms, loss, ...)
                  and in autograd.unbroadcast (summing a broadcast gradient back, e.g. a bias's)
    graph         autograd bookkeeping: Function.apply and the backward walk, minus the op bodies
                  and unbroadcast (it includes the additions that sum the gradients of a tensor
                  used twice, such as the residual stream)
    modules       the layers' own Python (forward phase outside Function.apply)
    optimizer     zero_grad, gradient clipping and the AdamW update
The wrappers are installed for the profiled steps only and removed afterwards; they cost about a
microsecond per call, so a profiled step runs a little slower than a timed one. `top_functions`
gives cProfile's view: the functions with the most self time.

Run alone, it prints the breakdown of the shakespeare-cpu step of this checkout:

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/profile_step.py --cpu-time

--cpu-time reads the process's CPU time instead of the wall clock: with one thread it is the
time the step computed, whatever else the machine runs, so profiles taken on a busy machine
(or of two checkouts, one after the other) stay comparable.
"""
import argparse
import cProfile
import importlib
import pstats
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the minitx of this checkout

import minitx.autograd
import minitx.kernels
from minitx.autograd import Function
from minitx.optim import clip_grad_norm

einsum_module = importlib.import_module("minitx.ops.einsum")  # minitx.ops.einsum is the function

CATEGORIES = ("attention", "matmul", "other ops", "graph", "modules", "optimizer")


def train_step(model, opt, x, y, grad_clip=1.0, phases=None):
    """One training step; returns the loss. `phases` (a dict of floats) collects the seconds spent
    in the forward pass, in zero_grad + backward, and in clipping + the update."""
    t0 = time.perf_counter()
    loss = model(x, y)[1]
    t1 = time.perf_counter()
    opt.zero_grad()
    loss.backward()
    t2 = time.perf_counter()
    clip_grad_norm(model.parameters(), grad_clip)
    opt.step()
    value = loss.item()
    t3 = time.perf_counter()
    if phases is not None:
        phases["forward"] += t1 - t0
        phases["backward"] += t2 - t1
        phases["optimizer"] += t3 - t2
    return value


def _op_classes():
    """Every Function subclass defined so far (the ops, and nn's fused Attention)."""
    found, stack = [], [Function]
    while stack:
        for sub in stack.pop().__subclasses__():
            found.append(sub)
            stack.append(sub)
    return found


@contextmanager
def instrumented(seconds, calls):
    """Wrap the kernels, einsum's contract, Function.apply, the backward walk, unbroadcast and every op's
    forward/backward with timers adding into `seconds[key]` and `calls[key]`; calls["nodes"]
    counts the graph nodes recorded. Everything is restored on exit."""
    restore = []

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[key] += time.perf_counter() - t
                calls[key] += 1
        return wrapper

    def patch(owner, name, value):
        restore.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, value)

    def patch_everywhere(owner, name, key):
        """Time `owner.name` wherever a minitx module holds it (ops import kernels by name)."""
        original = getattr(owner, name)
        wrapper = timed(original, key)
        for module in list(sys.modules.values()):
            if (getattr(module, "__name__", "").startswith("minitx")
                    and module.__dict__.get(name) is original):
                patch(module, name, wrapper)

    for name in ("attention_forward", "attention_backward"):
        patch_everywhere(minitx.kernels, name, "attention kernel")
    patch_everywhere(einsum_module, "contract", "einsum contract")
    patch(minitx.autograd, "backward", timed(minitx.autograd.backward, "backward walk"))
    patch(minitx.autograd, "unbroadcast", timed(minitx.autograd.unbroadcast, "unbroadcast"))
    apply = timed(Function.__dict__["apply"].__func__, "Function.apply")

    def counting_apply(cls, *inputs, **params):
        out = apply(cls, *inputs, **params)
        calls["nodes"] += out._node is not None
        return out
    patch(Function, "apply", classmethod(counting_apply))
    for op in _op_classes():
        for method, prefix in (("forward", "fwd"), ("backward", "bwd")):
            if method in op.__dict__:
                patch(op, method, staticmethod(timed(getattr(op, method), f"{prefix} {op.__name__}")))
    try:
        yield
    finally:
        for owner, name, original in reversed(restore):
            setattr(owner, name, original)


def breakdown(model, opt, batches, n_steps=5):
    """Milliseconds per step in each of CATEGORIES (plus "step" and "unaccounted"), graph nodes per
    step, and a per-op table {op: (calls, forward ms, backward ms)} per step."""
    seconds, calls, phases = defaultdict(float), defaultdict(int), defaultdict(float)
    with instrumented(seconds, calls):
        for i in range(n_steps):
            x, y = batches[i % len(batches)]
            train_step(model, opt, x, y, phases=phases)
    per_step = {k: 1e3 * v / n_steps for k, v in seconds.items()}
    ms = lambda key: per_step.get(key, 0.0)
    fwd_bodies = sum(v for k, v in per_step.items() if k.startswith("fwd "))
    bwd_bodies = sum(v for k, v in per_step.items() if k.startswith("bwd "))
    parts = {
        "attention": ms("attention kernel"),
        "matmul": ms("einsum contract"),
        "other ops": (fwd_bodies + bwd_bodies + ms("unbroadcast")
                      - ms("attention kernel") - ms("einsum contract")),
        "graph": ms("Function.apply") - fwd_bodies + ms("backward walk") - bwd_bodies - ms("unbroadcast"),
        "modules": 1e3 * phases["forward"] / n_steps - ms("Function.apply"),
        "optimizer": 1e3 * phases["optimizer"] / n_steps,
    }
    step = 1e3 * sum(phases.values()) / n_steps
    parts["unaccounted"] = step - sum(parts.values())  # zero_grad, Tensor.backward's set-up
    ops = defaultdict(lambda: [0, 0.0, 0.0])
    for key, value in per_step.items():
        prefix, _, name = key.partition(" ")
        if prefix in ("fwd", "bwd"):
            ops[name][1 if prefix == "fwd" else 2] += value
            if prefix == "fwd":
                ops[name][0] = calls[key] / n_steps
    return {"step": step, "parts": parts, "nodes": calls["nodes"] / n_steps,
            "ops": {name: tuple(v) for name, v in sorted(ops.items(), key=lambda kv: -kv[1][1] - kv[1][2])}}


def top_functions(step, n_steps=5, top=15):
    """cProfile over n_steps calls of step(i): [(function, self ms per step, calls per step)] for
    the `top` functions with the most self time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(n_steps):
        step(i)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    rows = []
    for (file, line, name), (_, n_calls, self_time, _, _) in stats.items():
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        rows.append((f"{name} ({where})", 1e3 * self_time / n_steps, n_calls / n_steps))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main():
    parser = argparse.ArgumentParser(description="Where a minitx shakespeare-cpu training step "
                                                 "spends its time")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time (use with one thread)")
    args = parser.parse_args()
    import numpy
    import minitx
    from minitx.optim import AdamW
    from minitx.train import build_model, preset
    minitx.use_fast_cpu_settings()
    if args.cpu_time:
        time.perf_counter = time.process_time    # every timer below reads the CPU time
    cfg = preset("shakespeare-cpu")
    minitx.manual_seed(cfg.seed)
    model = build_model(cfg, 65)
    opt = AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                weight_decay=cfg.weight_decay)
    tokens = numpy.random.default_rng(cfg.seed).integers(0, 65, (8, cfg.batch_size,
                                                                  cfg.model.block_size + 1))
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]
    for i in range(5):                                # warm up: numba loads its kernels
        train_step(model, opt, *batches[i % len(batches)])
    p = breakdown(model, opt, batches, n_steps=args.steps)
    clock = "CPU time" if args.cpu_time else "wall clock"
    print(f"profiled step {p['step']:.1f} ms ({clock}), {p['nodes']:.0f} graph nodes\n")
    print("| part | ms/step | share |\n|---|---|---|")
    for part, ms in p["parts"].items():
        print(f"| {part} | {ms:.2f} | {100 * ms / p['step']:.1f} % |")
    print("\n| op | calls/step | forward ms | backward ms |\n|---|---|---|---|")
    for name, (calls, fwd, bwd) in list(p["ops"].items())[:10]:
        print(f"| {name} | {calls:.0f} | {fwd:.2f} | {bwd:.2f} |")


if __name__ == "__main__":
    main()
