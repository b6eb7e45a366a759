"""Speculative decoding: KVCache.truncate, greedy exactness against the target alone, and a
chi-square test that sampled tokens follow the target's exact distribution (and that a wrong
acceptance rule fails it)."""
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import chi2

import minitx as mx
from minitx import nn
from minitx.__main__ import main
from minitx.generate import SpeculationStats, distribution, generate, sample, speculative_accept


def decoder(seed, **overrides):
    base = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, d_model=16, dropout=0.0)
    mx.manual_seed(seed)
    return nn.DecoderOnly(nn.TransformerConfig(**{**base, **overrides})).to(dtype="float64").eval()


# --- KVCache.truncate -------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{}, dict(pos="rope", n_head=4, n_kv_head=2, norm="rms")])
def test_truncate_then_new_tokens_equals_full_forward(overrides):
    model = decoder(0, **overrides)
    rng = np.random.default_rng(0)
    old, new = rng.integers(0, 11, (2, 10)), rng.integers(0, 11, (2, 4))
    cache = nn.KVCache()
    with mx.no_grad():
        model(old, cache=cache)
        buffers = [entry[0] for entry in cache._entries.values()]
        cache.truncate(6)
        logits = model(new, cache=cache)[0].numpy()
        full = model(np.concatenate([old[:, :6], new], axis=1))[0].numpy()
    assert cache.length == 10
    assert all(entry[0] is kept for entry, kept in zip(cache._entries.values(), buffers))  # in place
    np.testing.assert_allclose(logits, full[:, 6:], rtol=1e-10, atol=1e-10)


def test_truncate_keeps_cross_attention_of_an_encoder_decoder():
    mx.manual_seed(0)
    model = nn.EncoderDecoder(nn.EncoderDecoderConfig(vocab_size=11, block_size=12, n_layer=2,
                                                      n_head=2, d_model=8)).to(dtype="float64")
    rng = np.random.default_rng(1)
    src, tgt, other = rng.integers(0, 11, (1, 5)), rng.integers(0, 11, (1, 6)), rng.integers(0, 11, (1, 3))
    memories = model.encode(src)
    cache = nn.KVCache()
    with mx.no_grad():
        model.decode(tgt, memories, cache=cache)
        cache.truncate(2)
        logits = model.decode(other, memories, cache=cache).numpy()
    full = model.decode(np.concatenate([tgt[:, :2], other], axis=1), memories).numpy()
    np.testing.assert_allclose(logits, full[:, 2:], rtol=1e-10, atol=1e-10)


def test_truncate_refuses_lengths_outside_the_cache():
    cache = nn.KVCache()
    with mx.no_grad():
        decoder(0)(np.array([[1, 2, 3]]), cache=cache)
    for n in (-1, 4):
        with pytest.raises(ValueError, match="0..3 tokens"):
            cache.truncate(n)


# --- greedy: exactly the target's own output --------------------------------------------------------
def perturbed(model, seed, scale=0.02):
    """A copy of `model` with noise on every weight: a draft that agrees often, not always."""
    copy = decoder(seed, **{k: getattr(model.config, k) for k in ("n_layer", "n_head", "d_model")})
    noise = np.random.default_rng(seed)
    copy.load_state_dict({name: a + scale * noise.normal(size=a.shape)
                          for name, a in model.state_dict().items()})
    return copy.eval()


@pytest.mark.parametrize("prompt", [[1], [3, 4, 5, 6], list(range(11)) + [2, 7, 1]])
def test_greedy_speculative_output_is_the_targets_greedy_output(prompt):
    target = decoder(0)
    drafts = {"small": decoder(1, n_layer=1, n_head=1, d_model=8, block_size=8),
              "perturbed": perturbed(target, 2), "itself": target}
    expected = list(generate(target, prompt, 40, np.random.default_rng(0), temperature=0))
    rates = {}
    for (name, draft), k in itertools.product(drafts.items(), (1, 3, 8)):
        stats = SpeculationStats()
        out = list(generate(target, prompt, 40, np.random.default_rng(k), temperature=0,
                            draft=draft, n_draft=k, stats=stats))
        assert out == expected, (name, k)
        assert stats.tokens == 40
        rates[name, k] = stats.acceptance_rate
    # 40 tokens pass block_size=16: the windows restart, and the perturbed copy still mostly agrees
    assert all(rates["itself", k] == 1 for k in (1, 3, 8))
    assert 0.4 < rates["perturbed", 3] < 1


def test_bad_arguments_are_named():
    target, draft = decoder(0), decoder(1, vocab_size=12)
    run = lambda **kw: list(generate(target, [1, 2], 5, np.random.default_rng(0), **kw))
    with pytest.raises(ValueError, match="n_draft must be >= 1, got 0"):
        run(draft=target, n_draft=0)
    with pytest.raises(ValueError, match=r"vocabulary \(12 tokens\) differs from the target's \(11\)"):
        run(draft=draft)
    with pytest.raises(ValueError, match="needs the KV cache"):
        run(draft=target, use_cache=False)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        run(top_k=0)


