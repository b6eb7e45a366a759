"""The command line: `python -m minitx train | sample | chat | embed | experiment`.

A thin shell: argparse built from the TrainConfig and TransformerConfig dataclasses, errors turned into one line and a
non-zero exit, everything else in minitx.train / minitx.generate / minitx.experiments.
"""
import argparse
import sys
import typing
from dataclasses import fields

import numpy

from . import backend, checkpoint, nn, use_fast_cpu_settings
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
    model_names = {f.name for f in fields(nn.TransformerConfig)}
    overrides = {name: getattr(args, name) for name, _ in config_fields()
                 if getattr(args, name) is not None}
    model = {k: v for k, v in overrides.items() if k in model_names}
    own = {k: v for k, v in overrides.items() if k not in model_names}
    return preset(args.preset, model=model, **own)


def cmd_train(args):
    cfg = config_from_args(args)
    summary = train(cfg, resume=args.resume, progress=not args.quiet)
    if summary.get("interrupted"):
        raise KeyboardInterrupt


def cmd_sample(args):
    model, tokenizer, meta = load_model(f"{args.run}/checkpoint.npz", args.device)
    from .generate import generate
    try:
        prompt = tokenizer.encode(args.prompt)
    except ValueError as error:
        raise ValueError(f"prompt: {error}") from None
    rng = numpy.random.default_rng(args.seed)
    print(args.prompt, end="", flush=True)
    stream(tokenizer, generate(model, prompt, args.tokens, rng, args.temperature, args.top_k,
                               use_cache=not args.no_cache))


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


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m minitx", description=__doc__.splitlines()[0])
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
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="re-run the whole context for every token")
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

    p = sub.add_parser("experiment", help="run one of the experiments (arch, chat-cache, scaling)")
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
    except (ValueError, RuntimeError, FileNotFoundError, FileExistsError, ModuleNotFoundError,
            checkpoint.CheckpointError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
