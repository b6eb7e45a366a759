import functools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from minitx.data import default_corpus_path, read_corpus
from minitx.tokenizer import (BPETokenizer, CharTokenizer, Tokenizer, TOKENIZERS, load_tokenizer,
                              merge_pair)

REPO = Path(__file__).resolve().parents[1]
HARD_STRINGS = ["", "\x00", "a\x00b", "\r\n", "line one\r\nline two\r\n", "naïve café",
                "cafe\u0301 (combining acute)", "日本語のテキスト",
                "emoji 👩‍👩‍👧 and 🎉!",
                "  leading and trailing  ", "tabs\tand\x0bvertical\x0cfeeds", "\ufeffBOM",
                "1234567 numbers 3.14159", "under_score", "'tis o'er, don't"]


@functools.cache
def corpus():
    return read_corpus(default_corpus_path())


@functools.cache
def sample_bpe(vocab_size):
    """BPE trained on the first 20k characters of the bundled corpus (fast enough for tests)."""
    return BPETokenizer.train(corpus()[:20_000], vocab_size)


# --- character tokenizer ---------------------------------------------------------------------

@settings(deadline=None)
@given(st.text(min_size=1))
def test_char_round_trip(text):
    tokenizer = CharTokenizer.train(text)
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


def test_char_vocabulary_is_sorted_set_of_training_characters():
    tokenizer = CharTokenizer.train("hello world")
    assert tokenizer.chars == " dehlorw"
    assert tokenizer.vocab_size == 8
    assert tokenizer.encode("hello") == [3, 2, 4, 4, 5]


def test_char_unknown_characters_named_with_position():
    tokenizer = CharTokenizer.train("abc ")
    with pytest.raises(ValueError) as info:
        tokenizer.encode("ab é c€ é")
    message = str(info.value)
    assert "not in the vocabulary" in message
    assert "'é' (U+00E9) at index 3" in message
    assert "'€' (U+20AC) at index 6" in message
    assert message.count("U+00E9") == 1  # each unknown character named once


def test_char_train_on_empty_text_fails():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train("")


# --- byte-level BPE --------------------------------------------------------------------------

@settings(deadline=None)
@given(st.text())
def test_bpe_round_trip_any_text(text):
    tokenizer = sample_bpe(512)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_bpe_round_trip_hard_strings(text):
    tokenizer = sample_bpe(512)
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert BPETokenizer().decode(BPETokenizer().encode(text)) == text  # no merges: raw bytes


@settings(deadline=None)
@given(st.text())
def test_pre_split_chunks_join_back_to_text(text):
    chunks = BPETokenizer().pre_split(text)
    assert "".join(chunks) == text
    assert all(chunks)


def test_pre_split_separates_words_numbers_punctuation_and_spaces():
    chunks = BPETokenizer().pre_split("Hello, world!  I'll pay 12345.\n\nEnd")
    assert chunks == ["Hello", ",", " world", "!", " ", " I", "'ll", " pay", " 123", "45", ".",
                      "\n\n", "End"]


def test_bpe_merges_stay_inside_chunks():
    # ",\n" and "e," are among the most common byte pairs of the corpus; the pre-split keeps
    # punctuation away from letters and from the newline after it.
    for token in sample_bpe(512).vocab[256:]:
        text = token.decode("utf-8", errors="replace")
        assert not (any(c.isalpha() for c in text) and any(c in ",.;:!?" for c in text)), token
        assert not ("\n" in text and any(c in ",.;:!?" for c in text)), token


def test_bpe_decode_of_a_cut_multibyte_character_is_replacement():
    tokenizer = BPETokenizer()
    ids = tokenizer.encode("é")
    assert ids == [0xC3, 0xA9]
    assert tokenizer.decode(ids[:1]) == "\ufffd"


