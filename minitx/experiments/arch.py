"""arch: from the original encoder-decoder to a decoder-only model, one switch at a time.

    0  encoder-decoder      bidirectional encoder; decoder with causal self-attention and, in every
                            layer, cross-attention to the encoder's final layer (Vaswani et al. 2017)
    1  + share_cross_self   cross-attention reuses the self-attention weights
    2  + share_encoder_decoder   decoder layer i reuses encoder layer i (one set of layer weights)
    3  + cross_to="same"    decoder layer i reads encoder layer i, not the final one
    4  + encoder_causal     the encoder reading the input is causal too
    5  decoder-only         one causal stack over input + target, the loss on the target only
    5b prefix-LM            5 with the input attended bidirectionally (prefix=)

After step 4 the parameters are those of one stack, the input is read causally and each target
layer sees the input at its own depth: nearly a decoder-only model. What is left is the step from
4 to 5: the target attends to the input and to itself in two attention branches (two softmaxes,
each with its own norm), not in one; it reads input layer i's output rather than its input; and
its positions count from 0 rather than from the end of the input.

Every variant has the same n_layer and d_model, so each token passes through n_layer blocks in
all of them and the compute per example is about the same; sharing removes parameters, and the
report gives the counts. Two character-level tasks on Tiny Shakespeare give the two length skews:
  initials  long input, short target: a line -> the first letter of each of its words
  spell     short input, long target: a word -> its letters in the NATO alphabet
"""
import re
import time
from dataclasses import asdict, dataclass

import numpy

from .. import backend, data, nn, random
from ..autograd import no_grad
from ..optim import AdamW, clip_grad_norm, cosine_schedule
from . import report


@dataclass
class Settings:
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    steps: int = 250
    batch_size: int = 32
    lr: float = 3e-3
    seeds: int = 3
    n_heldout: int = 512         # held-out examples evaluated per task
    max_line: int = 32           # initials: lines of at most this many characters
    max_word: int = 7            # spell: words of 3 .. max_word letters


SIZES = {
    "toy": Settings(n_layer=1, n_head=2, d_model=16, steps=6, batch_size=8, seeds=1, n_heldout=32,
                    max_line=20, max_word=4),
    "default": Settings(),
    "large": Settings(n_layer=4, d_model=128, steps=2000, batch_size=64, lr=1e-3, seeds=3,
                      n_heldout=2048),
}

