"""A minitx training step against PyTorch's, after checking that both compute the same thing.

    python benchmarks/run.py [--device cpu|cuda|all] [--iters N] [--runs N] [--threads N] [--note TEXT]

Per device, minitx's DecoderOnly at that device's training preset (shakespeare-cpu: 4 layers,
4 heads, d_model 128, block 64, batch 12; shakespeare-gpu: 6 layers, 6 heads, d_model 384,
block 256, batch 64; vocabulary 65, float32) and its PyTorch twin (tests/torch_twin.py) get the
same weights. Then:
  1. check: one batch gives the same loss (within 1e-4) and the same gradients (1e-3 relative)
  2. time the whole training step of each (forward, zero_grad, backward, clipping to norm 1,
     AdamW), warmed up, in rounds that alternate between the two so a busy machine slows both
     alike; that is one run, and --runs of them follow each other in this one invocation. Report
     the median, the quartiles, tokens/s, each run's ratio minitx / PyTorch and the median ratio
  3. on the CPU, profile minitx's step (profile_step.py): attention, matmuls, other ops, graph
     bookkeeping, and cProfile's functions with the most self time
Both run with the same number of threads (--threads; default: every core this process may use).
Results are appended to benchmarks/RESULTS.md and drawn in benchmarks/step_time.png.
Targets: minitx's step at most 1.5x PyTorch's on the CPU (stretch: parity), 2x on the GPU
(stretch: 1.25x).
"""
import argparse
import os

from threads import BLAS_VARIABLES, use_threads  # before NumPy and torch load


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="all: the CPU, and the GPU when there is one")
    parser.add_argument("--iters", type=int, default=100,
                        help="timed steps per framework, device and run")
    parser.add_argument("--runs", type=int, default=3,
                        help="interleaved runs (each alternates the frameworks); the ratio is their median")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU threads for both frameworks (BLAS, OpenMP, numba)")
    parser.add_argument("--note", default="", help="a line recorded with the results, e.g. the machine's load")
    return parser.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()
    # BLAS, OpenMP and numba read their thread counts once, when loaded: set them before the imports
    use_threads(ARGS.threads)

import datetime  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

# time the minitx of this checkout, not another one that happens to be installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import minitx  # noqa: E402
import numba  # noqa: E402
import numpy  # noqa: E402
import torch  # noqa: E402

from minitx.optim import AdamW  # noqa: E402
from minitx.train import build_model, preset  # noqa: E402

import profile_step  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import torch_twin  # noqa: E402  (tests/torch_twin.py: the twin the tests check minitx against)

HERE = Path(__file__).resolve().parent
VOCAB_SIZE = 65  # Tiny Shakespeare's characters
PRESETS = {"cpu": "shakespeare-cpu", "cuda": "shakespeare-gpu"}
TARGETS = {"cpu": (1.5, 1.0), "cuda": (2.0, 1.25)}  # (target, stretch) for minitx / PyTorch
LOSS_TOL, GRAD_TOL = 1e-4, 1e-3


def limit_blas_threads(n):
    """Hold NumPy's BLAS to n threads with threadpoolctl when it is installed, and say what it
    found; without it, the environment variables set at start-up are all there is."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')} (threadpoolctl not installed)"
    threadpool_limits(n)
    return "threadpoolctl: " + ", ".join(
        f"{p['internal_api']} {p['num_threads']}" + (f" ({p['architecture']} kernels)" if p.get("architecture") else "")
        for p in threadpool_info())


def machine(threads, blas_threads):
    """What the numbers were measured on."""
    cpu = platform.processor()
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
    blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    torch_blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "minitx"], cwd=HERE.parent,
                               capture_output=True, text=True).stdout.strip()
        commit += " with local changes to minitx/" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    info = {
        "cpu": f"{cpu}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)",
        "threads": f"{threads} (torch {torch.get_num_threads()}, numba {numba.get_num_threads()}, {blas_threads})",
        "versions": (f"Python {platform.python_version()}, numpy {numpy.__version__} "
                     f"(BLAS {blas['name']} {blas.get('version', '')}), numba {numba.__version__}, "
                     f"torch {torch.__version__} (BLAS {torch_blas.group(1) if torch_blas else '?'})"),
        "minitx": f"{minitx.__version__}, commit {commit}",
    }
    if minitx.cuda_available():
        import cupy
        info["gpu"] = (f"{cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, cupy {cupy.__version__}"
                       + (f", torch CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""))
    return info


def synchronizer(device):
    """A function that waits for both frameworks' queued GPU work (nothing to wait for on the CPU)."""
    if device == "cpu":
        return lambda: None
    import cupy

    def sync():
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()
    return sync