def test_bpe_merges_shorten_the_corpus():
    held_out = corpus()[20_000:40_000]
    n_bytes = len(held_out.encode("utf-8"))
    n_small = len(sample_bpe(300).encode(held_out))
    n_large = len(sample_bpe(512).encode(held_out))
    assert n_large < n_small < n_bytes
    assert n_large < 0.6 * n_bytes  # 256 merges of English words at least ~halve the bytes


def naive_train(text, vocab_size):
    """Textbook BPE: recount every pair over every chunk occurrence before each merge."""
    words = [list(chunk.encode("utf-8")) for chunk in BPETokenizer().pre_split(text)]
    merges = []
    while 256 + len(merges) < vocab_size:
        counts = Counter(pair for word in words for pair in zip(word, word[1:]))
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        words = [merge_pair(word, best, 255 + len(merges)) for word in words]
    return merges


def test_bpe_incremental_training_matches_naive_recount():
    text = corpus()[:3000] + " 日本語 👩‍👩‍👧 aaaa aaaa aaaaa"
    assert BPETokenizer.train(text, 320).merges == naive_train(text, 320)


def test_bpe_training_is_deterministic_across_processes():
    text_slice = 5000
    here = BPETokenizer.train(corpus()[:text_slice], 300).fingerprint()
    assert BPETokenizer.train(corpus()[:text_slice], 300).fingerprint() == here
    script = ("from minitx.data import default_corpus_path, read_corpus\n"
              "from minitx.tokenizer import BPETokenizer\n"
              f"text = read_corpus(default_corpus_path())[:{text_slice}]\n"
              "print(BPETokenizer.train(text, 300).fingerprint())")
    for seed in ("1", "2"):  # string hashing (set order) differs between these processes
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == here


def test_bpe_training_stops_when_no_pair_is_left():
    tokenizer = BPETokenizer.train("ab ab ab", 1000)
    assert [tokenizer.vocab[i] for i in range(256, tokenizer.vocab_size)] == [b"ab", b" ab"]


def test_bpe_progress_reports_every_merge():
    calls = []
    BPETokenizer.train(corpus()[:2000], 266,
                       progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 10) for k in range(1, 11)]


def test_bpe_vocab_size_below_bytes_fails():
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train("text", 255)


def test_bpe_trains_on_the_full_corpus():
    tokenizer = BPETokenizer.train(corpus(), 512)
    assert tokenizer.vocab_size == 512


# --- serialisation and shared behaviour ------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: CharTokenizer.train(corpus()[:20_000]),
                                  lambda: sample_bpe(300)], ids=["char", "bpe"])
def test_save_load_gives_the_same_tokenizer(make, tmp_path):
    tokenizer = make()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    assert json.loads(path.read_text())["kind"] == tokenizer.kind
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tokenizer)
    assert loaded == tokenizer
    assert loaded.fingerprint() == tokenizer.fingerprint()
    text = corpus()[20_000:25_000]
    assert loaded.encode(text) == tokenizer.encode(text)
    assert Tokenizer.from_dict(json.loads(tokenizer.to_json())) == tokenizer


def test_fingerprint_tells_tokenizers_apart():
    tokenizers = [CharTokenizer.train("abc"), CharTokenizer.train("abd"), sample_bpe(300),
                  sample_bpe(301)]
    fingerprints = {tokenizer.fingerprint() for tokenizer in tokenizers}
    assert len(fingerprints) == 4


def test_from_dict_rejects_unknown_kind_and_bad_merges():
    with pytest.raises(ValueError, match="unknown tokenizer kind 'word'"):
        Tokenizer.from_dict({"kind": "word"})
    with pytest.raises(ValueError, match="merge 1"):
        Tokenizer.from_dict({"kind": "bpe", "merges": [[97, 98], [256, 300]]})
    assert set(TOKENIZERS) == {"char", "bpe"}


@pytest.mark.parametrize("tokenizer", [CharTokenizer.train("abc"), BPETokenizer()],
                         ids=["char", "bpe"])
def test_decode_rejects_ids_outside_the_vocabulary(tokenizer):
    for bad in (-1, tokenizer.vocab_size):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tokenizer.decode([0, bad])
