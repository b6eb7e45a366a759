"""Tokenizers: text to integer ids and back.

A model sees integers, not text. A tokenizer fixes the mapping, and two kinds are here:

- `CharTokenizer`: one id per character seen in the training text. Tiny vocabulary, long
  sequences, and it cannot encode a character it never saw.
- `BPETokenizer`: byte-level byte-pair encoding. It starts from the 256 byte values, so any
  UTF-8 text can be encoded, then learns merges of frequent adjacent pairs into new tokens,
  so common words become one token and sequences get shorter.

Both save to and load from plain JSON (`save`, `load_tokenizer`); the "kind" field says which
class to rebuild.
"""
import hashlib
import heapq
import json
import math
import operator
import re
from collections import Counter, defaultdict
from pathlib import Path


class Tokenizer:
    """What every tokenizer offers: encode, decode, vocab_size, and a JSON form.

    A subclass sets `kind`, implements `encode`, `decode`, `vocab_size` and `to_dict`, and
    its constructor takes the fields of `to_dict` (all but "kind") as keyword arguments.
    """
    kind = None

    def encode(self, text):
        raise NotImplementedError

    def decode(self, ids):
        raise NotImplementedError

    @property
    def vocab_size(self):
        raise NotImplementedError

    def to_dict(self):
        raise NotImplementedError

    @staticmethod
    def from_dict(d):
        """Rebuild a tokenizer from `to_dict()` output; d["kind"] picks the class."""
        fields = dict(d)
        kind = fields.pop("kind", None)
        if kind not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer kind {kind!r}: "
                             f"expected one of {sorted(TOKENIZERS)}")
        return TOKENIZERS[kind](**fields)

    def to_json(self):
        return json.dumps(self.to_dict())

    def save(self, path):
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @staticmethod
    def load(path):
        return Tokenizer.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def fingerprint(self):
        """A short hash of the tokenizer's contents: equal fingerprints, equal encodings."""
        canonical = json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")
        return hashlib.sha256(canonical).hexdigest()[:16]

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

    def _check_ids(self, ids):
        """`ids` as a list of Python ints, refusing any outside 0 .. vocab_size - 1."""
        ids = [operator.index(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids outside the vocabulary (0..{self.vocab_size - 1}): "
                             f"{bad[:10]}")
        return ids


class CharTokenizer(Tokenizer):
    """One token per character; the vocabulary is the sorted set of the training characters."""
    kind = "char"

    def __init__(self, chars):
        self.chars = "".join(chars)  # id -> character
        self.ids = {c: i for i, c in enumerate(self.chars)}  # character -> id
        if len(self.ids) != len(self.chars):
            raise ValueError("a character vocabulary must not repeat a character")

    @classmethod
    def train(cls, text):
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        try:
            return [self.ids[c] for c in text]
        except KeyError:
            raise ValueError(self._unknown_message(text)) from None

    def _unknown_message(self, text):
        first = {}  # unknown character -> index of its first occurrence
        for index, c in enumerate(text):
            if c not in self.ids:
                first.setdefault(c, index)
        listed = ", ".join(f"{c!r} (U+{ord(c):04X}) at index {index}"
                           for c, index in list(first.items())[:10])
        more = f" and {len(first) - 10} more" if len(first) > 10 else ""
        return (f"text contains characters not in the vocabulary: {listed}{more}; "
                f"the vocabulary holds the {self.vocab_size} characters of the training text")

    def decode(self, ids):
        return "".join(self.chars[i] for i in self._check_ids(ids))

    def to_dict(self):
        return {"kind": self.kind, "chars": self.chars}


# How BPE cuts text into chunks before merging: merges happen inside a chunk, never across two,
# so no token glues a word to the punctuation after it. The idea is GPT-2's pre-split, written
# for Python's `re`, which has no \p{L}: there `[^\W\d_]` means "a letter" (a word character
# that is neither a digit nor the underscore). The alternatives, tried in order:
#   '(?i:[sdmt]|ll|ve|re)(?![^\W\d_])   a contraction ending a word: 's 't 'll 've 're 'd 'm
#    ?[^\W\d_]+                         a word, with the one space before it
#    ?\d{1,3}                           a number, in groups of at most three digits
#    ?(?:[^\w\s]|_)+                    a run of punctuation and symbols
#   \s+(?= \S)                          whitespace, leaving its last space to the word after it
#   \s+                                 any other run of whitespace (newlines stay together)
# Every character falls in one alternative, so the chunks always join back to the text.
SPLIT_PATTERN = (r"'(?i:[sdmt]|ll|ve|re)(?![^\W\d_])| ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\w\s]|_)+"
                 r"|\s+(?= \S)|\s+")


def merge_pair(ids, pair, new_id):
    """Replace each occurrence of `pair` in `ids` (left to right, not overlapping) by `new_id`."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer(Tokenizer):
    """Byte-level byte-pair encoding.

    Tokens 0..255 are the bytes; token 256 + k is merges[k], a pair of earlier tokens.
    Encoding UTF-8-encodes each chunk of the text and applies merges in the order they were
    learned, so any string can be encoded and decoded back unchanged.
    """
    kind = "bpe"
    _CACHE_LIMIT = 1 << 16  # chunks whose encoding is remembered (the cache is cleared beyond)

    def __init__(self, merges=(), pattern=SPLIT_PATTERN):
        self.merges = [tuple(pair) for pair in merges]
        self.pattern = pattern
        self._split = re.compile(pattern)
        self.vocab = [bytes([b]) for b in range(256)]  # id -> the bytes it stands for
        self._ranks = {}  # pair -> the id it merges into; a lower id was learned earlier
        for k, pair in enumerate(self.merges):
            new_id = 256 + k
            if len(pair) != 2 or not all(0 <= t < new_id for t in pair):
                raise ValueError(f"merge {k} {list(pair)} must join two ids below {new_id}")
            self._ranks[pair] = new_id
            self.vocab.append(self.vocab[pair[0]] + self.vocab[pair[1]])
        self._cache = {}  # chunk -> its ids

    def pre_split(self, text):
        """The chunks BPE works in; "".join(chunks) == text."""
        return self._split.findall(text)

    @classmethod
    def train(cls, text, vocab_size, progress=None):
        """Learn vocab_size - 256 merges from `text`.

        Each step merges the most frequent adjacent pair (ties: the smallest pair, so training
        is deterministic). Pairs are counted over the distinct chunks, each weighted by how
        often it occurs, and after a merge only the chunks that contained the pair are
        recounted. Training stops early, with a smaller vocabulary, if no pair is left.
        `progress(done, total)` is called after every merge.
        """
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be at least 256 (the byte values), got {vocab_size}")
        chunks = Counter(cls().pre_split(text))  # distinct chunk -> how often it occurs
        words = [list(chunk.encode("utf-8")) for chunk in chunks]
        freqs = list(chunks.values())

        counts = defaultdict(int)  # pair -> occurrences in the text
        where = defaultdict(set)  # pair -> indices of the words holding it
        for w, word in enumerate(words):
            for pair in zip(word, word[1:]):
                counts[pair] += freqs[w]
                where[pair].add(w)
        # Max-heap of (-count, pair). A count change pushes a new entry; entries whose count
        # is out of date are skipped when popped.
        heap = [(-count, pair) for pair, count in counts.items()]
        heapq.heapify(heap)

        merges = []
        n_merges = vocab_size - 256
        while len(merges) < n_merges and heap:
            neg_count, pair = heapq.heappop(heap)
            if counts.get(pair) != -neg_count:
                continue  # stale entry
            new_id = 256 + len(merges)
            merges.append(pair)
            changed = set()
            for w in where.pop(pair):
                word = words[w]
                merged = merge_pair(word, pair, new_id)
                if len(merged) == len(word):
                    continue  # an earlier merge already took this word's pair
                for old in zip(word, word[1:]):
                    counts[old] -= freqs[w]
                    changed.add(old)
                for new in zip(merged, merged[1:]):
                    counts[new] += freqs[w]
                    changed.add(new)
                    where[new].add(w)
                words[w] = merged
            for p in changed:
                if counts[p]:
                    heapq.heappush(heap, (-counts[p], p))
                else:  # no word holds p any more
                    del counts[p]
                    where.pop(p, None)
            if progress is not None:
                progress(len(merges), n_merges)
        return cls(merges, SPLIT_PATTERN)

    @property
    def vocab_size(self):
        return len(self.vocab)

    def encode(self, text):
        ids = []
        for chunk in self.pre_split(text):
            chunk_ids = self._cache.get(chunk)
            if chunk_ids is None:
                if len(self._cache) >= self._CACHE_LIMIT:
                    self._cache.clear()
                chunk_ids = self._cache[chunk] = self._encode_chunk(chunk.encode("utf-8"))
            ids.extend(chunk_ids)
        return ids

    def _encode_chunk(self, data):
        """Apply the merges to one chunk's bytes, always the earliest-learned pair present first."""
        ids = list(data)
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self._ranks.get(p, math.inf))
            if pair not in self._ranks:
                break
            ids = merge_pair(ids, pair, self._ranks[pair])
        return ids

    def decode(self, ids):
        """Join the tokens' bytes; a cut through a multi-byte character decodes as U+FFFD."""
        data = b"".join(self.vocab[i] for i in self._check_ids(ids))
        return data.decode("utf-8", errors="replace")

    def to_dict(self):
        return {"kind": self.kind, "merges": [list(pair) for pair in self.merges],
                "pattern": self.pattern}


TOKENIZERS = {"char": CharTokenizer, "bpe": BPETokenizer}  # kind -> class
load_tokenizer = Tokenizer.load
