"""Data and tensor parallel at 1 and 2 processes: step time and bytes communicated per step.

    python benchmarks/bench_distributed.py [--steps 30]

launches, for each kind, `mpiexec -n 1` and `mpiexec -n 2` of this file as a worker, all on the
shakespeare-cpu model (4 layers, 4 heads, d_model 128, block 64) in float32 with a global batch
of 12 windows: data parallel gives each rank 12 / size of them, tensor parallel gives every
rank all 12 and 1 / size of every block. One process runs with all cores' threads and with
one; two ranks split the cores (BLAS and numba threads = cores / ranks). Check first: every run's first loss must equal the one-process loss.
Then the medians are appended, with the machine and the load, to benchmarks/RESULTS.md.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GLOBAL_BATCH = 12


def worker(kind, steps, warmup=3):
    """Runs on every rank; rank 0 prints one JSON line."""
    import numpy
    import minitx
    from minitx import data, distributed, nn
    from minitx.optim import AdamW

    minitx.use_fast_cpu_settings()  # as the command line does
    strategy = distributed.setup(kind)
    world = strategy.world
    _, tokens, _ = data.prepare()
    minitx.manual_seed(0)
    cfg = nn.TransformerConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, d_model=128)
    model = strategy.prepare(nn.DecoderOnly(cfg))
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    rng = numpy.random.default_rng(0)
    batch = GLOBAL_BATCH // world.size if kind == "data" else GLOBAL_BATCH
    times, sent, losses = [], [], []
    for step in range(warmup + steps):
        world.barrier()  # start together: a step's time is the slowest rank's
        before, t0 = world.bytes_sent, time.perf_counter()
        x, y = strategy.get_batch(tokens, batch, cfg.block_size, rng)
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        strategy.reduce_gradients()
        strategy.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        losses.append(strategy.loss(loss.item()))
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            sent.append(world.bytes_sent - before)
    if world.is_main:
        print(json.dumps({"kind": kind, "ranks": world.size, "batch_per_rank": batch,
                          "ms": [1e3 * t for t in times], "bytes": sent, "first_loss": losses[0],
                          "n_params": model.n_params() if world.size == 1 or kind == "data" else None}))


def launch(kind, ranks, threads, steps):
    threads = str(threads)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(["mpiexec", "-n", str(ranks), sys.executable, __file__, "--worker", kind,
                          "--steps", str(steps)], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["threads"] = threads
    return result


def quartiles(values):
    import numpy
    return numpy.percentile(values, [25, 50, 75])


def markdown(results, steps, load):
    import numpy
    import minitx
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    lines = [f"## Data and tensor parallel over MPI, 1 and 2 processes ({time.strftime('%Y-%m-%d')})", "",
             f"- command: `python benchmarks/bench_distributed.py --steps {steps}`",
             f"- cpu: {cpu}, {os.cpu_count()} cores; the ranks share them (threads per rank below)",
             f"- versions: Python {platform.python_version()}, numpy {numpy.__version__}, "
             f"mpi4py {__import__('mpi4py').__version__}, {mpi_library()}",
             f"- minitx: {minitx.__version__}, commit {commit}",
             f"- load: 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after "
             "(above the core count, other processes were sharing the cores)",
             "- model: shakespeare-cpu (4 layers, 4 heads, d_model 128, block 64, 0.8 M parameters), "
             f"float32, global batch {GLOBAL_BATCH}", "",
             "| kind | ranks | windows per rank | threads per rank | ms/step | bytes sent per rank per step | first loss |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        q1, med, q3 = quartiles(r["ms"])
        lines.append(f"| {r['kind']} | {r['ranks']} | {r['batch_per_rank']} | {r['threads']} | "
                     f"{med:.1f} ({q1:.1f}-{q3:.1f}) | {int(numpy.median(r['bytes'])):,} | {r['first_loss']:.6f} |")
    lines += ["", "Medians of per-step times with quartiles in brackets; a step is batch, forward, "
              "backward, gradient allreduce (data), clipping on the global norm and AdamW. Bytes "
              "are the payload one rank hands to MPI_Allreduce (a ring allreduce moves about "
              "2 (p - 1) / p of it over each link).", ""]
    return "\n".join(lines)


def mpi_library():
    from mpi4py import MPI
    return " ".join(MPI.Get_library_version().splitlines()[0].split())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--worker", choices=["data", "tensor"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps)
    load_before = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    runs = [(kind, ranks, threads) for kind in ("data", "tensor")  # one process: all cores, and one
            for ranks, threads in ((1, cores), (1, 1), (2, max(1, cores // 2)))]
    results = [launch(kind, ranks, threads, args.steps) for kind, ranks, threads in runs]
    reference = results[0]["first_loss"]
    for r in results:  # check first: the same first step, whatever the split
        if abs(r["first_loss"] - reference) > 1e-4 * abs(reference):
            raise SystemExit(f"{r['kind']} on {r['ranks']} ranks: first loss {r['first_loss']} "
                             f"differs from one process's {reference}")
    text = markdown(results, args.steps, (load_before, os.getloadavg()[0]))
    print(text)
    path = HERE / "RESULTS.md"
    path.write_text(path.read_text().rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
