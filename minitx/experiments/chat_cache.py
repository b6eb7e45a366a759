"""chat-cache: what a conversation costs when the model can keep its KV cache, and when it cannot.

Turn t appends a user message of u tokens and a reply of r tokens, so before turn t the history
holds (t - 1)(u + r) tokens. Two ways to serve it with the same weights:
  cached      a causal decoder-only model keeps one KVCache for the whole conversation. Turn t
              runs the u user tokens as one chunk, then the r reply tokens one at a time, each
              attending over everything cached before it.
  re-encode   the history is read bidirectionally (the prefix-LM mask over all of it), so a new
              message changes the keys and values of every earlier token: turn t re-runs the
              whole history h_t = (t - 1)(u + r) + u as one prefix, then decodes the r reply
              tokens causally against a cache of that prefix.
(An encoder-decoder that re-encodes the full history each turn pays the same way.)

FLOPs of one forward pass (multiply-adds count 2), for a token that attends over `keys` keys:
    matmul     2 P            P = the weights of every matrix product: attention and MLP
                              matrices of all layers and the (tied) output layer, vocab x d_model
    attention  4 n_layer d_model keys      q.k scores and the p.v sum, all heads together
So a turn costs 2 P (tokens it runs) + 4 n_layer d_model (sum over those tokens of their keys):
    cached     2 P (u + r) + 4 L d sum_{i=1}^{u+r} (c + i),   c = (t - 1)(u + r)   linear in t
    re-encode  2 P (h + r) + 4 L d (h^2 + sum_{j=1}^{r} (h + j)),   h = h_t          quadratic in t
Summed over T turns the cached cost grows as T^2 (attention only), re-encoding as T^3.

Wall time is measured per turn with a real model (random weights: the cost does not depend on
them), the reply tokens taken from a fixed script so both protocols run the same conversation,
best of several repetitions. Before timing, the experiment checks that the cached protocol gives
the same logits as one full causal forward over the conversation, and that re-encoding gives the
same logits as one prefix-LM forward over each turn: both protocols compute what they claim.
"""
import time
from dataclasses import asdict, dataclass

import numpy

from .. import backend, nn, random
from ..autograd import no_grad
from ..nn import KVCache
from . import report


@dataclass
class Settings:
    n_layer: int = 6
    n_head: int = 8
    d_model: int = 256
    vocab_size: int = 65
    user: int = 16        # u: tokens per user message
    reply: int = 16       # r: tokens per reply
    turns: int = 16
    repeats: int = 3      # timings: best of this many runs of the whole conversation


SIZES = {
    "toy": Settings(n_layer=1, n_head=2, d_model=16, user=3, reply=2, turns=10, repeats=1),
    "default": Settings(),
    "large": Settings(n_layer=12, n_head=12, d_model=768, user=64, reply=64, turns=24),
}

PROTOCOLS = ("cached", "re-encode")


def turn_calls(t, u, r, protocol):
    """The forward passes of turn t (1-based): a list of (new tokens, cached tokens before them,
    bidirectional). The same list drives the FLOP count and the timed run."""
    c = (t - 1) * (u + r)
    if protocol == "cached":
        return [(u, c, False)] + [(1, c + u + j, False) for j in range(r)]
    h = c + u
    return [(h, 0, True)] + [(1, h + j, False) for j in range(r)]


def matmul_weights(model):
    """P: the entries of every weight matrix a token is multiplied by (positions are looked up)."""
    return sum(p.size for name, p in model.named_parameters()
               if p.ndim == 2 and not name.startswith("embed.positions"))


def call_flops(P, cfg, new, past, bidirectional):
    """(matmul, attention) FLOPs of running `new` tokens after `past` cached ones."""
    if bidirectional:
        keys = new * (past + new)                             # every token sees every other
    else:
        keys = new * past + new * (new + 1) // 2              # token i sees past + i keys
    return 2 * P * new, 4 * cfg.n_layer * cfg.d_model * keys


def turn_flops(P, cfg, s, t, protocol):
    parts = [call_flops(P, cfg, *call) for call in turn_calls(t, s.user, s.reply, protocol)]
    return {"matmul": sum(m for m, _ in parts), "attention": sum(a for _, a in parts)}


