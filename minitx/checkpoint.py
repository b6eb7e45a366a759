"""Checkpoints: one .npz file of plain arrays plus a JSON header, written atomically.

Nothing in a checkpoint is executable (no pickle): arrays are stored as NumPy's .npz and read
back with allow_pickle=False; everything else (config, tokenizer, step, RNG states) is JSON,
kept in the same file as an array of UTF-8 bytes. The file is written beside its final name
and renamed into place, so an interruption leaves the previous checkpoint intact.
"""
import io
import json
import math
import os
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy

from . import backend, nn, random
from .autograd import no_grad
from .config_check import check_train_config
from .tokenizer import Tokenizer

FORMAT = "minitx-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model asked for."""


def save(path, arrays, meta):
    """Write {name: array} and the JSON-serialisable `meta` to `path` atomically."""
    header = json.dumps({"format": FORMAT, **meta}).encode("utf-8")
    buffer = io.BytesIO()
    numpy.savez(buffer, __meta__=numpy.frombuffer(header, dtype=numpy.uint8), **arrays)
    write_atomically(path, buffer.getvalue())


def write_atomically(path, data):
    """Write the bytes `data` to a temporary file beside `path`, flush them to the disk, then
    rename the file over `path`: readers (and a machine that loses power) see the old file or the
    new one, never half of one. Checkpoints and the tokenized-corpus cache are written so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:  # a full disk, say: one line, and the old file is still there
        raise OSError(f"cannot write {path}: {error.strerror or error}"
                      + ("; its previous version is intact" if path.exists() else "")) from None
    finally:
        tmp.unlink(missing_ok=True)


def load(path):
    """(meta, {name: array}) from a checkpoint file; CheckpointError if it is missing, is not a
    minitx checkpoint, or is damaged. Only the file format is checked here; read_run checks what
    a training run's checkpoint holds."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a minitx checkpoint, or is truncated (no complete .npz archive)")
    try:
        with numpy.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as error:
        # NumPy's message for an object array suggests allow_pickle=True: never pass that on
        reason = "an array of Python objects" if "pickle" in str(error) else f"{type(error).__name__}: {error}"
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated ({reason})") from None
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (KeyError, ValueError):  # ValueError covers bad UTF-8 and bad JSON
        raise CheckpointError(f"{path} is not a minitx checkpoint (no readable header)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} is not a minitx checkpoint (format {found!r})")
    return meta, arrays


def read_run(path):
    """(meta, arrays) of a training run's checkpoint, checked completely before anything uses it:
    every header field (step, the run's config and model config, the tokenizer, the optimizer's
    settings, both random generators' states), and every array's name, shape, dtype and
    finiteness against the model that the saved config describes. Any fault is a CheckpointError
    that names the file and the field."""
    from .train import TrainConfig  # train.py writes these checkpoints and imports this module

    meta, arrays = load(path)

    def fault(what):
        return CheckpointError(f"checkpoint {path} is damaged: {what}")

    objects = ("config", "model_config", "tokenizer", "optimizer", "rng")
    missing = [k for k in ("step", *objects) if k not in meta]
    if missing:
        raise fault(f"its header lacks {', '.join(missing)}")
    not_objects = [k for k in objects if not isinstance(meta[k], dict)]
    if not_objects:
        raise fault(f"its {', '.join(not_objects)} should be JSON objects")
    if not _is_count(meta["step"]):
        raise fault(f"step {meta['step']!r} is not a count of steps")
    try:
        model_config = nn.TransformerConfig.from_dict(meta["model_config"])
        saved = meta["config"]
        lacking = [k for k in ("data", "tokenizer", "vocab_size", "dtype") if k not in saved]
        if lacking:
            raise ValueError(f"lacks {', '.join(lacking)}")
        known = {f.name for f in fields(TrainConfig)} - {"model"}
        check_train_config(TrainConfig(**{k: v for k, v in saved.items() if k in known}, model=model_config))
    except (ValueError, TypeError) as error:
        raise fault(f"its config {error}") from None
    try:
        tokenizer = Tokenizer.from_dict(meta["tokenizer"])
    except (ValueError, TypeError, KeyError) as error:
        raise fault(f"its tokenizer does not load ({error})") from None
    if tokenizer.vocab_size != model_config.vocab_size:
        raise fault(f"its tokenizer has {tokenizer.vocab_size} tokens, its model {model_config.vocab_size}")
    # NumPy's generator states (the batches', minitx's CPU one) and minitx's CUDA seed, if any
    for name, state_of in (("batches", lambda rng: rng["batches"]),
                           ("minitx", lambda rng: rng["minitx"]["cpu"])):
        try:
            numpy.random.default_rng().bit_generator.state = state_of(meta["rng"])
        except (ValueError, TypeError, KeyError):
            raise fault(f"the state of its {name} random generator is not a generator's state") from None
    if not _is_count(meta["rng"]["minitx"].get("cuda_seed", 0)):
        raise fault("the CUDA seed of its minitx random generator is not a seed")
    optim = meta["optimizer"]
    if not (isinstance(optim.get("lr"), (int, float)) and math.isfinite(optim["lr"]) and optim["lr"] >= 0
            and _is_count(optim.get("n_steps"))):
        raise fault(f"its optimizer settings {({k: optim.get(k) for k in ('lr', 'n_steps')})} are not "
                    "a learning rate and a count of steps")
    _check_arrays(arrays, model_config, saved["dtype"], optim["n_steps"], fault)
    return meta, arrays


def _check_arrays(arrays, model_config, dtype, n_steps, fault):
    """Weights "model/NAME" and optimizer moments "optim/I/KIND" (none before the first step,
    the same kinds for every parameter after it): names, shapes, dtype and finiteness."""
    cpu = random.generator("cpu")
    state = cpu.bit_generator.state  # building draws initial weights: leave the stream as it was
    try:
        with backend.default_device_as("cpu"), no_grad():
            params = list(nn.DecoderOnly(model_config).named_parameters())
    finally:
        cpu.bit_generator.state = state
    expected = {f"model/{name}": p.shape for name, p in params}
    kinds = sorted({name.rsplit("/", 1)[1] for name in arrays if name.startswith("optim/")})
    if n_steps and not kinds:
        raise fault(f"its optimizer state is missing after {n_steps} steps")
    expected.update({f"optim/{i}/{kind}": p.shape for i, (_, p) in enumerate(params) for kind in kinds})
    absent, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if absent or extra:
        raise fault(f"arrays missing {absent[:3]}" if absent else f"unexpected arrays {extra[:3]}")
    for name, shape in expected.items():
        a = arrays[name]
        if a.shape != shape or a.dtype != numpy.dtype(dtype):
            raise fault(f"{name} is {a.dtype} {a.shape}, the config asks for {dtype} {shape}")
        if not numpy.isfinite(a).all():
            raise fault(f"{name} holds NaN or infinite values")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def split_prefix(arrays, prefix):
    """The entries of `arrays` whose names start with `prefix`, with the prefix removed."""
    return {name[len(prefix):]: a for name, a in arrays.items() if name.startswith(prefix)}