NATO = ("alfa bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november "
        "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def initials_task(text, s):
    """(input, target) pairs: a line of at least two words -> the first character of each word."""
    lines = [line.strip() for line in text.split("\n")]
    return [(line, "".join(w[0] for w in line.split())) for line in lines
            if len(line) <= s.max_line and len(line.split()) >= 2]


def spell_task(text, s):
    """(input, target) pairs: a distinct lower-case word -> its letters in the NATO alphabet."""
    words = sorted({w.lower() for w in re.findall(r"[A-Za-z]+", text) if 3 <= len(w) <= s.max_word})
    return [(w, " ".join(NATO[ord(c) - ord("a")] for c in w)) for w in words]


TASKS = {"initials": initials_task, "spell": spell_task}


class Vocab:
    """Characters plus three specials: PAD (ignored), BOS (starts the target), EOS (ends it)."""
    PAD, BOS, EOS = 0, 1, 2

    def __init__(self, chars):
        self.chars = sorted(set(chars))
        self.ids = {c: i + 3 for i, c in enumerate(self.chars)}
        self.size = len(self.chars) + 3


def encode(pairs, vocab, M, T):
    """Pairs -> padded arrays: src (n, M) and its mask; the decoder's input BOS y1..yn (n, T), its
    targets y1..yn EOS, and tgt_mask marking the real target positions."""
    n = len(pairs)
    src = numpy.full((n, M), Vocab.PAD, dtype=numpy.int64)
    dec_in = numpy.full((n, T), Vocab.PAD, dtype=numpy.int64)
    dec_tgt = numpy.full((n, T), Vocab.PAD, dtype=numpy.int64)
    for row, (x, y) in enumerate(pairs):
        x, y = [vocab.ids[c] for c in x], [vocab.ids[c] for c in y]
        src[row, :len(x)] = x
        dec_in[row, :len(y) + 1] = [Vocab.BOS] + y
        dec_tgt[row, :len(y) + 1] = y + [Vocab.EOS]
    return {"src": src, "src_mask": src != Vocab.PAD, "dec_in": dec_in, "dec_tgt": dec_tgt,
            "tgt_mask": dec_in != Vocab.PAD}


def split_examples(pairs, n_heldout, seed=0):
    """A fixed shuffle, then the last n_heldout pairs are held out (never trained on)."""
    order = numpy.random.default_rng(seed).permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    n_heldout = min(n_heldout, len(pairs) // 10)
    return pairs[:-n_heldout], pairs[-n_heldout:]


@dataclass
class Variant:
    key: str
    name: str
    switches: dict        # EncoderDecoderConfig switches; None: a decoder-only model
    prefix: bool = False  # decoder-only with the prefix-LM mask


def variants():
    """The walk: each encoder-decoder step adds one switch to the previous one."""
    steps = [("0", "encoder-decoder", {}),
             ("1", "+ share_cross_self", {"share_cross_self": True}),
             ("2", "+ share_encoder_decoder", {"share_encoder_decoder": True}),
             ("3", "+ cross_to='same'", {"cross_to": "same"}),
             ("4", "+ encoder_causal", {"encoder_causal": True})]
    walk, switches = [], {}
    for key, name, change in steps:
        switches = {**switches, **change}
        walk.append(Variant(key, name, switches))
    return walk + [Variant("5", "decoder-only (loss_mask)", None),
                   Variant("5b", "decoder-only, prefix-LM", None, prefix=True)]


def build(variant, s, vocab_size, M, T):
    """The model of a variant; every one shares the input/output embedding (Vaswani et al. 3.4)."""
    shape = dict(vocab_size=vocab_size, n_layer=s.n_layer, n_head=s.n_head, d_model=s.d_model)
    if variant.switches is None:
        return nn.DecoderOnly(nn.TransformerConfig(block_size=M + T, **shape))
    return nn.EncoderDecoder(nn.EncoderDecoderConfig(block_size=max(M, T), share_embeddings=True,
                                                     **shape, **variant.switches))


def forward(model, variant, batch):
    """(logits at the target positions (B, T, vocab), mean loss over the target tokens).

    Encoder-decoder: the encoder reads src, the decoder dec_in. Decoder-only: one sequence
    src + dec_in, padding hidden by the key mask, loss only where tgt_mask is True.
    """
    targets = numpy.where(batch["tgt_mask"], batch["dec_tgt"], -100)
    if variant.switches is not None:
        return model(batch["src"], batch["dec_in"], targets, src_mask=batch["src_mask"])
    M = batch["src"].shape[1]
    ids = numpy.concatenate([batch["src"], batch["dec_in"]], axis=1)            # (B, M + T)
    key_mask = numpy.concatenate([batch["src_mask"], batch["tgt_mask"]], axis=1)
    full_targets = numpy.concatenate([numpy.full_like(batch["src"], -100), targets], axis=1)
    logits, loss = model(ids, full_targets, mask=key_mask, prefix=M if variant.prefix else None)
    return logits[:, M:], loss


def take(batch, index):
    return {k: v[index] for k, v in batch.items()}


@no_grad()
def evaluate(model, variant, batch, batch_size):
    """Held-out target loss (nats per target token), token accuracy, and sequence accuracy.

    Accuracies are of the argmax under teacher forcing; a sequence counts when every one of its
    target tokens is right, which is exactly when greedy decoding reproduces the whole target.
    """
    model.eval()
    loss_sum = correct = tokens = exact = 0.0
    n = len(batch["src"])
    for first in range(0, n, batch_size):
        part = take(batch, slice(first, first + batch_size))
        logits, loss = forward(model, variant, part)
        mask = part["tgt_mask"]
        hit = (logits.numpy().argmax(-1) == part["dec_tgt"]) | ~mask
        loss_sum += loss.item() * mask.sum()
        correct += (hit & mask).sum()
        tokens += mask.sum()
        exact += hit.all(axis=1).sum()
    model.train()
    return {"loss": float(loss_sum / tokens), "token_acc": float(correct / tokens),
            "seq_acc": float(exact / n)}


def train_one(variant, s, seed, train, heldout, vocab_size, device, log_every):
    """Train one variant with one seed; returns its held-out metrics and its loss curve."""
    M, T = train["src"].shape[1], train["dec_in"].shape[1]
    random.manual_seed(seed)
    with backend.default_device_as(device):
        model = build(variant, s, vocab_size, M, T)
    params = model.parameters()
    opt = AdamW(params, lr=s.lr, betas=(0.9, 0.99), weight_decay=0.1)
    rng = numpy.random.default_rng(seed)  # the same batches for every variant of this seed
    curve = []
    for step in range(s.steps):
        opt.lr = cosine_schedule(step, lr=s.lr, min_lr=s.lr / 10, warmup=max(1, s.steps // 10),
                                 total=s.steps)
        _, loss = forward(model, variant, take(train, rng.integers(0, len(train["src"]), s.batch_size)))
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(params, 1.0)
        opt.step()
        if step % log_every == 0 or step == s.steps - 1:
            curve.append((step + 1, loss.item()))
    return evaluate(model, variant, heldout, 2 * s.batch_size), curve


def param_counts(variant, s, vocab_size, M, T):
    model = build(variant, s, vocab_size, M, T)
    embedding = sum(p.size for name, p in model.named_parameters() if "embed." in name)
    return {"params": model.n_params(), "non_embedding_params": model.n_params() - embedding}


def run(out_dir, device="cpu", size="default"):
    s = SIZES[size]
    text = data.read_corpus(data.default_corpus_path())
    walk = variants()
    results = {"settings": asdict(s), "device": device, "tasks": {}}
    started = time.perf_counter()
    for task, make_pairs in TASKS.items():
        pairs = make_pairs(text, s)
        vocab = Vocab("".join(x + y for x, y in pairs))
        M = max(len(x) for x, _ in pairs)
        T = max(len(y) for _, y in pairs) + 1
        train_pairs, heldout_pairs = split_examples(pairs, s.n_heldout)
        train, heldout = encode(train_pairs, vocab, M, T), encode(heldout_pairs, vocab, M, T)
        entry = {"input_len": M, "target_len": T, "vocab_size": vocab.size,
                 "n_train": len(train_pairs), "n_heldout": len(heldout_pairs),
                 "example": list(heldout_pairs[0]), "variants": {}}
        for v in walk:
            runs = []
            for seed in range(s.seeds):
                t0 = time.perf_counter()
                metrics, curve = train_one(v, s, seed, train, heldout, vocab.size, device,
                                           log_every=max(1, s.steps // 50))
                runs.append({"seed": seed, **metrics, "curve": curve,
                             "wall_s": time.perf_counter() - t0})
                print(f"arch {task} {v.key} seed {seed}: loss {metrics['loss']:.3f}, "
                      f"seq acc {metrics['seq_acc']:.3f} ({runs[-1]['wall_s']:.1f} s)", flush=True)
            entry["variants"][v.key] = {"name": v.name, "switches": v.switches, "prefix": v.prefix,
                                        **param_counts(v, s, vocab.size, M, T), "runs": runs}
        results["tasks"][task] = entry
    results["wall_s"] = time.perf_counter() - started
    report.write_results(out_dir, results)
    plot(out_dir, results)
    report.write_report(out_dir, describe(results))
    return results


def _metric(entry, key, metric):
    return [r[metric] for r in entry["variants"][key]["runs"]]


def comparisons(keys):
    """Which pairs of variants the report compares: each step with the one before, 5b with 5."""
    return [(a, b) for a, b in zip(keys, keys[1:]) if b != "5b"] + [("5", "5b")]


def describe(results):
    s = results["settings"]
    lines = ["# arch: encoder-decoder to decoder-only, one switch at a time", "",
             f"{s['n_layer']} layers, {s['n_head']} heads, d_model {s['d_model']} in every variant; "
             f"{s['steps']} AdamW steps of {s['batch_size']} examples (lr {s['lr']}, cosine), "
             f"{s['seeds']} seed(s) per variant; the seed fixes the initial weights and the batch "
             f"order, the same for every variant. Device: {results['device']}; "
             f"wall time {results['wall_s']:.0f} s.", "",
             "**Budget.** Every variant has the same depth and width, so each token goes through "
             "the same number of blocks and the compute per example is about the same (the "
             "encoder-decoder adds cross-attention). Parameters are *not* matched: sharing removes "
             "them (per layer, about 28 d_model² weights in variant 0: 12 in the encoder layer, 16 "
             "in the decoder layer; 24 in variant 1; 12 from variant 2 on), and the tables give the "
             "counts. Widening the shared variants to match would change two things at once.", "",
             "Held-out metrics: the target loss in nats per target token, and token and "
             "sequence accuracy of the argmax under teacher forcing (a sequence is right when all "
             "its tokens are, i.e. when greedy decoding reproduces it exactly). Mean ± standard "
             "deviation over seeds.", ""]
    for task, entry in results["tasks"].items():
        keys = list(entry["variants"])
        x, y = entry["example"]
        lines += [f"## {task}: input {entry['input_len']} characters, target {entry['target_len']} "
                  f"(with EOS)", "", f"{entry['n_train']} training pairs, {entry['n_heldout']} held "
                  f"out; e.g. `{x}` -> `{y}`.", ""]
        rows = []
        for key in keys:
            v = entry["variants"][key]
            rows.append([key, v["name"], f"{v['params']:,}", f"{v['non_embedding_params']:,}",
                         report.pm(_metric(entry, key, "loss")),
                         report.pm(_metric(entry, key, "token_acc")),
                         report.pm(_metric(entry, key, "seq_acc"))])
        lines += report.table(["step", "variant", "params", "non-embedding", "held-out loss",
                               "token acc", "sequence acc"], rows)
        lines += ["", "Each step against the previous one (held-out loss; beyond noise when "
                  "|difference of means| > 2 x pooled std over seeds):", ""]
        rows = []
        for a, b in comparisons(keys):
            diff, pooled, beyond = report.beyond_noise(_metric(entry, a, "loss"), _metric(entry, b, "loss"))
            verdict = ("yes" if beyond else "no") if s["seeds"] > 1 else "n/a (one seed)"
            rows.append([f"{a} -> {b}", f"{diff:+.3f}", f"{pooled:.3f}", verdict])
        lines += report.table(["change", "loss difference", "pooled std", "beyond noise"], rows) + [""]
    lines += ["![held-out loss and accuracy](arch.png)", "", "![training loss](curves.png)"]
    return lines


def plot(out_dir, results):
    plt = report.pyplot()
    tasks = list(results["tasks"])
    fig, axes = plt.subplots(2, len(tasks), figsize=(6 * len(tasks), 7), squeeze=False)
    for col, task in enumerate(tasks):
        entry = results["tasks"][task]
        keys = list(entry["variants"])
        for row, metric in enumerate(("loss", "seq_acc")):
            stats = [report.mean_std(_metric(entry, k, metric)) for k in keys]
            ax = axes[row, col]
            ax.bar(keys, [m for m, _ in stats], yerr=[sd for _, sd in stats], capsize=4, color="tab:blue")
            for i, k in enumerate(keys):
                ax.plot([i] * len(entry["variants"][k]["runs"]), _metric(entry, k, metric), "k.", ms=4)
            ax.set(title=f"{task}: held-out {'loss' if metric == 'loss' else 'sequence accuracy'}",
                   xlabel="step of the walk", ylabel="nats / target token" if metric == "loss" else "fraction")
    report.save_figure(fig, out_dir, "arch.png")

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for col, task in enumerate(tasks):
        ax = axes[0, col]
        for key, v in results["tasks"][task]["variants"].items():
            steps = [step for step, _ in v["runs"][0]["curve"]]
            mean = numpy.mean([[loss for _, loss in r["curve"]] for r in v["runs"]], axis=0)
            ax.plot(steps, mean, label=f"{key} {v['name']}")
        ax.set(title=f"{task}: training loss (mean over seeds)", xlabel="step", ylabel="loss", yscale="log")
        ax.legend(fontsize=7)
    report.save_figure(fig, out_dir, "curves.png")