@no_grad()
def converse(model, tokens, s, protocol):
    """Run the conversation `tokens` under a protocol; returns (seconds per turn, logits per turn).

    Each turn's logits are those of all the tokens it runs, as (n, vocab) numpy arrays."""
    seconds, logits = [], []
    cache = KVCache()
    for t in range(1, s.turns + 1):
        if protocol == "re-encode":
            cache = KVCache()
        turn = []
        t0 = time.perf_counter()
        for new, past, bidirectional in turn_calls(t, s.user, s.reply, protocol):
            ids = tokens[None, past:past + new]
            out = model(ids, cache=cache, prefix=new if bidirectional else None)[0]
            turn.append(out.numpy()[0])  # the next token is chosen from these: waits for the device
        seconds.append(time.perf_counter() - t0)
        logits.append(numpy.concatenate(turn))
    return seconds, logits


@no_grad()
def check_logits(model, tokens, s, logits):
    """Largest difference between each protocol's logits and a single uncached forward pass:
    cached against one causal pass over the whole conversation, re-encode against one prefix-LM
    pass per turn over history + reply."""
    full = model(tokens[None])[0].numpy()[0]
    cached = numpy.concatenate(logits["cached"])
    diffs = {"cached": float(numpy.abs(cached - full[:len(cached)]).max())}
    worst = 0.0
    for t, turn in enumerate(logits["re-encode"], start=1):
        h = (t - 1) * (s.user + s.reply) + s.user
        reference = model(tokens[None, :h + s.reply], prefix=h)[0].numpy()[0]
        worst = max(worst, float(numpy.abs(turn - reference).max()))
    diffs["re-encode"] = worst
    return diffs


def run(out_dir, device="cpu", size="default"):
    s = SIZES[size]
    length = s.turns * (s.user + s.reply)
    cfg = nn.TransformerConfig(vocab_size=s.vocab_size, block_size=length, n_layer=s.n_layer,
                               n_head=s.n_head, d_model=s.d_model)
    random.manual_seed(0)
    with backend.default_device_as(device):
        model = nn.DecoderOnly(cfg).eval()
    tokens = numpy.random.default_rng(0).integers(0, s.vocab_size, length)  # the script
    P = matmul_weights(model)

    logits, seconds = {}, {p: [] for p in PROTOCOLS}
    for protocol in PROTOCOLS:  # an untimed pass first: compiles kernels, warms caches
        logits[protocol] = converse(model, tokens, s, protocol)[1]
    logit_diff = check_logits(model, tokens, s, logits)
    for _ in range(s.repeats):
        for protocol in PROTOCOLS:
            seconds[protocol].append(converse(model, tokens, s, protocol)[0])

    turns = list(range(1, s.turns + 1))
    results = {"settings": asdict(s), "device": device, "n_params": model.n_params(),
               "matmul_weights": P, "max_logit_diff": logit_diff, "turns": turns, "protocols": {}}
    for protocol in PROTOCOLS:
        flops = [turn_flops(P, cfg, s, t, protocol) for t in turns]
        total = [f["matmul"] + f["attention"] for f in flops]
        best = numpy.min(seconds[protocol], axis=0).tolist()
        results["protocols"][protocol] = {
            "tokens_run": [sum(new for new, _, _ in turn_calls(t, s.user, s.reply, protocol)) for t in turns],
            "flops": total, "matmul_flops": [f["matmul"] for f in flops],
            "attention_flops": [f["attention"] for f in flops],
            "cumulative_flops": numpy.cumsum(total).tolist(),
            "seconds": best, "cumulative_seconds": numpy.cumsum(best).tolist()}
    at = min(10, s.turns) - 1
    a, b = results["protocols"]["cached"], results["protocols"]["re-encode"]
    results["ratio_at"] = {"turn": at + 1, **{
        key: b[key][at] / a[key][at]
        for key in ("flops", "cumulative_flops", "seconds", "cumulative_seconds")}}
    report.write_results(out_dir, results)
    plot(out_dir, results)
    report.write_report(out_dir, describe(results))
    return results


