"""Attention kernels side by side: the einsum reference, the fused kernel, and PyTorch's
scaled_dot_product_attention where torch imports. "fused" is what kernels.choose picks for
kernels="fused": on the CPU the short-sequence kernel below 512 keys, the flash kernel from 512.

For each size it first checks that the fused kernel agrees with the reference on the benchmark
inputs, then times forward and forward+backward (best of several runs after a warm-up: numba
compiles on first call; cupy is synchronised before the clock is read) and measures the peak
memory of forward+backward (CPU: tracemalloc, which numpy reports its buffers to; GPU: the peak
of cupy's memory pool).
The table is printed and appended, with machine, versions, date and command, to
benchmarks/RESULTS.md.

    python benchmarks/bench_attention.py                  # CPU: B=4, H=4, D=32, N = 64 .. 8192
    python benchmarks/bench_attention.py --quick          # N = 64, 256, 1024
    python benchmarks/bench_attention.py --device cuda    # GPU: B=4, H=12, N=4096, D=64, causal

Thread counts follow the usual variables (NUMBA_NUM_THREADS, OMP_NUM_THREADS for torch,
OPENBLAS_NUM_THREADS for numpy's BLAS); those that are set are recorded with the command.
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minitx  # noqa: E402
from threads import recorded  # noqa: E402
from minitx import backend  # noqa: E402
from minitx.kernels import attention_backward, attention_forward  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
CONFIGS = {   # device -> sizes, and the largest N the N^2-memory reference runs at
    "cpu": dict(B=4, H=4, D=32, Ns=(64, 128, 256, 512, 1024, 2048, 4096, 8192),
                quick_Ns=(64, 256, 1024),
                reference_max_N=2048, masks=("none", "causal")),
    "cuda": dict(B=4, H=12, D=64, Ns=(4096,), quick_Ns=(1024,), reference_max_N=4096,
                 masks=("causal",)),
}


class Device:
    """What differs between CPU and GPU runs: array module, clock, memory meter, torch device."""

    def __init__(self, name):
        self.name = name
        self.xp = backend.array_module(name)
        self.torch_device = None
        if torch is not None and (name == "cpu" or torch.cuda.is_available()):
            self.torch_device = name
        if name == "cpu":
            self._check_tracemalloc()

    def sync(self):
        if self.name == "cuda":
            self.xp.cuda.Device().synchronize()
            if self.torch_device:
                torch.cuda.synchronize()

    @staticmethod
    def _check_tracemalloc():
        tracemalloc.start()
        block = np.ones(1 << 20)                       # 8 MiB
        seen = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del block
        if seen < 8 << 20:
            raise RuntimeError("tracemalloc does not see numpy's allocations here; "
                               "the CPU memory column would be wrong")

    def peak_bytes(self, run, is_torch):
        """Peak memory allocated while `run()` executes, above what was in use before it;
        None where it cannot be measured (torch on the CPU: tracemalloc does not see it)."""
        if self.name == "cpu":
            if is_torch:
                return None
            tracemalloc.start()
            run()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return peak
        if is_torch:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base
        cupy = self.xp
        pool = cupy.get_default_memory_pool()
        base = pool.used_bytes()
        peak = [base]

        def counting_malloc(size):                     # record the pool's high-water mark
            memory = pool.malloc(size)
            peak[0] = max(peak[0], pool.used_bytes())
            return memory

        cupy.cuda.set_allocator(counting_malloc)
        try:
            run()
            self.sync()
        finally:
            cupy.cuda.set_allocator(pool.malloc)
        return peak[0] - base


def make_inputs(device, B, H, N, D, dtype, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((B, H, N, D)).astype(dtype) for _ in range(4)]   # q k v do
    return [backend.move_array(a, device.name) for a in arrays]


def minitx_runs(impl, inputs, causal):
    """(forward, forward+backward) closures for one minitx implementation."""
    q, k, v, do = inputs

    def forward():
        return attention_forward(q, k, v, causal=causal, kernels=impl)

    def forward_backward():
        o, lse = forward()
        return (o, lse) + attention_backward(q, k, v, o, lse, do, causal=causal, kernels=impl)

    return forward, forward_backward


def torch_runs(device, inputs, causal):
    q, k, v, do = (torch.as_tensor(backend.move_array(a, "cpu")).to(device.torch_device)
                   for a in inputs)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def forward():
        with torch.no_grad():
            return sdpa(q, k, v, is_causal=causal)

    def forward_backward():
        q.grad = k.grad = v.grad = None
        o = sdpa(q, k, v, is_causal=causal)
        o.backward(do)
        return o, q.grad, k.grad, v.grad

    return forward, forward_backward


def seconds(device, run):
    """Best wall time of `run` over at least 3 timed calls (more while they take under 2 s in
    all, at most 9), after one untimed call. The minimum, because whatever else runs on the
    machine can only add time."""
    run()
    times = []
    while len(times) < 3 or (sum(times) < 2.0 and len(times) < 9):
        device.sync()
        start = time.perf_counter()
        run()
        device.sync()
        times.append(time.perf_counter() - start)
    return min(times)


def max_relative_error(a, b):
    a, b = (backend.move_array(x, "cpu").astype(np.float64) for x in (a, b))
    finite = np.isfinite(b)
    assert (np.isfinite(a) == finite).all(), "infinities differ"
    return np.abs(a[finite] - b[finite]).max() / max(1.0, np.abs(b[finite]).max())


def flops(B, H, N, D, causal):
    """Forward + backward matrix FLOPs: 2 N x N x D products forward, 5 backward."""
    return 7 * 2 * B * H * N * N * D * (0.5 if causal else 1.0)


def benchmark(device, Ns, B, H, D, masks, reference_max_N, dtype, check_tolerance):
    rows = []
    for N in Ns:
        inputs = make_inputs(device, B, H, N, D, dtype)
        for mask in masks:
            causal = mask == "causal"
            runs = {"fused": minitx_runs("fused", inputs, causal)}
            if N <= reference_max_N:
                runs["reference"] = minitx_runs("reference", inputs, causal)
            if device.torch_device:
                runs["torch sdpa"] = torch_runs(device, inputs, causal)
            results = {name: fb() for name, (_, fb) in runs.items()}   # warm-up, and the check
            if "reference" in results:   # check first: every fused output against the reference
                errors = [max_relative_error(a, b)
                          for a, b in zip(results["fused"], results["reference"])]
                if max(errors) > check_tolerance:
                    raise SystemExit(f"fused and reference disagree at N={N}, {mask}: "
                                     f"max relative errors (o, lse, dq, dk, dv) {errors}")
            for name, (forward, forward_backward) in runs.items():
                fb_seconds = seconds(device, forward_backward)
                peak = device.peak_bytes(forward_backward, is_torch=name == "torch sdpa")
                rows.append(dict(
                    N=N, mask=mask, impl=name,
                    fwd_ms=1e3 * seconds(device, forward),
                    fwd_bwd_ms=1e3 * fb_seconds,
                    gflops=flops(B, H, N, D, causal) / fb_seconds / 1e9,
                    peak_mib=None if peak is None else peak / 2**20))
                print(format_row(rows[-1]), flush=True)
            del results
    return rows


HEADER = ("| N | mask | impl | forward ms | fwd+bwd ms | fwd+bwd GFLOP/s | peak MiB (fwd+bwd) |\n"
          "|---:|---|---|---:|---:|---:|---:|")


def format_row(r):
    peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
    return (f"| {r['N']} | {r['mask']} | {r['impl']} | {r['fwd_ms']:.1f} | "
            f"{r['fwd_bwd_ms']:.1f} | {r['gflops']:.1f} | {peak} |")


def summary(rows, target_N):
    """The lines the targets are judged by: fused vs reference at target_N, and how the fused
    kernel's peak memory grows from one N to the next."""
    lines = []
    by_key = {(r["N"], r["mask"], r["impl"]): r for r in rows}
    for mask in sorted({r["mask"] for r in rows}):
        ref = by_key.get((target_N, mask, "reference"))
        fused = by_key.get((target_N, mask, "fused"))
        if ref and fused:
            lines.append(f"- N={target_N}, {mask}: fused is {ref['fwd_ms'] / fused['fwd_ms']:.2f}x "
                         f"the reference's speed forward, "
                         f"{ref['fwd_bwd_ms'] / fused['fwd_bwd_ms']:.2f}x forward+backward; "
                         f"peak memory {fused['peak_mib']:.1f} vs {ref['peak_mib']:.1f} MiB")
        fused_rows = [r for r in rows if r["mask"] == mask and r["impl"] == "fused"]
        growth = [f"{b['N']}: x{b['peak_mib'] / a['peak_mib']:.2f}"
                  for a, b in zip(fused_rows, fused_rows[1:]) if a["peak_mib"]]
        if growth:
            lines.append(f"- fused peak memory, {mask}, factor per step in N "
                         f"(x2 = linear when N doubles): {', '.join(growth)}")
    return lines


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine(device):
    import numba
    lines = [f"- machine: {cpu_model()}, {os.cpu_count()} CPU cores, "
             f"numba threads {numba.get_num_threads()}"
             + (f", torch threads {torch.get_num_threads()}" if torch else ""),
             f"- python {platform.python_version()}, numpy {np.__version__}, "
             f"numba {numba.__version__}, torch {torch.__version__ if torch else 'not installed'}"]
    if device.name == "cuda":
        cupy = device.xp
        props = cupy.cuda.runtime.getDeviceProperties(0)
        lines.append(f"- GPU: {props['name'].decode()}, cupy {cupy.__version__}")
    return lines


