"""precision: the CPU preset trained in float32, bfloat16, and float16 without and with loss scaling.

Four `minitx.train` runs that differ only in --precision and --loss-scale (same seed, same
batches, float32 master weights and AdamW in all four; see minitx/precision.py). Each is scored
in float32 on the same stretch of the validation split, so the runs differ only in how they
trained.

Then a census of the gradients: one backward pass of the trained float32 model on a training
batch, every gradient an op receives (the gradient of each intermediate tensor, once) and every
weight's gradient, by magnitude, against float16's limits:
    |g| < 2^-25               rounds to zero in float16 (2^-24 is its smallest subnormal)
    2^-25 <= |g| < 2^-14      a subnormal: kept, with fewer than 10 significant bits
    |g| >= 65520              overflows to infinity (65504 is the largest float16)
and where the same values land once multiplied by the loss scale S the scaled run ended with:
the whole distribution moves right by log2(S) on the log axis, out of the underflow region.
"""
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy

from .. import backend, data
from ..precision import FP16_MAX, FP16_SMALLEST_NORMAL, FP16_SMALLEST_SUBNORMAL, autocast
from ..train import Run, estimate_loss, load_model, preset, train
from . import report


@dataclass
class Settings:
    model: dict = field(default_factory=dict)   # TransformerConfig fields over the CPU preset's
    batch_size: int = 12
    steps: int = 200
    lr: float = 1e-3
    eval_tokens: int = 16384    # the first this many validation tokens score every run
    eval_iters: int = 4         # batches for the estimates each run logs at its start and end


SIZES = {
    "toy": Settings(model=dict(n_layer=1, n_head=2, d_model=16, block_size=16), batch_size=4, steps=20,
                    lr=1e-2, eval_tokens=1024, eval_iters=1),
    "default": Settings(),
    "large": Settings(steps=2000, eval_tokens=111_000, eval_iters=20),   # the preset's whole run
}
# name: (--precision, --loss-scale)
RUNS = {"fp32": ("fp32", 0), "bf16": ("bf16", 0), "fp16, no loss scaling": ("fp16", 0),
        "fp16, loss scaling": ("fp16", 2.0 ** 16)}
UNDERFLOW = FP16_SMALLEST_SUBNORMAL / 2   # below this (and at it: the tie goes to even) float16 has 0
OVERFLOW = 65520.0                        # from here on float16 rounds to infinity


class GradientCensus:
    """A precision policy that rounds nothing and keeps the magnitude of every gradient that
    reaches an op's backward (each intermediate tensor's gradient, once)."""

    def __init__(self):
        self.magnitudes = []

    def forward(self, ctx, arrays, params):
        ctx.policy = self
        return ctx.fn.forward(ctx, *arrays, **params)

    def backward(self, ctx, grad):
        self.add(grad)
        return ctx.fn.backward(ctx, grad)

    def add(self, g):
        self.magnitudes.append(numpy.abs(backend.move_array(g, "cpu")).astype(numpy.float32).ravel())


def census(model, tokens, cfg, seed=0):
    """|g| of every gradient of one backward pass on a training batch (float32, no policy)."""
    x, y = data.get_batch(tokens, cfg.batch_size, cfg.model.block_size, numpy.random.default_rng(seed))
    counter = GradientCensus()
    with autocast(counter):
        loss = model(x, y)[1]
    loss.backward()
    for p in model.parameters():
        counter.add(p.grad.data)
    return numpy.concatenate(counter.magnitudes)


def fp16_fate(magnitudes, scale=1.0):
    """Fractions of the nonzero gradients that float16 flushes to zero, keeps as subnormals,
    keeps as normal numbers and overflows, after multiplying by `scale`."""
    g = magnitudes[magnitudes > 0].astype(numpy.float64) * scale
    n = max(len(g), 1)
    zero = numpy.count_nonzero(g <= UNDERFLOW)
    subnormal = numpy.count_nonzero((g > UNDERFLOW) & (g < FP16_SMALLEST_NORMAL))
    overflow = numpy.count_nonzero(g >= OVERFLOW)
    return {"zero": zero / n, "subnormal": subnormal / n, "overflow": overflow / n,
            "normal": (len(g) - zero - subnormal - overflow) / n}


