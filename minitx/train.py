"""Next-token training of a decoder-only model on a text corpus.

    for step in range(max_iters):
        lr = warmup then cosine decay          (optim.cosine_schedule)
        x, y = a random batch of windows       (data.get_batch)
        loss = cross_entropy(model(x), y)
        loss.backward(); clip the gradient norm; AdamW step
        (--precision bf16|fp16: the forward and backward in a short format, the weights, their
         gradients and AdamW in float32; fp16 scales the loss and skips steps whose gradients
         overflow: see precision.py)
        every eval_interval steps: estimate train/val loss, write a checkpoint
Everything a run needs to continue exactly (weights, optimizer moments, step, both random
generators) goes into the checkpoint, so `--resume` picks up where it stopped, and Ctrl-C or
SIGTERM finishes the current step and saves before exiting.
"""
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import numpy

from . import backend, checkpoint, data, distributed, nn, precision, random
from .autograd import no_grad
from .config_check import check_train_config
from .generate import generate
from .optim import AdamW, cosine_schedule
from .tokenizer import Tokenizer

@dataclass
class TrainConfig:
    # data
    data: Optional[str] = None       # a UTF-8 text file; None = the bundled Tiny Shakespeare
    tokenizer: str = "char"          # "char" or "bpe"
    vocab_size: int = 512            # BPE vocabulary size (char: the corpus decides)
    # the model; its vocab_size is the tokenizer's, set when training starts
    model: nn.TransformerConfig = field(default_factory=nn.TransformerConfig)
    # optimisation
    batch_size: int = 12
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # evaluation, output, machine
    eval_interval: int = 250
    eval_iters: int = 20             # batches per periodic estimate
    full_eval: bool = True           # evaluate the whole validation split at the end
    sample_tokens: int = 300         # text sampled at the end (0: none)
    out_dir: str = "runs/shakespeare-cpu"
    seed: int = 1337
    device: str = "cpu"
    dtype: str = "float32"
    precision: str = "fp32"          # "fp32" | "bf16" | "fp16": the format of the forward and backward
    loss_scale: float = 2.0 ** 16    # fp16: initial dynamic loss scale (precision.LossScaler); 0 = none
    parallel: str = "none"           # under mpiexec: "data" or "tensor" (see minitx.distributed)


# what a checkpoint must agree on to resume into a run: these fields of the TrainConfig, and every
# field of the model's config except these (they shape no weight)
DATA_FIELDS = ("data", "tokenizer", "vocab_size", "dtype")
FREE_MODEL_FIELDS = ("dropout", "kernels")

PRESETS = {
    "shakespeare-cpu": {},
    "shakespeare-gpu": dict(model=dict(n_layer=6, n_head=6, d_model=384, block_size=256, dropout=0.2),
                            batch_size=64, max_iters=5000, device="cuda", eval_iters=200,
                            eval_interval=500, out_dir="runs/shakespeare-gpu"),
}


def preset(name, model=None, **overrides):
    """The TrainConfig of preset `name`, with `overrides` of its fields and `model` (a dict) of
    its model's fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}")
    settings = dict(PRESETS[name])
    model = nn.TransformerConfig(**{**settings.pop("model", {}), **(model or {})})
    return TrainConfig(**{**settings, **overrides}, model=model)


def build_model(cfg, vocab_size):
    """The decoder-only model of `cfg` for a vocabulary of `vocab_size`, drawn on cfg.device."""
    with backend.default_device_as(cfg.device):
        model = nn.DecoderOnly(replace(cfg.model, vocab_size=vocab_size))
    return model.to(dtype=cfg.dtype)


class Run:
    """A run directory: checkpoint.npz, metrics.jsonl, loss.png, summary.json. Of the ranks of a
    parallel run, only rank 0's Run writes (`writes`)."""

    def __init__(self, out_dir, writes=True):
        self.dir, self.writes = Path(out_dir), writes
        self.checkpoint = self.dir / "checkpoint.npz"
        self.metrics = self.dir / "metrics.jsonl"

    def open(self, resume):
        """Make the directory and prove it writable, before any data is prepared; refuse to start
        a fresh run over the files of another one (its metrics would be appended to)."""
        if self.dir.exists() and not self.dir.is_dir():
            raise NotADirectoryError(f"--out-dir {self.dir} is a file, not a directory")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise OSError(f"cannot write to --out-dir {self.dir}: {error.strerror or error}") from None
        if resume:
            if not self.checkpoint.exists():
                raise FileNotFoundError(f"no checkpoint to resume in {self.dir}: "
                                        "train without --resume to start this run")
            return
        earlier = [f.name for f in (self.checkpoint, self.metrics, self.dir / "summary.json") if f.exists()]
        if earlier:
            raise FileExistsError(f"{self.dir} holds another run ({', '.join(earlier)}): pass --resume "
                                  "to continue it, or choose another --out-dir")

    def log(self, record):
        if not self.writes:
            return
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self):
        """The logged records; a last line cut short by a crash mid-write is dropped, any other
        damaged line is an error naming the file and the line."""
        if not self.metrics.exists():
            return []
        lines = self.metrics.read_text(errors="replace").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not (isinstance(record, dict) and isinstance(record.get("step"), int)):
                if number == len(lines):
                    break
                raise ValueError(f"{self.metrics}, line {number}, is not a record of this run: "
                                 "repair or delete that line to resume")
            records.append(record)
        return records

    def truncate_after(self, step):
        """Forget what was logged after the checkpoint a resumed run starts from (the resumed run
        logs it again): training records past `step`, evaluations at or past it."""
        if not self.writes:
            return
        kept = [r for r in self.records() if r["step"] < step or (r["step"] == step and "loss" in r)]
        self.metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))


