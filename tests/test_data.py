import json

import numpy
import pytest
from hypothesis import given, settings, strategies as st

from minitx import data
from minitx.data import (default_corpus_path, encode_corpus, get_batch, iter_eval_batches,
                         load_tokens, prepare, read_corpus, split)
from minitx.tokenizer import BPETokenizer, CharTokenizer


def small_corpus(tmp_path, n_chars=5000):
    path = tmp_path / "small.txt"
    path.write_text(read_corpus(default_corpus_path())[:n_chars], encoding="utf-8")
    return path


# --- reading -----------------------------------------------------------------------------------

def test_bundled_corpus_is_found_and_read():
    path = default_corpus_path()
    assert path.is_file()
    text = read_corpus(path)
    assert len(text) == 1_115_394
    assert text.startswith("First Citizen:")


def test_read_corpus_keeps_line_endings(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes("one\r\ntwo\n".encode("utf-8"))
    assert read_corpus(path) == "one\r\ntwo\n"


def test_read_corpus_missing_file(tmp_path):
    path = tmp_path / "nowhere.txt"
    with pytest.raises(FileNotFoundError) as info:
        read_corpus(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_corpus_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        read_corpus(path)


def test_read_corpus_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 ok".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8: byte 0xe9 at offset 3"):
        read_corpus(path)


# --- token files -------------------------------------------------------------------------------

def test_encode_corpus_writes_memmapped_tokens(tmp_path):
    text = read_corpus(small_corpus(tmp_path))
    tokenizer = CharTokenizer.train(text)
    tokens = encode_corpus(text, tokenizer, tmp_path / "cache" / "small.tokens")
    assert isinstance(tokens, numpy.memmap)
    assert tokens.dtype == numpy.uint16
    assert tokens.tolist() == tokenizer.encode(text)
    assert load_tokens(tmp_path / "cache" / "small.tokens").tolist() == tokens.tolist()
    meta = json.loads((tmp_path / "cache" / "small.tokens.json").read_text())
    assert meta["count"] == len(text) and meta["tokenizer"] == tokenizer.fingerprint()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")] == []


def test_encode_corpus_uses_uint32_beyond_65536_tokens(tmp_path):
    text = "".join(chr(c) for c in range(0x10000, 0x10000 + 70_000))  # 70k distinct characters
    tokenizer = CharTokenizer.train(text)
    tokens = encode_corpus(text, tokenizer, tmp_path / "wide.tokens")
    assert tokens.dtype == numpy.uint32
    assert int(tokens.max()) == 69_999
    assert tokenizer.decode(tokens) == text


def test_encode_corpus_reuses_a_matching_cache(tmp_path, monkeypatch):
    text = "to be or not to be"
    tokenizer = CharTokenizer.train(text)
    path = tmp_path / "t.tokens"
    first = encode_corpus(text, tokenizer, path).tolist()

    def must_not_encode(text):
        raise AssertionError("the cached token file should have been reused")
    monkeypatch.setattr(tokenizer, "encode", must_not_encode)
    assert encode_corpus(text, tokenizer, path).tolist() == first


def test_encode_corpus_rebuilds_for_another_tokenizer_or_text(tmp_path):
    text = "to be or not to be"
    path = tmp_path / "t.tokens"
    forward = CharTokenizer.train(text)
    backward = CharTokenizer(forward.chars[::-1])  # same characters, other ids
    assert encode_corpus(text, forward, path).tolist() == forward.encode(text)
    assert encode_corpus(text, backward, path).tolist() == backward.encode(text)
    other = "be or not"
    assert encode_corpus(other, backward, path).tolist() == backward.encode(other)


def test_encode_corpus_interrupted_rebuild_leaves_no_false_cache(tmp_path, monkeypatch):
    text = "to be or not to be"
    path = tmp_path / "t.tokens"
    forward = CharTokenizer.train(text)
    backward = CharTokenizer(forward.chars[::-1])
    encode_corpus(text, forward, path)
    real_write = data.write_atomically

    def crash_before_sidecar(target, payload):
        if target.name.endswith(".json"):
            raise KeyboardInterrupt
        real_write(target, payload)
    monkeypatch.setattr(data, "write_atomically", crash_before_sidecar)
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(text, backward, path)  # token file replaced, sidecar not yet written
    monkeypatch.setattr(data, "write_atomically", real_write)
    assert encode_corpus(text, forward, path).tolist() == forward.encode(text)


def test_encode_corpus_rebuilds_a_broken_file(tmp_path):
    text = "to be or not to be"
    tokenizer = CharTokenizer.train(text)
    path = tmp_path / "t.tokens"
    encode_corpus(text, tokenizer, path)
    path.write_bytes(path.read_bytes()[:-2])  # lose the last token
    with pytest.raises(ValueError, match="sidecar promises 18 tokens"):
        load_tokens(path)
    assert encode_corpus(text, tokenizer, path).tolist() == tokenizer.encode(text)


# --- splits and batches ------------------------------------------------------------------------

def test_split_is_first_ninety_last_ten_percent():
    tokens = numpy.arange(1000, dtype=numpy.uint16)
    train, val = split(tokens)
    assert (len(train), len(val)) == (900, 100)
    assert numpy.array_equal(numpy.concatenate([train, val]), tokens)
    assert len(split(tokens, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        split(tokens, 1.0)


def test_get_batch_shapes_dtypes_and_shift():
    rng = numpy.random.default_rng(0)
    tokens = numpy.random.default_rng(1).integers(0, 65, size=500).astype(numpy.uint16)
    x, y = get_batch(tokens, 8, 16, rng)
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == numpy.int64
    assert numpy.array_equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):  # every row is a window of the tokens, y one step on
        windows = numpy.lib.stride_tricks.sliding_window_view(tokens, 17)
        assert numpy.any(numpy.all(windows == numpy.concatenate([row_x, row_y[-1:]]), axis=1))


def test_get_batch_reaches_every_start_and_stays_in_bounds():
    tokens = numpy.arange(10, dtype=numpy.uint16)  # block 8: starts 0 and 1 only
    rng = numpy.random.default_rng(0)
    starts = {int(get_batch(tokens, 4, 8, rng)[0][i, 0]) for _ in range(20) for i in range(4)}
    assert starts == {0, 1}


def test_get_batch_same_generator_state_same_batches():
    tokens = numpy.arange(10_000, dtype=numpy.uint16)
    rng = numpy.random.default_rng(1234)
    get_batch(tokens, 4, 32, rng)
    saved = rng.bit_generator.state  # what a checkpoint stores
    after = [get_batch(tokens, 4, 32, rng) for _ in range(3)]
    resumed = numpy.random.default_rng()
    resumed.bit_generator.state = saved
    for (x, y), (x2, y2) in zip(after, [get_batch(tokens, 4, 32, resumed) for _ in range(3)]):
        assert numpy.array_equal(x, x2) and numpy.array_equal(y, y2)
    assert not numpy.array_equal(after[0][0], after[1][0])


def test_get_batch_too_short_corpus():
    with pytest.raises(ValueError, match="has 8 tokens, but block_size=8 needs at least 9"):
        get_batch(numpy.arange(8), 2, 8, numpy.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        get_batch(numpy.arange(100), 2, 8, 0)


@settings(deadline=None)
@given(n=st.integers(2, 300), batch_size=st.integers(1, 5), block_size=st.integers(1, 40))
def test_eval_batches_cover_the_split_once(n, batch_size, block_size):
    tokens = numpy.arange(n, dtype=numpy.uint16)
    batches = list(iter_eval_batches(tokens, batch_size, block_size))
    targets = numpy.concatenate([y.ravel() for _, y in batches])
    assert numpy.array_equal(targets, tokens[1:])  # every target once, in order
    for x, y in batches:
        assert x.dtype == y.dtype == numpy.int64
        assert x.shape == y.shape and x.shape[0] <= batch_size and x.shape[1] <= block_size
        assert numpy.array_equal(y, x + 1)  # tokens are 0..n-1: y is x shifted by one
    assert all(x.shape[1] == block_size for x, _ in batches[:-1])


def test_eval_batches_too_short():
    with pytest.raises(ValueError, match="has 1 tokens"):
        list(iter_eval_batches(numpy.arange(1), 2, 8))


# --- prepare -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_prepare_trains_caches_and_splits(kind, tmp_path):
    corpus = small_corpus(tmp_path)
    text = read_corpus(corpus)
    cache = tmp_path / "cache"
    tokenizer, train, val = prepare(corpus, kind, vocab_size=300, cache_dir=cache)
    assert tokenizer.kind == kind
    assert len(val) == int((len(train) + len(val)) * 0.1)
    assert tokenizer.decode(numpy.concatenate([train, val])) == text
    files = sorted(p.name for p in cache.iterdir())
    again, train2, _ = prepare(corpus, kind, vocab_size=300, cache_dir=cache)
    assert again == tokenizer and numpy.array_equal(train, train2)
    assert sorted(p.name for p in cache.iterdir()) == files  # nothing new: all from the cache

    corpus.write_text(text[:3000], encoding="utf-8")  # an edited corpus is tokenized afresh
    _, train3, val3 = prepare(corpus, kind, vocab_size=300, cache_dir=cache)
    assert len(train3) + len(val3) < len(train) + len(val)
    assert len(list(cache.iterdir())) == 2 * len(files)


def test_prepare_with_a_given_tokenizer(tmp_path):
    corpus = small_corpus(tmp_path)
    tokenizer = BPETokenizer.train("a tiny, different training text", 270)
    got, train, val = prepare(corpus, tokenizer, cache_dir=tmp_path / "cache")
    assert got is tokenizer
    assert numpy.concatenate([train, val]).tolist() == tokenizer.encode(read_corpus(corpus))


def test_prepare_default_corpus_and_errors(tmp_path):
    tokenizer, train, val = prepare(cache_dir=tmp_path)
    assert tokenizer.vocab_size == len(set(read_corpus(default_corpus_path())))
    assert len(train) + len(val) == 1_115_394
    with pytest.raises(ValueError, match="unknown tokenizer 'word'"):
        prepare(tokenizer="word", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        prepare(tmp_path / "missing.txt", cache_dir=tmp_path)