def record(text):
    new = not os.path.exists(RESULTS)
    with open(RESULTS, "a") as f:
        if new:
            f.write("# Benchmark results\n\nEach section is appended by the script it names.\n")
        f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=backend.DEVICES, default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--dtype", choices=list(backend.DTYPES), default="float32")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--json", help="also write the rows to this file (for gpu_acceptance.sh)")
    args = parser.parse_args()
    minitx.use_fast_cpu_settings()   # as the command line does

    load_before = os.getloadavg()[0]
    device = Device(args.device)
    config = CONFIGS[args.device]
    Ns = config["quick_Ns"] if args.quick else config["Ns"]
    dtype = backend.to_dtype(args.dtype)
    B, H, D = config["B"], config["H"], config["D"]
    print(f"B={B} H={H} D={D} {dtype.name} on {args.device}\n{HEADER}", flush=True)
    rows = benchmark(device, Ns, B, H, D, config["masks"], config["reference_max_N"], dtype,
                     check_tolerance=1e-4 if dtype == np.float32 else 1e-10)
    lines = summary(rows, target_N=1024 if args.device == "cpu" else Ns[-1])
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)

    threads = recorded()
    command = " ".join(threads + ["python benchmarks/bench_attention.py"] + sys.argv[1:])
    if not args.no_record:
        record("\n".join([
            f"\n## bench_attention.py, {args.device}, "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n",
            f"`{command.strip()}`: B={B}, H={H}, D={D}, {dtype.name}; "
            f"time = best of at least 3 warm runs\n", *machine(device),
            f"- load average (1 min) before / after the run: {load_before:.2f} / "
            f"{os.getloadavg()[0]:.2f} (above the core count, other processes competed for "
            f"the CPU)", "", HEADER,
            *map(format_row, rows), "", *lines, ""]))
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
