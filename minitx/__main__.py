"""The command line: `python -m minitx train | sample | chat | embed | experiment`.

A thin shell: argparse built from the TrainConfig and TransformerConfig dataclasses, errors turned into one line and a
non-zero exit, everything else in minitx.train / minitx.generate / minitx.experiments.
"""
import argparse
import sys
import time
import typing
from dataclasses import fields

if getattr(sys.modules[__spec__.parent], "__file__", None) is None:
    # `python -m minitx` in a directory holding a folder named minitx (a checkout, say): Python
    # takes that folder for the package, an empty "namespace package", and imports nothing of it
    sys.exit(f"error: Python took the folder {list(sys.modules[__spec__.parent].__path__)[0]} for the "
             "minitx package; run `python -m minitx` from another directory, or the `minitx` command")

import numpy

from . import backend, nn, use_fast_cpu_settings
from .config_check import check_sampling
from .train import PRESETS, TrainConfig, load_model, preset, train


def _field_type(field):
    """int for `int` and for `Optional[int]`, and so on."""
    args = [a for a in typing.get_args(field.type) if a is not type(None)]
    return args[0] if args else field.type


def _none_or(kind):
    return lambda text: None if text.lower() == "none" else kind(text)


def config_fields():
    """(flag name, field) for every setting of a training run: TrainConfig's own fields, then its
    model's (TransformerConfig's) fields but vocab_size, which the tokenizer decides."""
    own = [(f.name, f) for f in fields(TrainConfig) if f.name != "model"]
    model = [(f.name, f) for f in fields(nn.TransformerConfig) if f.name != "vocab_size"]
    return own + model


def add_config_flags(parser):
    """One flag per setting (--n-layer, --lr, --norm-first/--no-norm-first ...); unset flags are
    None, so the preset's value stands."""
    for name, field in config_fields():
        flag = "--" + name.replace("_", "-")
        kind = _field_type(field)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=_none_or(kind), default=None, metavar=kind.__name__.upper(),
                                help=f"(default {field.default})")


def config_from_args(args):
    own_names = {f.name for f in fields(TrainConfig)}  # vocab_size is TrainConfig's (BPE's size)
    overrides = {name: getattr(args, name) for name, _ in config_fields()
                 if getattr(args, name) is not None}
    model = {k: v for k, v in overrides.items() if k not in own_names}
    own = {k: v for k, v in overrides.items() if k in own_names}
    return preset(args.preset, model=model, **own)


def cmd_train(args):
    cfg = config_from_args(args)
    summary = train(cfg, resume=args.resume, progress=not args.quiet)
    if summary.get("interrupted"):
        raise KeyboardInterrupt


def tokens_per_second(tokens):
    started = time.perf_counter()
    n = sum(1 for _ in tokens)
    return n / (time.perf_counter() - started)


def cmd_sample(args):
    check_sampling(args.tokens, args.temperature, args.top_k)  # before the model is loaded
    model, tokenizer, meta = load_model(f"{args.run}/checkpoint.npz", args.device)
    from .generate import SpeculationStats, generate
    draft = None
    if args.draft_run is not None:
        draft, draft_tokenizer, _ = load_model(f"{args.draft_run}/checkpoint.npz", args.device)
        if draft_tokenizer.to_dict() != tokenizer.to_dict():
            raise ValueError(f"the draft run {args.draft_run} has another tokenizer than {args.run}")
    try:
        prompt = tokenizer.encode(args.prompt)
    except ValueError as error:
        raise ValueError(f"prompt: {error}") from None
    sample = lambda **kw: generate(model, prompt, args.tokens, numpy.random.default_rng(args.seed),
                                   args.temperature, args.top_k, use_cache=not args.no_cache, **kw)
    stats = SpeculationStats()
    print(args.prompt, end="", flush=True)
    stream(tokenizer, sample(draft=draft, n_draft=args.n_draft, stats=stats))
    if draft is not None:  # timed again, warm and not printing: the first run also compiled kernels
        speculative = tokens_per_second(sample(draft=draft, n_draft=args.n_draft))
        plain = tokens_per_second(sample())
        print(f"speculative, {args.n_draft} drafts a round: acceptance rate "
              f"{stats.acceptance_rate:.2f}, {stats.tokens_per_round:.2f} tokens per target pass, "
              f"{speculative:.1f} tokens/s; "
              f"plain cached decoding: {plain:.1f} tokens/s (speed-up {speculative / plain:.2f}x)",
              file=sys.stderr)


def stream(tokenizer, tokens, stop=None):
    """Print the text of `tokens` as they come, up to the token `stop`; returns the ids printed."""
    ids, shown = [], ""
    for token in tokens:
        if token == stop:
            break
        ids.append(token)
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(shown):], end="", flush=True)
            shown = text
    print()
    return ids