def describe(results):
    s, ratio = results["settings"], results["ratio_at"]
    a, b = results["protocols"]["cached"], results["protocols"]["re-encode"]
    n = ratio["turn"]
    lines = ["# chat-cache: keeping the KV cache across turns against re-encoding the history", "",
             f"Model: decoder-only, {s['n_layer']} layers, {s['n_head']} heads, d_model "
             f"{s['d_model']}, vocabulary {s['vocab_size']}: {results['n_params']:,} parameters, "
             f"P = {results['matmul_weights']:,} matrix weights per token. Each turn: a user "
             f"message of u = {s['user']} tokens, a reply of r = {s['reply']} tokens (decoded one "
             f"at a time); {s['turns']} turns. Device: {results['device']}.", "",
             "- **cached**: causal model, one KV cache kept for the whole conversation.",
             "- **re-encode**: bidirectional (prefix-LM) over the history, so each turn re-runs "
             "the whole history, then decodes the reply against a cache of it.", "",
             "FLOPs per forward pass: 2 P per token (matrix products) + 4 n_layer d_model per "
             "attended key; seconds: best of "
             f"{s['repeats']} run(s) of the whole conversation.", "",
             f"Both protocols compute what they claim: the largest logit difference to an uncached "
             f"forward pass is {results['max_logit_diff']['cached']:.2e} (cached, against one "
             f"causal pass) and {results['max_logit_diff']['re-encode']:.2e} (re-encode, against "
             "one prefix-LM pass per turn).", "",
             f"## At turn {n}", "",
             *report.table(["", "cached", "re-encode", "ratio"], [
                 ["tokens run in the turn", a["tokens_run"][n - 1], b["tokens_run"][n - 1],
                  f"{b['tokens_run'][n - 1] / a['tokens_run'][n - 1]:.1f}"],
                 ["GFLOPs in the turn", f"{a['flops'][n - 1] / 1e9:.3g}", f"{b['flops'][n - 1] / 1e9:.3g}",
                  f"{ratio['flops']:.1f}"],
                 [f"GFLOPs, turns 1-{n}", f"{a['cumulative_flops'][n - 1] / 1e9:.3g}",
                  f"{b['cumulative_flops'][n - 1] / 1e9:.3g}", f"{ratio['cumulative_flops']:.1f}"],
                 ["ms in the turn", f"{1e3 * a['seconds'][n - 1]:.1f}", f"{1e3 * b['seconds'][n - 1]:.1f}",
                  f"{ratio['seconds']:.1f}"],
                 [f"ms, turns 1-{n}", f"{1e3 * a['cumulative_seconds'][n - 1]:.1f}",
                  f"{1e3 * b['cumulative_seconds'][n - 1]:.1f}", f"{ratio['cumulative_seconds']:.1f}"],
                 ["GFLOP/s achieved in the turn", f"{a['flops'][n - 1] / a['seconds'][n - 1] / 1e9:.2f}",
                  f"{b['flops'][n - 1] / b['seconds'][n - 1] / 1e9:.2f}", ""]]),
             "", "## Per turn", ""]
    rows = [[t, f"{a['flops'][i] / 1e6:.3g}", f"{b['flops'][i] / 1e6:.3g}",
             f"{1e3 * a['seconds'][i]:.1f}", f"{1e3 * b['seconds'][i]:.1f}"]
            for i, t in enumerate(results["turns"])]
    lines += report.table(["turn", "cached MFLOPs", "re-encode MFLOPs", "cached ms", "re-encode ms"], rows)
    lines += ["", "Per turn the cached cost grows linearly in the turn number (a constant cost per "
              "token plus attention to a cache that grows by u + r tokens a turn); re-encoding "
              "grows with the whole history, quadratically once attention over it dominates. "
              f"Measured here: at turn {n} re-encoding costs {ratio['flops']:.1f}x the FLOPs and "
              f"{ratio['seconds']:.1f}x the wall time of the cached turn. The cached turn runs at "
              f"{a['flops'][n - 1] / a['seconds'][n - 1] / 1e9:.2f} GFLOP/s, the re-encoding turn at "
              f"{b['flops'][n - 1] / b['seconds'][n - 1] / 1e9:.2f} GFLOP/s: a one-token forward "
              "pass does little work per call, so fixed per-call costs weigh more in decoding than "
              "in one long pass. From turn 1 to turn "
              f"{s['turns']} the cached turn's time grows {a['seconds'][-1] / a['seconds'][0]:.2f}x "
              f"and its FLOPs {a['flops'][-1] / a['flops'][0]:.2f}x.", "",
              "![cost per turn and cumulative](chat_cache.png)"]
    return lines


def plot(out_dir, results):
    plt = report.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    turns = results["turns"]
    for col, (unit, factor, label) in enumerate((("flops", 1e-9, "GFLOPs"), ("seconds", 1e3, "ms"))):
        for row, prefix in enumerate(("", "cumulative_")):
            ax = axes[row, col]
            for protocol, data in results["protocols"].items():
                ax.plot(turns, numpy.asarray(data[prefix + unit]) * factor, "o-", ms=3, label=protocol)
            ax.set(xlabel="turn", ylabel=label,
                   title=f"{'cumulative ' if prefix else ''}{label} {'up to' if prefix else 'per'} turn")
            ax.legend()
    report.save_figure(fig, out_dir, "chat_cache.png")
