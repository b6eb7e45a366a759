"""Sampling text from a decoder-only model, one token at a time.

With the KV cache, the prompt is run once and every new token costs a single position of
attention over the cached keys and values; without it, every token re-runs the whole context.
Both see the same context until it fills block_size. After that the uncached path slides a
window of the last block_size tokens, and the cached path restarts its cache from the last
block_size // 2 tokens (positions must stay below block_size), so long samples can differ.
"""
import numpy

from .autograd import no_grad
from .config_check import check_sampling
from .nn import KVCache


def sample_next(logits, rng, temperature=1.0, top_k=None):
    """One token id from the scores `logits` (vocab_size,): greedy at temperature 0, otherwise
    softmax(logits / temperature) over the top_k highest scores (all when top_k is None)."""
    logits = numpy.asarray(logits, dtype=numpy.float64)
    if temperature == 0:
        return int(logits.argmax())
    if top_k is not None and top_k < len(logits):
        cutoff = numpy.partition(logits, -top_k)[-top_k]
        logits = numpy.where(logits < cutoff, -numpy.inf, logits)
    p = numpy.exp((logits - logits.max()) / temperature)
    return int(rng.choice(len(p), p=p / p.sum()))


def generate(model, ids, n_tokens, rng, temperature=1.0, top_k=None, use_cache=True):
    """Yield `n_tokens` new token ids after the prompt `ids` (a list of ints)."""
    if not ids:
        raise ValueError("generation needs a prompt of at least one token")
    check_sampling(n_tokens, temperature, top_k)
    block_size = model.config.block_size
    model.eval()
    context = list(ids)
    cache, fresh = KVCache(), context[-block_size:]  # fresh: tokens the cache has not seen
    for _ in range(n_tokens):
        with no_grad():  # (a decorator would not cover a generator's body)
            if use_cache:
                if cache.length + len(fresh) > block_size:  # positions would pass block_size
                    cache, fresh = KVCache(), context[-(block_size // 2 or 1):]
                logits = model(numpy.array([fresh]), cache=cache)[0]
            else:
                logits = model(numpy.array([context[-block_size:]]))[0]
        token = sample_next(logits.numpy()[0, -1], rng, temperature, top_k)
        context.append(token)
        fresh = [token]
        yield token
