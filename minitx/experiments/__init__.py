"""Experiments that train or time small models and write a report: `python -m minitx experiment NAME`.

    arch        encoder-decoder to decoder-only, one switch at a time, on two seq2seq tasks
    chat-cache  a growing conversation: a causal model keeping its KV cache across turns against
                a model that attends bidirectionally over the history and re-reads it every turn
    precision   the CPU preset trained in float32, bfloat16, float16 without and with loss scaling;
                gradient magnitudes against float16's underflow
    scaling     validation loss of decoder-only models of several sizes and token budgets
                against compute, the compute-efficient frontier and a power-law fit
    speculative a small draft model proposing k tokens for a larger target to verify: acceptance
                rate and wall-clock speed-up over plain cached decoding for k = 1 .. 8

Each writes report.md, results.json (every number) and PNG plots into its run directory.
Sizes: "toy" (seconds, for tests), "default" (minutes on a laptop CPU), "large" (for a GPU).
"""
from pathlib import Path

from ..backend import check_device

from . import arch, chat_cache, precision, scaling, speculative

EXPERIMENTS = {"arch": arch.run, "chat-cache": chat_cache.run, "precision": precision.run,
               "scaling": scaling.run, "speculative": speculative.run}
SIZES = ("toy", "default", "large")


def run(name, out_dir=None, device="cpu", size="default"):
    """Run experiment `name` into out_dir (default runs/experiment-NAME); returns its results dict."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}: expected one of {', '.join(EXPERIMENTS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: expected one of {', '.join(SIZES)}")
    check_device(device)
    out = Path(out_dir if out_dir is not None else f"runs/experiment-{name}")
    out.mkdir(parents=True, exist_ok=True)
    results = EXPERIMENTS[name](out, device=device, size=size)
    print(f"wrote {out / 'report.md'}, {out / 'results.json'} and plots")
    return results
