"""Sampling text from a decoder-only model: one token at a time, or speculatively with a draft model.

With the KV cache, the prompt is run once and every new token costs a single position of
attention over the cached keys and values; without it, every token re-runs the whole context.
Both see the same context until it fills block_size. After that the uncached path slides a
window of the last block_size tokens, and the cached path restarts its cache from the last
block_size // 2 tokens (positions must stay below block_size), so long samples can differ.

Speculative decoding (Leviathan et al. 2023, Chen et al. 2023) adds a small draft model. Each
round the draft samples k tokens x_1 .. x_k from its distributions q, one cheap step each; the
target scores all of them in ONE forward pass over its cache, which gives its distributions
p_1 .. p_{k+1} after each prefix. Draft x_i is kept with probability min(1, p_i(x_i) / q_i(x_i));
at the first rejection the token is drawn instead from the residual max(0, p_i - q_i), normalised,
and the round ends; when all k are kept, a bonus token comes from p_{k+1}. Every emitted token is
then distributed exactly as the target alone would sample it, and a round costs one target pass
for 1 to k + 1 tokens. Both KV caches are truncated back to the kept tokens.
"""
from dataclasses import dataclass

import numpy

from .autograd import no_grad
from .config_check import check_sampling
from .nn import KVCache


def distribution(logits, temperature=1.0, top_k=None):
    """Next-token probabilities (..., vocab_size) from scores (..., vocab_size): softmax of
    logits / temperature over the top_k highest scores (all when top_k is None); at temperature 0
    all the mass sits on the argmax. Target and draft go through this same function, so speculative
    decoding samples from the distribution that plain decoding with these settings samples from."""
    logits = numpy.asarray(logits, dtype=numpy.float64)
    if temperature == 0:
        return numpy.eye(logits.shape[-1])[logits.argmax(-1)]
    if top_k is not None and top_k < logits.shape[-1]:
        cutoff = numpy.partition(logits, -top_k, axis=-1)[..., -top_k, None]
        logits = numpy.where(logits < cutoff, -numpy.inf, logits)
    p = numpy.exp((logits - logits.max(-1, keepdims=True)) / temperature)
    return p / p.sum(-1, keepdims=True)


def sample(p, rng):
    """One token id drawn from the probabilities p (vocab_size,), by inverting their running sum
    at a uniform draw (what rng.choice does, without its checks: it runs several times a token)."""
    cdf = numpy.cumsum(p)
    return int(numpy.searchsorted(cdf, rng.random() * cdf[-1], side="right"))


def sample_next(logits, rng, temperature=1.0, top_k=None):
    """One token id from the scores `logits` (vocab_size,): greedy at temperature 0 (no draw)."""
    if temperature == 0:
        return int(numpy.argmax(logits))
    return sample(distribution(logits, temperature, top_k), rng)


def speculative_accept(p, q, drafted, rng):
    """The modified rejection sampling that keeps speculative decoding exact.

    p (k + 1, V): the target's distributions after each drafted prefix; q (k, V): the draft's,
    from which the k tokens `drafted` were sampled. Returns (n, token): keep drafted[:n], then
    emit `token`. With one-hot p and q (temperature 0) this keeps drafts while the argmaxes agree
    and then emits the target's argmax.
    """
    for i, x in enumerate(drafted):
        if rng.random() >= p[i, x] / q[i, x]:  # rejected, with probability 1 - min(1, p/q)
            residual = numpy.maximum(p[i] - q[i], 0.0)
            return i, sample(residual / residual.sum(), rng)
    return len(drafted), sample(p[-1], rng)


@dataclass
class SpeculationStats:
    """Counts of a speculative run: `rounds` target passes, `drafted` draft tokens proposed,
    `accepted` of them kept, `rejected` (the rounds that ended at a rejection), `tokens` emitted.

    acceptance_rate = accepted / (accepted + rejected) estimates alpha, the probability that a
    draft the target checks is kept; drafts after a rejection are never checked.
    """
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0
    tokens: int = 0

    def count(self, drafted, accepted):
        """One round: `drafted` tokens proposed, `accepted` kept, one more emitted after them."""
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        self.rejected += accepted < drafted
        self.tokens += accepted + 1

    @property
    def acceptance_rate(self):
        checked = self.accepted + self.rejected
        return self.accepted / checked if checked else float("nan")

    @property
    def tokens_per_round(self):
        return self.tokens / self.rounds if self.rounds else float("nan")


