"""speculative: how much a small draft model speeds up decoding of a larger one, for k = 1 .. 8.

A draft and a target (decoder-only, character level, the same tokenizer) are trained on the bundled
Tiny Shakespeare, or reused from an earlier run of this experiment. Then both decode from the same
validation-text prompt: the target alone with its KV cache ("plain"), and speculatively with k
drafts a round, greedily (temperature 0) and by sampling (temperature 1). Measured per k: the
acceptance rate alpha (drafts kept / drafts the target checked), the tokens emitted per target
pass, tokens/s and the speed-up over plain decoding.

What to expect (Leviathan et al. 2023): a round costs k draft steps and one target pass over k + 1
tokens, and emits (1 - alpha^(k+1)) / (1 - alpha) tokens when drafts are kept independently with
probability alpha. With c the cost of a draft step and v_k that of the verifying pass, both in units
of one target step, the speed-up is

    tokens per round / (k c + v_k)

so it pays when alpha is high and c is small. On a GPU v_k is close to 1 (a pass over k + 1 tokens
takes about as long as over one); on a CPU it grows with k. The experiment measures c and v_k
too, and reports this prediction next to the measured speed-up.
"""
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy

from .. import data, nn
from ..autograd import no_grad
from ..generate import SpeculationStats, generate
from ..nn import KVCache
from ..train import TrainConfig, estimate_loss, load_model, train
from . import report


@dataclass
class Settings:
    target: tuple = (6, 6, 192)         # (n_layer, n_head, d_model)
    draft: tuple = (1, 2, 32)
    steps: int = 500                    # training steps of each model
    batch_size: int = 12
    block_size: int = 64
    lr: float = 2e-3
    prompt_tokens: int = 32             # the prompt: the start of the validation split
    n_tokens: int = 200                 # generated per measurement
    ks: list = field(default_factory=lambda: list(range(1, 9)))
    temperatures: list = field(default_factory=lambda: [0.0, 1.0])
    seeds: int = 3                      # per measurement; tokens/s is the median over seeds
    repeats: int = 2                    # of each decoding of a seed, timed: the fastest counts
    eval_tokens: int = 32768


SIZES = {
    "toy": Settings(target=(2, 2, 32), draft=(1, 1, 16), steps=20, batch_size=4, block_size=32,
                    lr=1e-2, prompt_tokens=8, n_tokens=24, ks=[1, 2, 3], seeds=1, repeats=1,
                    eval_tokens=2048),
    "default": Settings(),
    "large": Settings(target=(8, 8, 512), draft=(2, 4, 64), steps=3000, batch_size=32, block_size=256,
                      lr=1e-3, prompt_tokens=64, n_tokens=500, eval_tokens=111_000),
}


