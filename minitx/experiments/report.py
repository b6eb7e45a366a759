"""What every experiment writes into its run directory: results.json, report.md and PNG plots.

Also the small statistics the reports share: mean and standard deviation over seeds, and the
rule of thumb for whether a difference stands out from the seed-to-seed noise.
"""
import json
import math
from pathlib import Path

import numpy


def finite_numbers(obj):
    """Every number inside nested dicts and lists (bools excluded), for checking finiteness."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in finite_numbers(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in finite_numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def write_results(out_dir, results):
    """results.json; refuses NaN and infinity, which JSON cannot hold and a result should not be."""
    bad = [x for x in finite_numbers(results) if not math.isfinite(x)]
    if bad:
        raise FloatingPointError(f"results hold non-finite numbers: {bad[:5]}")
    path = Path(out_dir) / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def write_report(out_dir, lines):
    """report.md from a list of Markdown lines."""
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out_dir, name):
    path = Path(out_dir) / name
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def log_axes(ax):
    """Log-log axes labelled with plain numbers (2, 3 rather than 2x10^0), no crowded minor labels."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    ax.set(xscale="log", yscale="log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def table(header, rows):
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def mean_std(values):
    """(mean, sample standard deviation); the deviation is 0 for a single value."""
    values = numpy.asarray(values, dtype=numpy.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def pm(values, digits=3):
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def beyond_noise(a, b, k=2.0):
    """Whether the means of two groups of seeds differ by more than k pooled standard deviations.

    A rule of thumb, not a test: with three seeds per group the standard deviations are rough.
    Returns (difference of means b - a, pooled std, verdict).
    """
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    pooled = math.sqrt((std_a ** 2 + std_b ** 2) / 2)
    return mean_b - mean_a, pooled, abs(mean_b - mean_a) > k * pooled