def save_state(run, cfg, model, opt, tokenizer, step, batch_rng, strategy, scaler=None):
    """Write the checkpoint: whole arrays (a tensor-parallel run gathers its shards first), so
    it resumes under any strategy."""
    names = [name for name, _ in model.named_parameters()]  # the optimizer's order
    arrays = {f"model/{name}": strategy.full(name, a) for name, a in model.state_dict().items()}
    optim = opt.state_dict()
    for i, state in enumerate(optim.pop("state")):
        arrays.update({f"optim/{i}/{k}": strategy.full(names[i], backend.move_array(v, "cpu"))
                       for k, v in state.items()})
    if not run.writes:
        return
    checkpoint.save(run.checkpoint, arrays, {
        "step": step, "config": asdict(cfg), "model_config": asdict(model.config),
        "tokenizer": tokenizer.to_dict(), "optimizer": optim,
        "loss_scaler": scaler.state_dict() if scaler else None,
        "rng": {"batches": batch_rng.bit_generator.state, "minitx": random.get_rng_state()}})


def load_model(path, device="cpu"):
    """(model, tokenizer, meta) from a checkpoint file, ready for sampling."""
    meta, arrays = checkpoint.read_run(path)
    with backend.default_device_as(device):
        model = nn.DecoderOnly(nn.TransformerConfig.from_dict(meta["model_config"]))
    model.load_state_dict(checkpoint.split_prefix(arrays, "model/"))
    return model, Tokenizer.from_dict(meta["tokenizer"]), meta


def _restore(saved, run, cfg, model, opt, batch_rng, strategy, scaler=None):
    """Load the checkpoint `saved` (checkpoint.read_run's (meta, arrays)) into model, optimizer
    and generators, if it comes from this config; returns its step."""
    meta, arrays = saved
    pairs = [(meta["config"], cfg, DATA_FIELDS),
             (meta["model_config"], model.config,
              [f.name for f in fields(model.config) if f.name not in FREE_MODEL_FIELDS])]
    differ = [f"{k}={saved.get(k)!r} (this run: {getattr(now, k)!r})" for saved, now, names in pairs
              for k in names if saved.get(k) != getattr(now, k)]
    if differ:
        raise checkpoint.CheckpointError(f"checkpoint {run.checkpoint} comes from another config: "
                                         + ", ".join(differ))
    names = [name for name, _ in model.named_parameters()]
    model.load_state_dict({name: strategy.part(name, a)
                           for name, a in checkpoint.split_prefix(arrays, "model/").items()})
    optim = dict(meta["optimizer"])
    optim["state"] = [{k: strategy.part(names[i], v)
                       for k, v in checkpoint.split_prefix(arrays, f"optim/{i}/").items()}
                      for i in range(len(opt.params))]
    opt.load_state_dict(optim)
    batch_rng.bit_generator.state = meta["rng"]["batches"]
    random.set_rng_state(meta["rng"]["minitx"])
    if scaler and meta.get("loss_scaler"):
        scaler.load_state_dict(meta["loss_scaler"])
    return meta["step"]


@no_grad()
def estimate_loss(model, tokens, cfg, n_batches=None, seed=0, strategy=None):
    """Mean loss over `n_batches` random batches, or over the whole split when n_batches is None.
    Data-parallel ranks split each random batch as in training; each sees the whole split."""
    strategy = strategy or distributed.SingleProcess()
    model.eval()
    if n_batches is None:
        batches = data.iter_eval_batches(tokens, cfg.batch_size, cfg.model.block_size)
    else:
        rng = numpy.random.default_rng(seed)
        batches = (strategy.get_batch(tokens, cfg.batch_size, cfg.model.block_size, rng)
                   for _ in range(n_batches))
    total = count = 0
    for x, y in batches:
        total += strategy.loss(model(x, y)[1].item()) * y.size
        count += y.size
    model.train()
    return total / count