def run(out_dir, device="cpu", size="default"):
    s = SIZES[size]
    _, train_tokens, val_tokens = data.prepare()
    val_tokens = val_tokens[:s.eval_tokens + 1]
    models_dir = Path(out_dir) / "models"
    shutil.rmtree(models_dir, ignore_errors=True)   # train() refuses to overwrite a run
    started = time.perf_counter()
    runs = {}
    for name, (fmt, scale) in RUNS.items():
        cfg = preset("shakespeare-cpu", model=s.model, batch_size=s.batch_size, max_iters=s.steps,
                     lr=s.lr, min_lr=s.lr / 10, warmup_iters=max(1, s.steps // 10),
                     eval_interval=s.steps, eval_iters=s.eval_iters, full_eval=False, sample_tokens=0,
                     out_dir=str(models_dir / name.replace(", ", "-").replace(" ", "-")),
                     device=device, precision=fmt, loss_scale=scale)
        t0 = time.perf_counter()
        entry = {"precision": fmt, "loss_scale": scale}
        try:
            summary = train(cfg, progress=False, say=lambda *args: None)
            model = load_model(Path(cfg.out_dir) / "checkpoint.npz", device)[0]
            entry.update(val_loss=estimate_loss(model, val_tokens, cfg), ms_per_iter=summary["ms_per_iter"])
        except FloatingPointError as error:   # the loss became inf or NaN: the run is lost
            entry.update(val_loss=None, diverged=str(error))
        steps = [r for r in Run(cfg.out_dir).records() if "loss" in r]
        entry["curve"] = [[r["step"], r["loss"]] for r in steps]
        if scale:
            entry.update(final_scale=steps[-1]["loss_scale"], skipped=steps[-1]["skipped"])
        entry["wall_s"] = time.perf_counter() - t0
        runs[name] = entry
        print(f"precision {name}: val loss {entry['val_loss']} ({entry['wall_s']:.1f} s)", flush=True)

    fp32 = preset("shakespeare-cpu", model=s.model, batch_size=s.batch_size)
    model = load_model(models_dir / "fp32" / "checkpoint.npz", device)[0]
    magnitudes = census(model, train_tokens, fp32)
    scale = runs["fp16, loss scaling"]["final_scale"]
    results = {"settings": asdict(s), "device": device, "runs": runs,
               "census": {"n_gradients": int(magnitudes.size),
                          "n_zero_in_float32": int(numpy.count_nonzero(magnitudes == 0)),
                          "scale": scale, "unscaled": fp16_fate(magnitudes),
                          "scaled": fp16_fate(magnitudes, scale)},
               "wall_s": time.perf_counter() - started}
    report.write_results(out_dir, results)
    plot(out_dir, results, magnitudes)
    report.write_report(out_dir, describe(results))
    return results


def describe(results):
    s, runs, c = results["settings"], results["runs"], results["census"]
    changed = ", ".join(f"{k}={v}" for k, v in s["model"].items())
    model = f" (model fields changed: {changed})" if changed else ""
    lines = ["# precision: float32, bfloat16, float16 without and with loss scaling", "",
             f"The shakespeare-cpu preset{model} trained for {s['steps']} "
             f"steps of {s['batch_size']} sequences, lr {s['lr']} with warmup and cosine decay, in "
             f"four precisions; weights, gradients and AdamW stay float32 in all four. Validation "
             f"loss: float32 on the first {s['eval_tokens']:,} validation tokens. Device: "
             f"{results['device']}; wall time {results['wall_s']:.0f} s.", ""]
    rows = [[name, f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "diverged",
             f"{r['curve'][-1][1]:.4f}" if r["curve"] else "", r.get("skipped", ""),
             f"{r['final_scale']:g}" if "final_scale" in r else "",
             f"{r['ms_per_iter']:.0f}" if r.get("ms_per_iter") else ""] for name, r in runs.items()]
    lines += report.table(["run", "val loss", "last batch loss", "skipped steps", "final loss scale",
                           "ms/step"], rows) + [""]
    u, sc = c["unscaled"], c["scaled"]
    pct = lambda x: f"{100 * x:.2f} %"
    lines += [f"Gradient census (one backward pass of the trained float32 model, {c['n_gradients']:,} "
              f"gradient values, {c['n_zero_in_float32']:,} of them exactly zero in float32 and left "
              f"out): what float16 storage does to the rest, as they are and multiplied by the loss "
              f"scale S = {c['scale']:g} the scaled run ended with.", ""]
    lines += report.table(["", "flushed to zero (< 2^-25)", "subnormal (< 2^-14)", "normal",
                           "overflow (>= 65520)"],
                          [["gradients", pct(u["zero"]), pct(u["subnormal"]), pct(u["normal"]), pct(u["overflow"])],
                           [f"gradients x {c['scale']:g}", pct(sc["zero"]), pct(sc["subnormal"]),
                            pct(sc["normal"]), pct(sc["overflow"])]]) + [""]
    lines += ["Emulated on the CPU: each op reads inputs rounded to the format, computes in float32 "
              "and stores its output rounded; softmax, norms and the loss stay float32. The ms/step "
              "column is the emulation's cost, not a speed-up a GPU would show.", "",
              "![loss curves and gradient magnitudes](precision.png)"]
    return lines


def plot(out_dir, results, magnitudes):
    plt = report.pyplot()
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(18, 4.5), width_ratios=(1, 1, 1.4))
    reference = dict(results["runs"]["fp32"]["curve"])
    for name, r in results["runs"].items():
        steps, loss = numpy.array(r["curve"]).T if r["curve"] else ([], [])
        window = max(1, len(loss) // 20)
        smooth = numpy.convolve(loss, numpy.ones(window) / window, mode="valid") if len(loss) else loss
        val = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "diverged"
        left.plot(steps[window - 1:], smooth, lw=1.2, label=f"{name} (val {val})")
        middle.plot(steps, [l - reference.get(int(step), numpy.nan) for step, l in zip(steps, loss)],
                    lw=0.8, label=name)
    left.set(xlabel="step", ylabel="training loss (moving average)", title="loss curves")
    left.legend(fontsize=8)
    middle.set(xlabel="step", ylabel="batch loss minus fp32's", title="difference from fp32, step by step")
    middle.legend(fontsize=8)

    c = results["census"]
    g = numpy.log2(magnitudes[magnitudes > 0].astype(numpy.float64))
    bins = numpy.arange(numpy.floor(g.min()), numpy.ceil(g.max() + numpy.log2(c["scale"])) + 1, 0.5)
    u, sc = c["unscaled"], c["scaled"]
    right.hist(g, bins, histtype="step", lw=1.2, label=f"|g|, float32 gradients ({100 * u['zero']:.1f} % "
               f"zero, {100 * u['subnormal']:.1f} % subnormal in float16)")
    right.hist(g + numpy.log2(c["scale"]), bins, histtype="step", lw=1.2,
               label=f"|g| x S, S = 2^{numpy.log2(c['scale']):.0f} the loss scale ({100 * sc['zero']:.2f} % "
               f"zero, {100 * sc['subnormal']:.2f} % subnormal)")
    right.axvspan(bins[0], numpy.log2(UNDERFLOW), color="r", alpha=0.12, label="float16: zero")
    right.axvspan(numpy.log2(UNDERFLOW), numpy.log2(FP16_SMALLEST_NORMAL), color="orange", alpha=0.12,
                  label="float16: subnormal")
    for value, text in ((FP16_SMALLEST_SUBNORMAL, "smallest subnormal 2^-24"),
                        (FP16_SMALLEST_NORMAL, "smallest normal 2^-14"), (FP16_MAX, "largest 65504")):
        right.axvline(numpy.log2(value), color="k", lw=0.8, ls="--")
        right.text(numpy.log2(value), 0.98, " " + text, rotation=90, va="top", fontsize=7,
                   transform=right.get_xaxis_transform())
    right.set_yscale("log")
    right.set(xlabel="log2 |gradient|", ylabel="count", title="gradient magnitudes against float16")
    right.legend(fontsize=7, loc="upper left")
    report.save_figure(fig, out_dir, "precision.png")
