"""The token pipeline: corpus file -> tokenizer -> token file on disk -> batches.

A corpus is encoded once and its ids written to a raw binary file next to a small JSON
sidecar; later runs memory-map the file instead of re-encoding. Training draws random
windows from it with a `numpy.random.Generator` the caller owns, so saving and restoring
that generator's state resumes the exact same batch sequence. Evaluation walks a split in
fixed, non-overlapping windows.
"""
import hashlib
import importlib.resources
import json
import os
from pathlib import Path

import numpy

from minitx.checkpoint import write_atomically
from minitx.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, TOKENIZERS, load_tokenizer


def default_corpus_path():
    """The bundled Tiny Shakespeare (1,115,394 characters, public domain), as a file path."""
    return Path(importlib.resources.files("minitx").joinpath("corpora", "tinyshakespeare.txt"))


def default_cache_dir():
    """Where `prepare` keeps tokenizers and token files: $XDG_CACHE_HOME/minitx, ~/.cache/minitx."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minitx"


def read_corpus(path):
    """The text of a UTF-8 file, with a one-line error for a missing, empty or non-UTF-8 file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"corpus file not found: {path}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"corpus {path} is a directory: --data takes a UTF-8 text file") from None
    if not data:
        raise ValueError(f"corpus file {path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"corpus file {path} is not UTF-8: byte {data[error.start]:#04x} "
                         f"at offset {error.start} ({error.reason})") from None


def token_dtype(vocab_size):
    """The narrowest unsigned type holding every id, little-endian so token files are portable."""
    return numpy.dtype("<u2" if vocab_size <= 1 << 16 else "<u4")


def _sidecar(path):
    return path.with_name(path.name + ".json")


def _digest(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def encode_corpus(text, tokenizer, path):
    """Encode `text` into the token file `path` (plus sidecar `path`.json), or reuse it.

    The sidecar records the dtype, the count, the tokenizer's fingerprint and a hash of the
    text. When both match, the existing file is returned without encoding; otherwise (no
    file, another tokenizer, another text, a broken file) it is rebuilt. Returns the tokens
    as a read-only `numpy.memmap`.
    """
    path = Path(path)
    key = {"tokenizer": tokenizer.fingerprint(), "text": _digest(text)}
    try:
        meta = json.loads(_sidecar(path).read_text())
        if {name: meta.get(name) for name in key} == key:
            return load_tokens(path)
    except (OSError, ValueError, KeyError):
        pass  # no cache yet, or a broken one: rebuild it
    if not text:
        raise ValueError("cannot encode an empty text")
    dtype = token_dtype(tokenizer.vocab_size)
    ids = numpy.asarray(tokenizer.encode(text), dtype=dtype)
    _sidecar(path).unlink(missing_ok=True)  # the old sidecar must not vouch for the new file
    write_atomically(path, ids.tobytes())
    meta = {"dtype": dtype.str, "count": len(ids), **key}
    write_atomically(_sidecar(path), json.dumps(meta).encode("utf-8"))
    return load_tokens(path)


def load_tokens(path):
    """Memory-map a token file written by `encode_corpus` (read-only)."""
    path = Path(path)
    meta = json.loads(_sidecar(path).read_text())
    dtype, count = numpy.dtype(meta["dtype"]), meta["count"]
    size = path.stat().st_size
    if size != count * dtype.itemsize:
        raise ValueError(f"token file {path} holds {size} bytes, but its sidecar promises "
                         f"{count} tokens of {dtype.itemsize} bytes")
    return numpy.memmap(path, dtype=dtype, mode="r", shape=(count,))


def split(tokens, val_fraction=0.1):
    """(train, val): the first 1 - val_fraction of the tokens and the rest; views, no copy."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_train = len(tokens) - int(len(tokens) * val_fraction)
    return tokens[:n_train], tokens[n_train:]


def _check_sizes(tokens, batch_size, block_size, needed):
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be positive, "
                         f"got {batch_size} and {block_size}")
    if len(tokens) < needed:
        raise ValueError(f"the token split has {len(tokens)} tokens, but block_size={block_size} "
                         f"needs at least {needed}")


def get_batch(tokens, batch_size, block_size, rng):
    """A random training batch: x (batch_size, block_size) int64 and y, x shifted one token on.

    Window starts are drawn uniformly from every position that leaves room for the targets,
    using `rng` (a numpy.random.Generator); the same generator state gives the same batch.
    """
    if not isinstance(rng, numpy.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    _check_sizes(tokens, batch_size, block_size, needed=block_size + 1)
    starts = rng.integers(0, len(tokens) - block_size, size=batch_size)
    windows = numpy.array(tokens[starts[:, None] + numpy.arange(block_size + 1)], dtype=numpy.int64)
    return numpy.ascontiguousarray(windows[:, :-1]), numpy.ascontiguousarray(windows[:, 1:])


def iter_eval_batches(tokens, batch_size, block_size):
    """Every (x, y) window of a split in order, for evaluating it completely.

    Windows do not overlap: together they predict every token after the first exactly once.
    Full windows come in batches of up to batch_size rows; the leftover targets (fewer than
    block_size) come last as a (1, r) batch. Batches differ in size, so average a loss over
    the split by weighting each batch's mean loss with y.size.
    """
    _check_sizes(tokens, batch_size, block_size, needed=2)
    n_windows, rest = divmod(len(tokens) - 1, block_size)
    for first in range(0, n_windows, batch_size):
        rows = min(batch_size, n_windows - first)
        start = first * block_size
        window = numpy.array(tokens[start:start + rows * block_size + 1], dtype=numpy.int64)
        yield window[:-1].reshape(rows, block_size), window[1:].reshape(rows, block_size)
    if rest:
        tail = numpy.array(tokens[n_windows * block_size:], dtype=numpy.int64)
        yield tail[None, :-1], tail[None, 1:]


def prepare(data_path=None, tokenizer="char", vocab_size=512, cache_dir=None, val_fraction=0.1):
    """Corpus -> (tokenizer, train_tokens, val_tokens), cached under `cache_dir`.

    `tokenizer` is "char", "bpe" (trained to `vocab_size` on the corpus) or a Tokenizer
    (say, one restored from a checkpoint). Trained tokenizers and token files are cached
    under names holding the corpus hash, so an edited corpus is re-tokenized.
    """
    path = default_corpus_path() if data_path is None else Path(data_path)
    text = read_corpus(path)
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    name = f"{path.stem}-{_digest(text)[:12]}"
    if not isinstance(tokenizer, Tokenizer):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {tokenizer!r}: "
                             f"expected one of {sorted(TOKENIZERS)}")
        spec = "char" if tokenizer == "char" else f"bpe{vocab_size}"
        saved = cache / f"{name}-{spec}.tokenizer.json"
        if saved.exists():
            tokenizer = load_tokenizer(saved)
        else:
            tokenizer = (CharTokenizer.train(text) if tokenizer == "char"
                         else BPETokenizer.train(text, vocab_size))
            write_atomically(saved, tokenizer.to_json().encode("utf-8"))
    tokens = encode_corpus(text, tokenizer, cache / f"{name}-{tokenizer.fingerprint()}.tokens")
    return (tokenizer, *split(tokens, val_fraction))
