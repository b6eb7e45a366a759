"""scaling: validation loss against training compute for decoder-only models of several sizes.

Every (size, token budget) pair is one `minitx.train` run on the bundled Tiny Shakespeare with the
character tokenizer, its cosine schedule fitted to its own budget. Its compute is

    C = 6 N D        N non-embedding parameters, D training tokens (steps x batch x block)
                     (2 N per token forward, 4 N backward; attention's share is left out)

and its loss is measured on the same fixed stretch of the validation split for every run. The
compute-efficient frontier is the lowest loss any run reached at or below each compute; on it we
fit L(C) = a C^(-b) + c (Kaplan et al. 2020 without the floor; Hoffmann et al. 2022 with it): for a
fixed floor c, log(L - c) = log a - b log C is a straight line, so a and b come from linear least
squares; c is searched on a grid that is refined around its best point.
"""
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy

from .. import data, nn
from ..train import TrainConfig, build_model, estimate_loss, load_model, train
from . import report


@dataclass
class Settings:
    sizes: list = field(default_factory=lambda: [(1, 2, 32), (2, 2, 32), (2, 4, 48), (3, 4, 64), (4, 4, 96)])
    budgets: list = field(default_factory=lambda: [100, 250, 600, 1500])   # training steps
    batch_size: int = 16
    block_size: int = 64
    lr: float = 2e-3
    eval_tokens: int = 32768    # the first this many validation tokens score every run
    eval_iters: int = 4         # batches for the estimates each run logs at its start and end


SIZES = {
    "toy": Settings(sizes=[(1, 1, 4), (1, 2, 8), (1, 2, 12), (2, 2, 16), (2, 4, 24)], budgets=[10, 30],
                    batch_size=8, block_size=16, lr=1e-2, eval_tokens=2048, eval_iters=1),
    "default": Settings(),
    "large": Settings(sizes=[(2, 4, 64), (4, 4, 128), (4, 8, 256), (6, 8, 384), (8, 8, 512)],
                      budgets=[500, 1500, 4500], batch_size=32, block_size=256, lr=1e-3,
                      eval_tokens=111_000, eval_iters=20),
}


def fit_power_law(C, L, n_grid=100, rounds=6):
    """(a, b, c, rms) with L ~ a C^(-b) + c, 0 <= c < min(L); rms is the residual in loss units.

    For each candidate floor c the exponent and scale come from a straight-line fit of
    log(L - c) against log C; the c kept is the one with the smallest RMS residual in L. The grid
    over [0, min L) is refined `rounds` times around its best point.
    """
    C, L = numpy.asarray(C, dtype=numpy.float64), numpy.asarray(L, dtype=numpy.float64)
    if len(C) < 3:
        raise ValueError(f"a power law with a floor needs at least 3 points, got {len(C)}")
    X = numpy.stack([numpy.ones_like(C), numpy.log(C)], axis=1)

    def fit(c):
        (log_a, slope), *_ = numpy.linalg.lstsq(X, numpy.log(L - c), rcond=None)
        a, b = numpy.exp(log_a), -slope
        return float(a), float(b), float(c), float(numpy.sqrt(numpy.mean((a * C ** -b + c - L) ** 2)))

    lo, hi = 0.0, float(L.min())
    for _ in range(rounds):
        grid = lo + (hi - lo) * numpy.arange(n_grid) / n_grid     # hi itself is never tried
        best = min((fit(c) for c in grid), key=lambda r: r[3])
        width = (hi - lo) / n_grid
        lo, hi = max(0.0, best[2] - width), min(float(L.min()), best[2] + width)
    return best


def frontier(points):
    """The runs that reach a lower loss than every run of smaller or equal compute, by compute."""
    kept, best = [], float("inf")
    for point in sorted(points, key=lambda p: (p["compute"], p["val_loss"])):
        if point["val_loss"] < best:
            kept.append(point)
            best = point["val_loss"]
    return kept


def non_embedding_params(cfg, vocab_size):
    model = build_model(cfg, vocab_size)
    return sum(p.size for name, p in model.named_parameters() if not name.startswith("embed."))