def cmd_chat(args):
    """A conversation with a published chat model: each turn, the whole conversation laid out by
    the model's chat template is the prompt, and the reply streams until its end-of-turn token."""
    from .generate import generate
    from .nn import DecoderOnly
    from .pretrained import from_pretrained
    model, tokenizer = from_pretrained(args.pretrained, args.device, args.dtype)
    if not isinstance(model, DecoderOnly):
        raise ValueError(f"{args.pretrained} is not a decoder: chat needs a generative model")
    rng = numpy.random.default_rng(args.seed)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    while True:
        text = args.prompt if args.prompt is not None else _read_turn()
        if text is None:
            return
        messages.append({"role": "user", "content": text})
        prompt = tokenizer.encode(tokenizer.chat(messages))
        reply = stream(tokenizer, generate(model, prompt, args.tokens, rng, args.temperature,
                                           args.top_k), stop=tokenizer.eos)
        messages.append({"role": "assistant", "content": tokenizer.decode(reply)})
        if args.prompt is not None:
            return


def _read_turn():
    """The user's next message, or None at end of input (Ctrl-D)."""
    try:
        return input("> ")
    except EOFError:
        print()
        return None


def cmd_embed(args):
    """Sentence embeddings of a published encoder, shown as their cosine-similarity matrix."""
    from .autograd import no_grad
    from .nn import EncoderOnly
    from .pretrained import from_pretrained
    model, tokenizer = from_pretrained(args.pretrained, args.device, args.dtype)
    if not isinstance(model, EncoderOnly):
        raise ValueError(f"{args.pretrained} is not an encoder: embed needs a sentence-embedding model")
    ids, mask = tokenizer.encode_batch(args.sentences)
    with no_grad():
        e = model.sentence_embedding(ids, mask=mask).numpy()   # (S, d_model), rows of length 1
    similarity = e @ e.T                                        # (S, S) cosines
    print("cosine similarity")
    print("   " + "".join(f"{j + 1:>7}" for j in range(len(e))))
    for i, (row, sentence) in enumerate(zip(similarity, args.sentences)):
        print(f"{i + 1:>3}" + "".join(f"{s:7.3f}" for s in row) + f"  {sentence}")


def cmd_experiment(args):
    from . import experiments
    experiments.run(args.name, args.out_dir, device=args.device, size=args.size)


class _Parser(argparse.ArgumentParser):
    """argparse, with a hint where a negative number was taken for a flag (`--lr -1e-3`)."""

    def error(self, message):
        if "expected one argument" in message:
            message += " (a value that starts with '-' needs '=': --lr=-1e-3)"
        super().error(message)


def build_parser():
    parser = _Parser(prog="python -m minitx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a decoder-only model on a text corpus")
    p.add_argument("--preset", default="shakespeare-cpu", choices=sorted(PRESETS))
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("sample", help="generate text from a trained run")
    p.add_argument("--run", required=True, help="the run directory (holding checkpoint.npz)")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=_none_or(int), default=200, help="none: every token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="re-run the whole context for every token")
    p.add_argument("--draft-run", default=None, help="a smaller run with the same tokenizer: "
                   "decode speculatively with it as the draft")
    p.add_argument("--n-draft", type=int, default=4, help="tokens the draft proposes per round")
    p.add_argument("--device", default="cpu", choices=backend.DEVICES)
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("chat", help="talk to a published chat model (e.g. smollm2-135m)")
    p.add_argument("--pretrained", required=True, help="a short name (smollm2-135m) or a path")
    p.add_argument("--prompt", default=None, help="one message, answered once (no interactive loop)")
    p.add_argument("--system", default=None, help="a system message (default: the template's)")
    p.add_argument("--tokens", type=int, default=256, help="the longest reply")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=backend.DEVICES)
    p.add_argument("--dtype", default="float32", choices=sorted(backend.DTYPES))
    p.set_defaults(handler=cmd_chat)

    p = sub.add_parser("embed", help="cosine similarities of sentence embeddings (e.g. all-minilm-l6-v2)")
    p.add_argument("--pretrained", required=True, help="a short name (all-minilm-l6-v2) or a path")
    p.add_argument("sentences", nargs="+")
    p.add_argument("--device", default="cpu", choices=backend.DEVICES)
    p.add_argument("--dtype", default="float32", choices=sorted(backend.DTYPES))
    p.set_defaults(handler=cmd_embed)

    p = sub.add_parser("experiment",
                       help="run one of the experiments (arch, chat-cache, precision, scaling, "
                            "speculative)")
    p.add_argument("name")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--device", default="cpu", choices=backend.DEVICES)
    p.add_argument("--size", default="default", choices=["toy", "default", "large"])
    p.set_defaults(handler=cmd_experiment)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    use_fast_cpu_settings()
    try:
        args.handler(args)  # each command's function, set by its subparser
    # (CheckpointError and ConfigError are ValueErrors; FileNotFoundError, a full disk are OSErrors;
    # ModuleNotFoundError: a published model's package or an extra is not installed)
    except (ValueError, RuntimeError, OSError, ModuleNotFoundError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
