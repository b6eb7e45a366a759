"""Settings checked before anything runs: each field's type and range, and the relations between
fields. A broken rule is one line that names the setting, its value and what it must be.

A rule table maps a field to (test, requirement); `check` applies a table to a dataclass or a
dict of settings. train() checks its TrainConfig here, generate() its sampling settings, and
TransformerConfig its own fields with the same `check` (the model's table lives beside it, in
nn/transformer.py). So a negative learning rate, a beta of 1 (a division by zero later) or a
top_k of 0 is refused the same way from the command line and from Python, before a corpus is
read or a model built.
"""
import math
import numbers
import typing
from dataclasses import fields, is_dataclass

from .backend import DEVICES, DTYPES
from .precision import FORMATS


class ConfigError(ValueError):
    """A setting of the wrong type, out of its range, or at odds with another setting."""


def at_least(low):
    return (lambda x: math.isfinite(x) and x >= low), f">= {low}"


def above(low):
    return (lambda x: math.isfinite(x) and x > low), f"> {low}"


UNIT_INTERVAL = (lambda x: 0 <= x < 1), "in [0, 1)"


def one_of(*choices):
    return (lambda x: x in choices), f"one of {list(choices)}"


TRAIN_RULES = {
    "tokenizer": one_of("char", "bpe"),
    "batch_size": at_least(1),
    "max_iters": at_least(1),
    "lr": above(0),
    "min_lr": at_least(0),
    "warmup_iters": at_least(0),
    "beta1": UNIT_INTERVAL,
    "beta2": UNIT_INTERVAL,
    "weight_decay": at_least(0),
    "grad_clip": (at_least(0)[0], ">= 0 (0 turns clipping off)"),
    "eval_interval": at_least(1),
    "eval_iters": at_least(1),
    "sample_tokens": at_least(0),
    "seed": at_least(0),
    "device": one_of(*DEVICES),
    "dtype": one_of(*DTYPES),
    "precision": one_of(*FORMATS),
    "loss_scale": (at_least(0)[0], ">= 0 (0 turns loss scaling off)"),
}

SAMPLE_RULES = {
    "n_tokens": at_least(0),
    "temperature": (at_least(0)[0], ">= 0 (0: always the most likely token)"),
    "top_k": (at_least(1)[0], ">= 1, or None for every token"),
}


def check(settings, rules, types=None):
    """Raise ConfigError for the first setting of `settings` (a dataclass or a dict) whose type
    is not its annotation's (types: {name: annotation}; a dataclass brings its own) or that
    fails its rule. None passes every rule: it means "the default" or "off"."""
    if is_dataclass(settings):
        types = {f.name: f.type for f in fields(settings)}
        settings = {name: getattr(settings, name) for name in types}
    for name, value in settings.items():
        if types and name in types and not _has_type(value, types[name]):
            raise ConfigError(f"{name} must be {_type_name(types[name])}, got {value!r}")
        if name in rules and value is not None:
            test, requirement = rules[name]
            if not test(value):
                raise ConfigError(f"{name} must be {requirement}, got {value!r}")


def require(ok, message):
    """A relation between settings: raise ConfigError(message) unless ok."""
    if not ok:
        raise ConfigError(message)


def check_train_config(cfg):
    """Every field of a TrainConfig (its model's fields were checked when the model config was
    made), then the relations between them."""
    check(cfg, TRAIN_RULES)
    require(cfg.min_lr <= cfg.lr, f"min_lr ({cfg.min_lr}) must not exceed lr ({cfg.lr}): the schedule "
                                  "decays from lr to min_lr")
    require(cfg.tokenizer != "bpe" or cfg.vocab_size >= 256,
            f"vocab_size must be >= 256 for the bpe tokenizer (the byte values), got {cfg.vocab_size}")
    require(isinstance(cfg.out_dir, str) and cfg.out_dir.strip(), "out_dir must name a directory")
    require(cfg.precision == "fp32" or cfg.dtype == "float32",
            f"precision {cfg.precision} keeps float32 master weights: it needs --dtype float32, "
            f"not {cfg.dtype}")


def check_sampling(n_tokens, temperature, top_k):
    """The settings of generate(): how many tokens, the temperature and the top-k cut."""
    check({"n_tokens": n_tokens, "temperature": temperature, "top_k": top_k}, SAMPLE_RULES,
          types={"n_tokens": int, "temperature": float, "top_k": typing.Optional[int]})


def _has_type(value, annotation):
    """Whether value fits int, float, str, bool, a class, or Optional[...] of one; an int is a
    fine float, a bool is no number."""
    kinds = typing.get_args(annotation) or (annotation,)
    if value is None or isinstance(value, bool):
        return type(value) in kinds
    if isinstance(value, numbers.Integral) and (int in kinds or float in kinds):
        return True
    if isinstance(value, numbers.Real) and float in kinds:
        return True
    return any(isinstance(value, k) for k in kinds if isinstance(k, type) and k not in (int, float))


def _type_name(annotation):
    return " or ".join("None" if k is type(None) else k.__name__
                       for k in (typing.get_args(annotation) or (annotation,)))