def run(out_dir, device="cpu", size="default"):
    s = SIZES[size]
    tokenizer, _, val_tokens = data.prepare()
    val_tokens = val_tokens[:s.eval_tokens + 1]
    models_dir = Path(out_dir) / "models"
    shutil.rmtree(models_dir, ignore_errors=True)   # train() refuses to overwrite a run
    started = time.perf_counter()
    points = []
    for n_layer, n_head, d_model in s.sizes:
        for steps in s.budgets:
            name = f"L{n_layer}-H{n_head}-d{d_model}-{steps}"
            arch = nn.TransformerConfig(n_layer=n_layer, n_head=n_head, d_model=d_model,
                                        block_size=s.block_size)
            cfg = TrainConfig(model=arch, batch_size=s.batch_size, max_iters=steps, lr=s.lr,
                              min_lr=s.lr / 10, warmup_iters=max(1, steps // 10), eval_interval=steps,
                              eval_iters=s.eval_iters, full_eval=False, sample_tokens=0,
                              out_dir=str(models_dir / name), device=device)
            t0 = time.perf_counter()
            summary = train(cfg, progress=False, say=lambda *args: None)
            model = load_model(models_dir / name / "checkpoint.npz", device)[0]
            val_loss = estimate_loss(model, val_tokens, cfg)
            n = non_embedding_params(cfg, tokenizer.vocab_size)
            tokens = steps * s.batch_size * s.block_size
            points.append({"name": name, "n_layer": n_layer, "n_head": n_head, "d_model": d_model,
                           "params": summary["n_params"], "non_embedding_params": n, "steps": steps,
                           "tokens": tokens, "compute": 6 * n * tokens, "val_loss": val_loss,
                           "ms_per_iter": summary["ms_per_iter"], "wall_s": time.perf_counter() - t0})
            print(f"scaling {name}: N {n:,}, {tokens:,} tokens, val loss {val_loss:.4f} "
                  f"({points[-1]['wall_s']:.1f} s)", flush=True)
    front = frontier(points)
    results = {"settings": asdict(s), "device": device, "vocab_size": tokenizer.vocab_size,
               "eval_tokens": len(val_tokens) - 1, "runs": points,
               "frontier": [p["name"] for p in front]}
    try:
        a, b, c, rms = fit_power_law([p["compute"] for p in front], [p["val_loss"] for p in front])
        results["fit"] = {"a": a, "b": b, "c": c, "rms": rms}
    except ValueError as error:
        results["fit"] = None
        results["fit_error"] = str(error)
    results["wall_s"] = time.perf_counter() - started
    report.write_results(out_dir, results)
    plot(out_dir, results)
    report.write_report(out_dir, describe(results))
    return results


def describe(results):
    s, runs, fit = results["settings"], results["runs"], results["fit"]
    sizes = sorted({p["non_embedding_params"] for p in runs})
    lines = ["# scaling: validation loss against compute", "",
             f"Decoder-only models on Tiny Shakespeare (character tokenizer, vocabulary "
             f"{results['vocab_size']}), {len(s['sizes'])} sizes from {sizes[0]:,} to {sizes[-1]:,} "
             f"non-embedding parameters ({sizes[-1] / sizes[0]:.0f}x), each trained for "
             f"{', '.join(str(b) for b in s['budgets'])} steps of {s['batch_size']} x "
             f"{s['block_size']} tokens (AdamW, lr {s['lr']} with warmup and cosine decay to a "
             f"tenth, fitted to each budget). Validation loss: the first {results['eval_tokens']:,} "
             f"tokens of the validation split, the same for every run. Compute C = 6 N D with N the "
             f"non-embedding parameters and D the training tokens. Device: {results['device']}; wall "
             f"time {results['wall_s']:.0f} s.", ""]
    rows = [[p["name"], f"{p['non_embedding_params']:,}", f"{p['tokens']:,}", f"{p['compute']:.3g}",
             f"{p['val_loss']:.4f}", "yes" if p["name"] in results["frontier"] else "",
             f"{p['ms_per_iter']:.0f}"] for p in runs]
    lines += report.table(["run", "N (non-embedding)", "tokens D", "C = 6ND", "val loss", "frontier",
                           "ms/step"], rows) + [""]
    if fit:
        lines += [f"Fit to the {len(results['frontier'])} frontier points: **L(C) = {fit['a']:.4g} "
                  f"C^(-{fit['b']:.4f}) + {fit['c']:.4f}**, RMS residual {fit['rms']:.4f} nats.", "",
                  "The exponent describes these small models on one small corpus over a narrow "
                  "compute range; with few frontier points the floor c and the exponent b trade off "
                  "against each other, so read them together with the residual."]
    else:
        lines += [f"No fit: {results['fit_error']}."]
    return lines + ["", "![validation loss against compute](scaling.png)"]


def plot(out_dir, results):
    plt = report.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    runs = results["runs"]
    for n in sorted({p["non_embedding_params"] for p in runs}):
        same = sorted((p for p in runs if p["non_embedding_params"] == n), key=lambda p: p["compute"])
        left.plot([p["compute"] for p in same], [p["val_loss"] for p in same], "o-", ms=4, alpha=0.7,
                  label=f"N = {n:,}")
    front = [p for p in runs if p["name"] in results["frontier"]]
    front.sort(key=lambda p: p["compute"])
    left.plot([p["compute"] for p in front], [p["val_loss"] for p in front], "k--", lw=1.5,
              drawstyle="steps-post", label="frontier (lowest loss at or below C)")
    if results["fit"]:
        a, b, c = (results["fit"][k] for k in "abc")
        C = numpy.geomspace(min(p["compute"] for p in runs), max(p["compute"] for p in runs), 100)
        left.plot(C, a * C ** -b + c, "r-", lw=1, label=f"{a:.3g} C^-{b:.3f} + {c:.3f}")
    report.log_axes(left)
    left.set(xlabel="compute C = 6 N D (FLOPs)", ylabel="validation loss", title="loss against compute")
    left.legend(fontsize=7)
    for steps in results["settings"]["budgets"]:
        same = sorted((p for p in runs if p["steps"] == steps), key=lambda p: p["non_embedding_params"])
        right.plot([p["non_embedding_params"] for p in same], [p["val_loss"] for p in same], "o-", ms=4,
                   label=f"{same[0]['tokens']:,} tokens")
    report.log_axes(right)
    sizes = sorted({p["non_embedding_params"] for p in runs})
    right.set_xticks(sizes, [f"{n / 1e3:.3g}k" for n in sizes])
    right.set(xlabel="non-embedding parameters N", ylabel="validation loss",
              title="loss against model size, per token budget")
    right.legend(fontsize=7)
    report.save_figure(fig, out_dir, "scaling.png")
