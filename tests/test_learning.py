"""Each architecture learns a small task in seconds: the whole stack trains, not just passes gradchecks."""
import numpy as np

import minitx as mx
from minitx import nn
from minitx.optim import AdamW


def train(model, batch_fn, steps, lr=3e-3):
    opt = AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        opt.zero_grad()
        loss = model(*batch_fn(step))[1]
        loss.backward()
        opt.step()
    return loss.item()


def small(vocab_size, block_size, **kw):
    return dict(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, d_model=32, **kw)


def test_decoder_only_overfits_a_short_text():
    text = "to be or not to be, that is the question."
    chars = sorted(set(text))
    data = np.array([[chars.index(c) for c in text]])
    model = nn.DecoderOnly(nn.TransformerConfig(**small(len(chars), len(text))))
    loss = train(model, lambda _: (data[:, :-1], data[:, 1:]), steps=150, lr=1e-2)
    assert loss < 0.05


def test_encoder_decoder_learns_to_reverse_digit_strings():
    rng = np.random.default_rng(0)
    BOS, n = 10, 6

    def batch(_):
        src = rng.integers(0, 10, (32, n))
        tgt = src[:, ::-1]
        return src, np.concatenate([np.full((32, 1), BOS), tgt[:, :-1]], axis=1), tgt

    model = nn.EncoderDecoder(nn.EncoderDecoderConfig(**small(11, n + 1)))
    train(model, batch, steps=300, lr=3e-3)

    src = rng.integers(0, 10, (200, n))                 # fresh strings, decoded greedily
    memories = model.encode(src)
    out = np.full((200, 1), BOS)
    with mx.no_grad():
        for _ in range(n):
            logits = model.decode(out, memories).numpy()
            out = np.concatenate([out, logits[:, -1].argmax(-1)[:, None]], axis=1)
    exact = (out[:, 1:] == src[:, ::-1]).all(axis=1).mean()
    assert exact > 0.9, f"only {exact:.0%} of strings reversed exactly"


def test_encoder_only_learns_majority_above_95_percent():
    rng = np.random.default_rng(1)
    n = 9

    def batch(_):
        x = rng.integers(0, 2, (64, n))
        return x, (x.sum(axis=1) > n // 2).astype(np.int64)

    model = nn.EncoderOnly(nn.TransformerConfig(**small(2, n)), n_classes=2, pool="mean")
    train(model, batch, steps=200, lr=3e-3)
    x = rng.integers(0, 2, (1000, n))
    with mx.no_grad():
        accuracy = (model(x)[0].numpy().argmax(-1) == (x.sum(axis=1) > n // 2)).mean()
    assert accuracy > 0.95, f"accuracy {accuracy:.1%}"