def check_agreement(model, twin, x, y, device):
    """Loss and gradients of one batch in both frameworks (dropout off); exits if they differ."""
    model.eval()
    twin.eval()
    loss = model(x, y)[1]
    loss.backward()
    twin_loss = twin(*(torch.as_tensor(a, device=device) for a in (x, y)))[1]
    twin_loss.backward()
    loss_diff = abs(loss.item() - twin_loss.item())
    twin_params = dict(twin.named_parameters())
    grad_err = max(float(numpy.abs(p.grad.numpy() - twin_params[n].grad.cpu().numpy()).max()
                         / numpy.abs(twin_params[n].grad.cpu().numpy()).max())
                   for n, p in model.named_parameters())
    model.zero_grad()
    twin.zero_grad()
    model.train()
    twin.train()
    print(f"  check: loss minitx {loss.item():.6f}, PyTorch {twin_loss.item():.6f} (|diff| {loss_diff:.1e}); "
          f"largest gradient difference {grad_err:.1e} of the parameter's largest gradient")
    if not (loss_diff <= LOSS_TOL and grad_err <= GRAD_TOL):
        sys.exit(f"minitx and PyTorch disagree on {device} (loss tolerance {LOSS_TOL}, gradient "
                 f"tolerance {GRAD_TOL}): not timing them")
    return loss_diff, grad_err


def measure(steps, iters, sync, rounds=4, warmup=3):
    """Seconds per step of each function in `steps` ({name: step(i)}): `rounds` rounds, each running
    every function in turn for `warmup` untimed steps (numba compiles on the first ones, and the
    other framework's worker threads settle) and then iters / rounds timed ones."""
    times = {name: [] for name in steps}
    per_round = max(1, iters // rounds)
    for _ in range(rounds):
        for name, step in steps.items():
            for i in range(warmup):
                step(i)
            for i in range(per_round):
                sync()
                t = time.perf_counter()
                step(i)
                sync()
                times[name].append(time.perf_counter() - t)
    return {name: numpy.array(t) for name, t in times.items()}


def bench(device, args):
    """Check, time and (on the CPU) profile one device's preset; returns a dict of results."""
    cfg = preset(PRESETS[device], device=device)
    m = cfg.model
    print(f"\n{device}: {PRESETS[device]} (layers {m.n_layer}, heads {m.n_head}, d_model {m.d_model}, "
          f"block {m.block_size}, batch {cfg.batch_size}, dropout {m.dropout}, float32)")
    minitx.manual_seed(cfg.seed)
    model = build_model(cfg, VOCAB_SIZE)
    twin = torch_twin.from_minitx(model, device)
    hyper = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    opt, twin_opt = AdamW(model.parameters(), **hyper), torch_twin.adamw(twin, **hyper)

    rng = numpy.random.default_rng(cfg.seed)
    tokens = rng.integers(0, VOCAB_SIZE, (8, cfg.batch_size, m.block_size + 1))
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]                      # numpy (B, T), like data.get_batch
    twin_batches = [tuple(torch.as_tensor(a, device=device) for a in b) for b in batches]
    loss_diff, grad_err = check_agreement(model, twin, *batches[0], device)

    steps = {"minitx": lambda i: profile_step.train_step(model, opt, *batches[i % len(batches)], cfg.grad_clip),
             "PyTorch": lambda i: torch_twin.train_step(twin, twin_opt, *twin_batches[i % len(batches)], cfg.grad_clip)}
    runs = [measure(steps, args.iters, synchronizer(device)) for _ in range(args.runs)]
    run_ratios = [numpy.median(r["minitx"]) / numpy.median(r["PyTorch"]) for r in runs]
    times = {name: numpy.concatenate([r[name] for r in runs]) for name in steps}
    tokens_per_step = cfg.batch_size * m.block_size
    result = {"device": device, "preset": PRESETS[device], "loss_diff": loss_diff, "grad_err": grad_err,
              "run_ratios": run_ratios}
    for name, t in times.items():
        q1, median, q3 = 1e3 * numpy.percentile(t, [25, 50, 75])
        result[name] = {"median": median, "q1": q1, "q3": q3, "tokens_per_s": tokens_per_step / (median / 1e3)}
        print(f"  {name:8s} {median:8.1f} ms/step (quartiles {q1:.1f} to {q3:.1f}, min {1e3 * t.min():.1f}, "
              f"{len(t)} steps), {result[name]['tokens_per_s']:,.0f} tokens/s")
    result["ratio"] = float(numpy.median(run_ratios))
    target, stretch = TARGETS[device]
    print(f"  minitx / PyTorch = {result['ratio']:.2f}, the median of {len(runs)} interleaved runs "
          f"({', '.join(f'{r:.2f}' for r in run_ratios)}); target at most {target}x, stretch {stretch}x")

    if device == "cpu":
        result["profile"] = profile_step.breakdown(model, opt, batches)
        result["top"] = profile_step.top_functions(steps["minitx"])
        print_profile(result["profile"], result["top"])
    return result