class _DeferredInterrupt:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM (what schedulers and `docker stop` send) into a
    flag checked between steps; a second signal stops at once."""
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.requested = False
        self.previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def train(cfg, resume=False, progress=True, say=print):
    """Train per `cfg`; returns a summary dict (losses, timings, sample). See the module docstring.

    With cfg.parallel "data" or "tensor", every rank of an mpiexec job calls this: rank 0 alone
    writes and speaks, and an error on any rank ends them all (minitx.distributed).
    """
    strategy = distributed.setup(cfg.parallel, cfg.device)
    with strategy.world.abort_on_error():
        return _train(cfg, strategy, resume, progress and strategy.is_main,
                      say if strategy.is_main else lambda *args: None)


def _train(cfg, strategy, resume, progress, say):
    check_train_config(cfg)
    backend.check_device(cfg.device)
    policy = precision.make_policy(cfg.precision)
    run = Run(cfg.out_dir, writes=strategy.is_main)
    run.open(resume)
    tokenizer = cfg.tokenizer
    if resume:
        saved = checkpoint.read_run(run.checkpoint)  # checked whole before data or model are made
        tokenizer = Tokenizer.from_dict(saved[0]["tokenizer"])
    with strategy.world.main_first():  # rank 0 writes the token cache, the others read it
        tokenizer, train_tokens, val_tokens = data.prepare(cfg.data, tokenizer, cfg.vocab_size)
    block_size = cfg.model.block_size
    for name, split in (("training", train_tokens), ("validation", val_tokens)):
        if len(split) < block_size + 1:
            raise ValueError(f"the {name} split has {len(split)} tokens, fewer than one window of "
                             f"block_size + 1 = {block_size + 1}; use a longer corpus or a smaller block_size")

    random.manual_seed(cfg.seed)
    model = build_model(cfg, tokenizer.vocab_size)
    n_params = model.n_params()  # of the whole model, before tensor parallel splits it
    model = strategy.prepare(model)
    opt = AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    batch_rng = numpy.random.default_rng(cfg.seed)
    scaler = precision.LossScaler(cfg.loss_scale) if cfg.precision == "fp16" and cfg.loss_scale else None
    if scaler is not None and strategy.world.size > 1:
        raise ValueError("fp16 loss scaling is not written for more than one process yet (each "
                         "rank would decide alone whether to skip a step); use --precision bf16")
    step = _restore(saved, run, cfg, model, opt, batch_rng, strategy, scaler) if resume else 0
    if resume:
        run.truncate_after(step)
        say(f"resuming {run.checkpoint} at step {step}")
    # FLOPs per token, forward and backward: 6 per parameter, plus attention's 12 * layers * d * T
    flops_per_token = 6 * n_params + 12 * cfg.model.n_layer * cfg.model.d_model * block_size
    say(f"model: {n_params:,} parameters, vocab {tokenizer.vocab_size}, {len(train_tokens):,} training "
        f"tokens, device {cfg.device}")

    bar = _progress(cfg.max_iters, step, progress)
    tokens_per_step = strategy.global_batch(cfg.batch_size) * block_size
    started, first_step, interrupted = time.perf_counter(), step, False
    step_times = []
    with _DeferredInterrupt() as interrupt:
        while step < cfg.max_iters and not strategy.world.any(interrupt.requested):
            if step % cfg.eval_interval == 0:
                _evaluate(run, cfg, model, train_tokens, val_tokens, step,
                          say if not progress else bar.write, strategy)
                save_state(run, cfg, model, opt, tokenizer, step, batch_rng, strategy, scaler)
            t0 = time.perf_counter()
            opt.lr = cosine_schedule(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup_iters,
                                     total=cfg.max_iters)
            x, y = strategy.get_batch(train_tokens, cfg.batch_size, block_size, batch_rng)
            with precision.autocast(policy):
                loss = model(x, y)[1]
            opt.zero_grad()
            if scaler is None:
                loss.backward()
                finite = True
            else:  # a step whose scaled gradients overflowed is skipped
                finite = scaler.backward(loss, opt.params)
            strategy.reduce_gradients()
            grad_norm = (strategy.clip_grad_norm(model.parameters(), cfg.grad_clip)
                         if cfg.grad_clip and finite else None)
            if finite:
                opt.step()
            # the step's one wait for the GPU (so the step time below is real)
            loss, grad_norm = _host_floats(loss, grad_norm)
            loss = strategy.loss(loss)  # the mean over data-parallel ranks
            dt = time.perf_counter() - t0
            step += 1
            step_times.append(dt)
            _stop_if_not_finite(loss, grad_norm, step)
            record = {"step": step, "loss": loss, "lr": opt.lr, "grad_norm": grad_norm, "ms": 1e3 * dt}
            if scaler:
                record.update(loss_scale=scaler.scale, skipped=scaler.skipped)
            run.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_step / dt:,.0f}")
        interrupted = step < cfg.max_iters
    bar.close()
    save_state(run, cfg, model, opt, tokenizer, step, batch_rng, strategy, scaler)
    if interrupted:
        say(f"interrupted at step {step}: checkpoint saved to {run.checkpoint}; "
            "continue with --resume")
        return {"interrupted": True, "step": step}

    summary = {"step": step, "steps_run": step - first_step, "wall_s": time.perf_counter() - started,
               "ms_per_iter": 1e3 * float(numpy.median(step_times)) if step_times else None,
               "n_params": n_params, "flops_per_token": flops_per_token}
    summary.update(_evaluate(run, cfg, model, train_tokens, val_tokens, step, say, strategy,
                             full=cfg.full_eval))
    if summary["ms_per_iter"]:
        say(f"{summary['steps_run']} iterations in {summary['wall_s']:.1f} s, {summary['ms_per_iter']:.1f} ms/iter "
            f"(median), {flops_per_token * tokens_per_step / summary['ms_per_iter'] / 1e6:.2f} GFLOP/s")
    if cfg.sample_tokens:  # every rank samples: a tensor-parallel forward needs all of them
        rng = numpy.random.default_rng(cfg.seed)
        prompt = tokenizer.encode("\n")
        text = tokenizer.decode(list(generate(model, prompt, cfg.sample_tokens, rng, 0.8, 200)))
        say("---- sample ----\n" + text)
        summary["sample"] = text
    if run.writes:
        plot_losses(run)
        (run.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _host_floats(*scalars):
    """Python floats (None stays None) of 0-d tensors, copied to the host in one transfer: each
    `.item()` of a CUDA tensor would be a wait for the GPU of its own."""
    arrays = [s.data for s in scalars if s is not None]
    xp = backend.get_array_module(*arrays)
    values = iter(backend.move_array(xp.stack([a.astype(xp.float64) for a in arrays]), "cpu").tolist())
    return tuple(None if s is None else next(values) for s in scalars)


def _stop_if_not_finite(loss, grad_norm, step):
    """A NaN or infinite loss or gradient norm ends the run before anything is saved (the
    checkpoint of the last evaluation stays as it was): training on would spread it into every
    weight."""
    for name, value in (("loss", loss), ("gradient norm", grad_norm)):
        if value is not None and not math.isfinite(value):
            raise FloatingPointError(f"the {name} became {value} at step {step}; the last checkpoint "
                                     "is intact: try a lower --lr or a --grad-clip")


def _evaluate(run, cfg, model, train_tokens, val_tokens, step, say, strategy, full=False):
    """Log train/val loss: estimates from eval_iters batches, or the whole val split if full."""
    if full:
        losses = {"val_loss_full": estimate_loss(model, val_tokens, cfg)}
    else:
        losses = {name: estimate_loss(model, tokens, cfg, cfg.eval_iters, seed=cfg.seed + step,
                                      strategy=strategy)
                  for name, tokens in (("train_loss", train_tokens), ("val_loss", val_tokens))}
    run.log({"step": step, **losses})
    say(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    return losses


def _progress(total, initial, enabled):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="it", dynamic_ncols=True)


def plot_losses(run):
    """loss.png: training loss per step and the periodic train/val estimates."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = run.records()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r for r in records if "loss" in r]
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.6, alpha=0.5, label="train (batch)")
    for key in ("train_loss", "val_loss"):
        points = [r for r in records if key in r]
        ax.plot([r["step"] for r in points], [r[key] for r in points], "o-", ms=3, label=key.replace("_", " "))
    full = [r for r in records if "val_loss_full" in r]
    if full:
        ax.axhline(full[-1]["val_loss_full"], ls="--", c="k", lw=0.8,
                   label=f"val (full split) {full[-1]['val_loss_full']:.3f}")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=str(run.dir))
    ax.legend()
    fig.tight_layout()
    fig.savefig(run.dir / "loss.png", dpi=120)
    plt.close(fig)