class _CachedModel:
    """A model, its KV cache, and where in the context the cached window starts.

    The cache holds context[start:start + cache.length]; positions must stay below block_size, so
    when the window is full the cache restarts from the last block_size // 2 tokens.
    """

    def __init__(self, model, context):
        self.model, self.block_size = model, model.config.block_size
        self.cache, self.start = KVCache(), max(0, len(context) - self.block_size)

    def room(self, context):
        """How many more tokens the window takes after `context` before it must restart."""
        return self.block_size - (len(context) - self.start)

    def scores(self, context, drafted=()):
        """Logits (n, V) after each token of context + drafted that the cache has not seen, the last
        len(drafted) + 1 of them after context[-1] and after each drafted token."""
        if self.room(context) - len(drafted) < 0:
            self.cache.truncate(0)
            self.start = len(context) - (self.block_size // 2 or 1)
        fresh = context[self.start + self.cache.length:] + list(drafted)
        return self.model(numpy.array([fresh]), cache=self.cache)[0].numpy()[0]

    def keep(self, n):
        """Roll the cache back to the first n tokens of the context (n + 1 tokens follow)."""
        if n < self.start:  # the window restarted among the tokens rolled back: restart it again
            self.start = max(0, n + 1 - (self.block_size // 2 or 1))
        self.cache.truncate(min(self.cache.length, n - self.start))


def generate(model, ids, n_tokens, rng, temperature=1.0, top_k=None, use_cache=True, draft=None,
             n_draft=4, accept=speculative_accept, stats=None):
    """Yield `n_tokens` new token ids after the prompt `ids` (a list of ints).

    draft: a smaller model with the same vocabulary that proposes n_draft tokens per round
    (speculative decoding, with the KV cache); `accept` is the rule that decides which drafts to
    keep (`speculative_accept`, the exact one); a SpeculationStats passed as `stats` is counted into.
    """
    if not ids:
        raise ValueError("generation needs a prompt of at least one token")
    check_sampling(n_tokens, temperature, top_k)
    if draft is not None:
        if not use_cache:
            raise ValueError("speculative decoding needs the KV cache (use_cache=True)")
        if n_draft < 1:
            raise ValueError(f"n_draft must be >= 1, got {n_draft}")
        if draft.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"the draft's vocabulary ({draft.config.vocab_size} tokens) differs from "
                             f"the target's ({model.config.vocab_size}): they must share a tokenizer")
        draft.eval()
    model.eval()
    if use_cache:
        yield from _generate_cached(model, list(ids), n_tokens, rng, temperature, top_k, draft,
                                    n_draft, accept, stats if stats is not None else SpeculationStats())
        return
    context = list(ids)
    for _ in range(n_tokens):
        with no_grad():  # (a decorator would not cover a generator's body)
            logits = model(numpy.array([context[-model.config.block_size:]]))[0]
        context.append(sample_next(logits.numpy()[0, -1], rng, temperature, top_k))
        yield context[-1]


def _generate_cached(model, context, n_tokens, rng, temperature, top_k, draft, n_draft, accept, stats):
    """Rounds of: the draft proposes k tokens (k = 0 without a draft), the target scores them in
    one pass, `accept` keeps a prefix and adds one token. k shrinks near the end of the sample and
    of the target's window, so the target sees the same contexts as in plain cached decoding."""
    target = _CachedModel(model, context)
    drafter = _CachedModel(draft, context) if draft is not None else None
    end = len(context) + n_tokens
    while len(context) < end:
        with no_grad():
            k = 0 if drafter is None else max(0, min(n_draft, end - len(context) - 1,
                                                     target.room(context)))
            drafted, q = [], numpy.empty((k, model.config.vocab_size))
            for i in range(k):
                q[i] = distribution(drafter.scores(context + drafted)[-1], temperature, top_k)
                drafted.append(sample(q[i], rng))
            logits = target.scores(context, drafted)[-(k + 1):]                  # (k + 1, V)
        if k == 0:  # plain decoding: the same draws as sample_next
            n, token = 0, sample_next(logits[0], rng, temperature, top_k)
        else:
            n, token = accept(distribution(logits, temperature, top_k), q, drafted, rng)
        context += drafted[:n] + [token]
        target.keep(len(context) - 1)
        if drafter is not None:
            drafter.keep(len(context) - 1)
        stats.count(k, n)
        yield from context[-(n + 1):]