def print_profile(profile, top):
    step = profile["step"]
    print(f"\n  minitx step, profiled: {step:.1f} ms (timers add a little), {profile['nodes']:.0f} graph nodes, "
          f"graph (bookkeeping, gradient sums) {1e3 * profile['parts']['graph'] / profile['nodes']:.0f} us per node")
    for part, ms in profile["parts"].items():
        print(f"    {part:12s} {ms:8.2f} ms  {100 * ms / step:5.1f} %")
    print("  ops (calls per step, ms in forward, ms in backward):")
    for name, (calls, fwd, bwd) in profile["ops"].items():
        print(f"    {name:14s} {calls:4.0f} {fwd:8.2f} {bwd:8.2f}")
    print("  cProfile, most self time (ms per step, calls per step):")
    for name, ms, calls in top:
        print(f"    {ms:8.2f} {calls:6.0f}  {name}")


def markdown(results, info, command, note):
    """The section appended to RESULTS.md."""
    today = datetime.date.today().isoformat()
    lines = [f"## Training step: minitx against PyTorch ({today})", ""]
    if note:
        lines += [f"**{note}**", ""]
    lines += [f"- command: `{command}`"] + [f"- {key}: {value}" for key, value in info.items()] + [""]
    lines += ["| device | preset | minitx ms/step | PyTorch ms/step | minitx tokens/s | PyTorch tokens/s "
              "| minitx / PyTorch | target (stretch) | check: loss diff, grad diff |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m, t = r["minitx"], r["PyTorch"]
        target, stretch = TARGETS[r["device"]]
        lines.append(f"| {r['device']} | {r['preset']} | {m['median']:.1f} ({m['q1']:.1f}-{m['q3']:.1f}) "
                     f"| {t['median']:.1f} ({t['q1']:.1f}-{t['q3']:.1f}) | {m['tokens_per_s']:,.0f} "
                     f"| {t['tokens_per_s']:,.0f} | **{r['ratio']:.2f}x** | {target}x ({stretch}x) "
                     f"| {r['loss_diff']:.0e}, {r['grad_err']:.0e} |")
    lines += ["", "Medians of per-step times with quartiles in brackets, over all runs; minitx / PyTorch is the "
              "median of the runs' ratios (" + "; ".join(
                  f"{r['device']}: " + ", ".join(f"{x:.2f}" for x in r["run_ratios"]) for r in results)
              + "), each run alternating the two frameworks in rounds; a step is forward, zero_grad, "
              "backward, gradient clipping and AdamW."]
    for r in results:
        if "profile" not in r:
            continue
        p = r["profile"]
        lines += ["", f"Where minitx's {r['device']} step goes (profiled step {p['step']:.1f} ms, "
                  f"{p['nodes']:.0f} graph nodes, graph (bookkeeping, gradient sums) "
                  f"{1e3 * p['parts']['graph'] / p['nodes']:.0f} us per node):", "",
                  "| part | ms/step | share |", "|---|---|---|"]
        lines += [f"| {part} | {ms:.2f} | {100 * ms / p['step']:.1f} % |" for part, ms in p["parts"].items()]
        lines += ["", "| op | calls/step | forward ms | backward ms |", "|---|---|---|---|"]
        lines += [f"| {name} | {calls:.0f} | {fwd:.2f} | {bwd:.2f} |"
                  for name, (calls, fwd, bwd) in list(p["ops"].items())[:8]]
    return "\n".join(lines) + "\n"


def append_results(text, path=HERE / "RESULTS.md"):
    """Append a section, leaving what is already in the file as it is."""
    existing = path.read_text() if path.exists() else "# minitx benchmarks\n"
    path.write_text(existing.rstrip("\n") + "\n\n" + text)


def chart(results, threads, path=HERE / "step_time.png"):
    """Step time per device for both frameworks (bars at the median, whiskers at the quartiles),
    and beside it minitx's CPU step split into its parts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    profiled = [r for r in results if "profile" in r]
    fig, axes = plt.subplots(1, 1 + len(profiled), figsize=(5 + 5 * len(profiled), 4), squeeze=False)
    ax = axes[0][0]
    width = 0.38
    for k, name in enumerate(("minitx", "PyTorch")):
        xs = numpy.arange(len(results)) + (k - 0.5) * width
        medians = [r[name]["median"] for r in results]
        errors = [[r[name]["median"] - r[name]["q1"] for r in results], [r[name]["q3"] - r[name]["median"] for r in results]]
        ax.bar(xs, medians, width, yerr=errors, capsize=3, label=name)
    for i, r in enumerate(results):
        ax.text(i, max(r["minitx"]["q3"], r["PyTorch"]["q3"]) * 1.03, f"{r['ratio']:.2f}x", ha="center")
    ax.set_ylim(0, 1.15 * max(max(r["minitx"]["q3"], r["PyTorch"]["q3"]) for r in results))
    ax.set_xticks(range(len(results)), [f"{r['device']}\n{r['preset']}" for r in results])
    ax.set(ylabel="ms per training step (median)", title=f"training step: minitx vs PyTorch, {threads} threads")
    ax.legend()
    for ax, r in zip(axes[0][1:], profiled):
        parts = {k: v for k, v in r["profile"]["parts"].items() if k != "unaccounted"}
        ax.barh(list(parts), list(parts.values()), color="tab:blue")
        ax.invert_yaxis()
        ax.set(xlabel="ms per step", title=f"minitx {r['device']} step, profiled ({r['profile']['step']:.0f} ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args):
    minitx.use_fast_cpu_settings()   # as the command line does
    blas_threads = limit_blas_threads(args.threads)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not (minitx.cuda_available() and torch.cuda.is_available()):
        if args.device == "cuda":
            sys.exit("--device cuda needs CuPy and a CUDA build of PyTorch, both seeing a GPU")
        print("no GPU for both minitx (CuPy) and PyTorch here: CPU only")
        devices = ["cpu"]
    load_before = os.getloadavg()[0]
    info = machine(args.threads, blas_threads)
    for key, value in info.items():
        print(f"{key}: {value}")
    results = [bench(device, args) for device in devices]
    info["load"] = (f"1-minute load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after "
                    f"({os.cpu_count()} cores; above the core count, other processes shared them)")
    print(info["load"])
    command = shlex.join([*(f"{name}={os.environ[name]}" for name in BLAS_VARIABLES if name in os.environ),
                          "python", "benchmarks/run.py", *sys.argv[1:]])
    append_results(markdown(results, info, command, args.note))
    chart(results, args.threads)
    print(f"\nappended to {HERE / 'RESULTS.md'}; chart in {HERE / 'step_time.png'}")


if __name__ == "__main__":
    main(ARGS)