def train_or_reuse(out_dir, name, shape, s, device):
    """(model, its TrainConfig, whether it was reused) for out_dir/models/name, trained for s.steps
    (a run already there is reused, or continued if it is shorter)."""
    n_layer, n_head, d_model = shape
    run_dir = Path(out_dir) / "models" / name
    arch = nn.TransformerConfig(n_layer=n_layer, n_head=n_head, d_model=d_model, block_size=s.block_size)
    cfg = TrainConfig(model=arch, batch_size=s.batch_size, max_iters=s.steps, lr=s.lr, min_lr=s.lr / 10,
                      warmup_iters=max(1, s.steps // 10), eval_interval=s.steps, eval_iters=2,
                      full_eval=False, sample_tokens=0, out_dir=str(run_dir), device=device)
    resume = (run_dir / "checkpoint.npz").exists()
    train(cfg, resume=resume, progress=False, say=lambda *args: None)
    print(f"speculative: {name} {'reused' if resume else 'trained'} ({run_dir})", flush=True)
    return load_model(run_dir / "checkpoint.npz", device)[0], cfg, resume


@no_grad()
def step_costs(target, draft, prompt, ks, repeats=50):
    """(seconds of one target step, c, [v_k for k in ks]): the fastest of `repeats` forward passes
    over new tokens after a cached prompt; every pass is timed once per repeat, in turn, so a busy
    spell on the machine hits all of them alike."""
    passes = [(draft, 1), (target, 1)] + [(target, k + 1) for k in ks]
    caches = [KVCache() for _ in passes]
    for (model, _), cache in zip(passes, caches):
        model(numpy.array([prompt]), cache=cache)
    best = [float("inf")] * len(passes)
    for _ in range(repeats):
        for i, ((model, n), cache) in enumerate(zip(passes, caches)):
            t0 = time.perf_counter()
            model(numpy.array([prompt[:n]]), cache=cache)[0].numpy()
            best[i] = min(best[i], time.perf_counter() - t0)
            cache.truncate(len(prompt))
    draft_step, one, *verify = best
    return one, draft_step / one, [v / one for v in verify]


def decode(target, prompt, s, temperature, seed, draft=None, k=1, stats=None):
    """Seconds to generate s.n_tokens, the fastest of s.repeats runs (speculatively with a draft,
    the first run counted into stats; the others repeat it draw for draw)."""
    best = float("inf")
    for repeat in range(s.repeats):
        t0 = time.perf_counter()
        for _ in generate(target, prompt, s.n_tokens, numpy.random.default_rng(seed), temperature,
                          draft=draft, n_draft=k, stats=stats if repeat == 0 else None):
            pass
        best = min(best, time.perf_counter() - t0)
    return best


def run(out_dir, device="cpu", size="default"):
    s = SIZES[size]
    _, _, val_tokens = data.prepare()
    prompt = [int(t) for t in val_tokens[:s.prompt_tokens]]
    models, losses, reused = {}, {}, {}
    for name, shape in (("draft", s.draft), ("target", s.target)):
        models[name], cfg, reused[name] = train_or_reuse(out_dir, name, shape, s, device)
        losses[name] = estimate_loss(models[name], val_tokens[:s.eval_tokens + 1], cfg)
    target, draft = models["target"], models["draft"]

    decode(target, prompt, s, 1.0, 0, draft, s.ks[-1])  # warm-up: kernels compiled, caches grown
    plain = {T: [] for T in s.temperatures}
    seconds = {T: {k: [] for k in s.ks} for T in s.temperatures}
    speedups = {T: {k: [] for k in s.ks} for T in s.temperatures}
    stats = {T: {k: SpeculationStats() for k in s.ks} for T in s.temperatures}
    for seed in range(s.seeds):  # each speculative run right after a plain one: a pair shares the load
        for T in s.temperatures:
            for k in s.ks:
                plain[T].append(decode(target, prompt, s, T, seed))
                seconds[T][k].append(decode(target, prompt, s, T, seed, draft, k, stats[T][k]))
                speedups[T][k].append(plain[T][-1] / seconds[T][k][-1])

    # costs in units of one target step: c (a draft step) and v_k (a target pass over k + 1 tokens)
    one, c, v = step_costs(target, draft, prompt, s.ks)
    cost = {"target_step_ms": 1e3 * one, "c": c, "v": v}
    results = {"settings": asdict(s), "device": device, "reused": reused, "val_loss": losses,
               "n_params": {name: m.n_params() for name, m in models.items()}, "cost": cost,
               "temperatures": {}}
    for T in s.temperatures:
        rows = []
        for k, v_k in zip(s.ks, v):
            st = stats[T][k]
            rows.append({"k": k, "acceptance_rate": st.acceptance_rate,
                         "tokens_per_round": st.tokens_per_round,
                         "tokens_per_s": s.n_tokens / float(numpy.median(seconds[T][k])),
                         "speedup": float(numpy.median(speedups[T][k])),
                         "predicted_speedup": st.tokens_per_round / (k * c + v_k)})
        results["temperatures"][str(T)] = {
            "plain_tokens_per_s": s.n_tokens / float(numpy.median(plain[T])), "by_k": rows}
    report.write_results(out_dir, results)
    plot(out_dir, results)
    report.write_report(out_dir, describe(results))
    return results


def describe(results):
    s, cost = results["settings"], results["cost"]
    shape = lambda name: "n_layer {}, n_head {}, d_model {}".format(*s[name])
    lines = ["# speculative: a small draft model proposes, the target verifies", "",
             f"Target: {shape('target')} ({results['n_params']['target']:,} parameters, validation "
             f"loss {results['val_loss']['target']:.3f}). Draft: {shape('draft')} "
             f"({results['n_params']['draft']:,} parameters, validation loss "
             f"{results['val_loss']['draft']:.3f}). Both trained {s['steps']} steps on Tiny "
             f"Shakespeare, characters. Each measurement generates {s['n_tokens']} tokens after a "
             f"{s['prompt_tokens']}-token prompt and is timed as the fastest of {s['repeats']} runs, "
             "each speculative measurement right after a plain one; tokens/s and the speed-up are "
             f"medians over {s['seeds']} seeds. "
             f"Device: {results['device']}.", "",
             f"Costs in units of one target step ({cost['target_step_ms']:.2f} ms): a draft step "
             f"c = {cost['c']:.2f}; a target pass over k + 1 tokens v_k = "
             + ", ".join(f"{v:.2f}" for v in cost["v"]) + f" for k = {s['ks'][0]} .. {s['ks'][-1]}. "
             "Predicted speed-up: tokens per round / (k c + v_k).", ""]
    for T, entry in results["temperatures"].items():
        lines += [f"## Temperature {T} (plain cached decoding: "
                  f"{entry['plain_tokens_per_s']:.1f} tokens/s)", ""]
        lines += report.table(
            ["k", "acceptance rate", "tokens per target pass", "tokens/s", "speed-up", "predicted"],
            [[r["k"], f"{r['acceptance_rate']:.2f}", f"{r['tokens_per_round']:.2f}",
              f"{r['tokens_per_s']:.1f}", f"{r['speedup']:.2f}x", f"{r['predicted_speedup']:.2f}x"]
             for r in entry["by_k"]])
        best = max(entry["by_k"], key=lambda r: r["speedup"])
        lines += ["", f"Best: k = {best['k']}, {best['speedup']:.2f}x.", ""]
    lines += ["Speed-up figures are wall-clock times on a machine that may be shared: compare them with "
              "the prediction, which rests on the separately timed step costs.", "",
              "![acceptance and speed-up](speculative.png)"]
    return lines


def plot(out_dir, results):
    plt = report.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for T, entry in results["temperatures"].items():
        ks = [r["k"] for r in entry["by_k"]]
        line = axes[0].plot(ks, [r["tokens_per_round"] for r in entry["by_k"]], "o-",
                            label=f"temperature {T}")[0]
        axes[0].plot(ks, [r["acceptance_rate"] for r in entry["by_k"]], "s--", color=line.get_color(),
                     label=f"acceptance rate, temperature {T}")
        axes[1].plot(ks, [r["speedup"] for r in entry["by_k"]], "o-", color=line.get_color(),
                     label=f"measured, temperature {T}")
        axes[1].plot(ks, [r["predicted_speedup"] for r in entry["by_k"]], ":", color=line.get_color(),
                     label=f"predicted, temperature {T}")
    axes[0].set(xlabel="k (drafts per round)", ylabel="tokens per target pass / acceptance rate",
                title="tokens per target pass (solid), acceptance rate (dashed)")
    axes[1].axhline(1, color="gray", lw=0.8)
    axes[1].set(xlabel="k (drafts per round)", ylabel="speed-up over plain cached decoding",
                title="wall-clock speed-up")
    for ax in axes:
        ax.legend(fontsize=8)
    report.save_figure(fig, out_dir, "speculative.png")
