"""Checkpoints: one .npz file of plain arrays plus a JSON header, written atomically.

Nothing in a checkpoint is executable (no pickle): arrays are stored as NumPy's .npz and read
back with allow_pickle=False; everything else (config, tokenizer, step, RNG states) is JSON,
kept in the same file as an array of UTF-8 bytes. The file is written beside its final name
and renamed into place, so an interruption leaves the previous checkpoint intact.
"""
import io
import json
import os
import zipfile
from pathlib import Path

import numpy

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
    finally:
        tmp.unlink(missing_ok=True)


def load(path):
    """(meta, {name: array}) from a checkpoint; CheckpointError if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with numpy.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated "
                              f"({type(error).__name__}: {error})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minitx checkpoint (format {meta.get('format')!r})")
    return meta, arrays


def split_prefix(arrays, prefix):
    """The entries of `arrays` whose names start with `prefix`, with the prefix removed."""
    return {name[len(prefix):]: a for name, a in arrays.items() if name.startswith(prefix)}