# --- sampling: exactly the target's distribution ----------------------------------------------------
class TableLM:
    """A random language model over a tiny vocabulary with DecoderOnly's calling convention, fast
    enough for tens of thousands of samples: the logits at position i are a random table's row for
    (i, token i - 1, token i). It keeps its past tokens in a real KVCache, so a cache rolled back to
    the wrong length or with stale tokens changes what it predicts."""

    def __init__(self, seed, vocab_size=8, block_size=16, scale=1.5):
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=block_size)
        self.table = np.random.default_rng(seed).normal(0, scale, (block_size,) + (vocab_size,) * 3)

    def eval(self):
        return self

    def __call__(self, ids, cache=None):
        start = cache.length if cache is not None else 0
        tokens = ids
        if cache is not None:  # the whole history, as one-dimensional "keys" (B, 1, start + N, 1)
            keys, _ = cache.update(self, *[mx.tensor(ids[:, None, :, None], dtype="float64")] * 2)
            tokens = keys.numpy()[:, 0, :, 0].astype(int)
            cache.length += ids.shape[1]
        pos = np.arange(start, start + ids.shape[1])
        previous = np.where(pos > 0, tokens[:, pos - 1], 0)
        return mx.tensor(self.table[pos, previous, tokens[:, pos]]), None      # (B, N, V)


def exact_distribution(model, prompt, n, temperature, top_k):
    """Probability of each continuation of n tokens (V**n,), enumerated with full forward passes."""
    V = model.config.vocab_size
    continuations = np.array(list(itertools.product(range(V), repeat=n)))    # (V**n, n)
    ids = np.concatenate([np.tile(prompt, (len(continuations), 1)), continuations], axis=1)
    with mx.no_grad():
        logits = model(ids)[0].numpy()[:, len(prompt) - 1:-1]                 # (V**n, n, V)
    p = distribution(logits, temperature, top_k)
    return np.take_along_axis(p, continuations[..., None], axis=2)[..., 0].prod(axis=1)


def chi_square_p_value(draws, probabilities, min_expected=5):
    """p-value of the draws (indices into probabilities) under `probabilities`; cells expected
    fewer than min_expected times are pooled into one."""
    observed = np.bincount(draws, minlength=len(probabilities))
    expected = probabilities * len(draws)
    small = expected < min_expected
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    statistic = ((observed - expected) ** 2 / expected).sum()
    return chi2.sf(statistic, len(observed) - 1)


def always_accept(p, q, drafted, rng):
    """A wrong rule: keeps every draft, so drafted tokens follow the draft's distribution."""
    return len(drafted), sample(p[-1], rng)


def speculative_p_value(target, draft, accept, n_draws, temperature=1.0, top_k=None, n=3, n_draft=2):
    """Draw the first n tokens speculatively n_draws times; the chi-square p-value against the
    target's exact distribution of them (n > n_draft + 1, so every draw takes two rounds or more)."""
    prompt, rng, V = [1, 2], np.random.default_rng(0), target.config.vocab_size
    draws = [np.ravel_multi_index(list(generate(target, prompt, n, rng, temperature, top_k, draft=draft,
                                                n_draft=n_draft, accept=accept)), (V,) * n)
             for _ in range(n_draws)]
    return chi_square_p_value(np.array(draws), exact_distribution(target, prompt, n, temperature, top_k))


@pytest.mark.parametrize("accept", [speculative_accept, always_accept])
def test_speculative_samples_follow_the_targets_distribution_and_a_wrong_rule_does_not(accept):
    p_value = speculative_p_value(TableLM(seed=0), TableLM(seed=1), accept, 20_000, n=4)
    assert p_value > 1e-3 if accept is speculative_accept else p_value < 1e-6


def test_temperature_and_top_k_apply_to_both_models():
    p_value = speculative_p_value(TableLM(seed=0), TableLM(seed=1), speculative_accept, 10_000,
                                  temperature=0.7, top_k=5, n=4)
    assert p_value > 1e-3


@pytest.mark.slow
def test_speculative_samples_of_real_transformers_follow_the_targets_distribution():
    target = decoder(0, vocab_size=8, block_size=8, d_model=16)
    draft = decoder(1, vocab_size=8, block_size=8, n_layer=1, n_head=1, d_model=8)
    with mx.no_grad():  # random weights are nearly uniform: sharpen both so they disagree
        for model in (target, draft):
            model.embed.tokens.weight.data *= 40
    assert speculative_p_value(target, draft, speculative_accept, 20_000) > 1e-3
    assert speculative_p_value(target, draft, always_accept, 20_000) < 1e-6


# --- the command line -------------------------------------------------------------------------------
def test_sample_with_a_draft_run_prints_the_same_greedy_text_and_the_acceptance_rate(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40)
    common = ["--data", str(corpus), "--block-size", "16", "--batch-size", "4", "--max-iters", "30",
              "--eval-iters", "1", "--sample-tokens", "0", "--quiet"]
    for name, size in (("target", ["--n-layer", "2", "--d-model", "32"]),
                       ("draft", ["--n-layer", "1", "--d-model", "16"])):
        assert main(["train", "--out-dir", str(tmp_path / name), "--n-head", "2", *size, *common]) == 0
    capsys.readouterr()
    sample = ["sample", "--run", str(tmp_path / "target"), "--prompt", "First", "--tokens", "30",
              "--temperature", "0"]
    assert main(sample) == 0
    plain = capsys.readouterr().out
    assert main([*sample, "--draft-run", str(tmp_path / "draft"), "--n-draft", "3"]) == 0
    out = capsys.readouterr()
    assert out.out == plain
    assert "acceptance rate" in out.err and "plain cached decoding" in out.err and "tokens/s" in out.err

    other = tmp_path / "other.txt"
    other.write_text("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ:,.\n" * 40)
    assert main(["train", "--out-dir", str(tmp_path / "other"), "--n-layer", "1", "--n-head", "2",
                 "--d-model", "16", *common[2:], "--data", str(other)]) == 0
    capsys.readouterr()
    assert main([*sample, "--draft-run", str(tmp_path / "other")]) == 1
    assert "has another tokenizer" in capsys.readouterr().err
