"""Layers, attention and the three architectures: gradients, masks, the KV cache, bad input."""
import numpy as np
import pytest

import minitx as mx
from minitx import nn
from minitx.nn import functional as F


def tiny(**overrides):
    base = dict(vocab_size=11, block_size=12, n_layer=2, n_head=2, d_model=8, dropout=0.0)
    return nn.TransformerConfig(**{**base, **overrides})


def float64(module):
    return module.to(dtype="float64")


def ids(*shape, high=11, seed=0):
    return np.random.default_rng(seed).integers(0, high, shape)


def check_module_gradients(module, *inputs, n_directions=4, **kwargs):
    """gradcheck with respect to every parameter of `module` (and float inputs that require grad)."""
    params = module.parameters()

    def fn(*params_and_inputs):
        out = module(*inputs, **kwargs)
        return out[1] if isinstance(out, tuple) else out
    assert mx.gradcheck(fn, params, n_directions=n_directions)


# --- layers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [
    lambda: nn.Linear(5, 3), lambda: nn.Linear(5, 3, bias=False), lambda: nn.LayerNorm(5),
    lambda: nn.RMSNorm(5), lambda: nn.MLP(5, 7, "gelu"), lambda: nn.MLP(5, 7, "swiglu", bias=False)],
    ids=["linear", "linear_nobias", "layernorm", "rmsnorm", "mlp_gelu", "mlp_swiglu"])
def test_layer_gradients(layer):
    module = float64(layer())
    x = mx.randn(2, 3, 5, dtype="float64", requires_grad=True)
    assert mx.gradcheck(lambda x, *p: module(x), [x] + module.parameters())


def test_embedding_gradient_accumulates_repeated_ids():
    emb = float64(nn.Embedding(4, 3))
    tokens = np.array([[1, 1, 2], [1, 0, 0]])
    emb(tokens).sum().backward()
    np.testing.assert_allclose(emb.weight.grad.numpy()[:, 0], [2, 3, 1, 0])
    assert mx.gradcheck(lambda w: emb(tokens) * 2, [emb.weight])


def test_linear_rejects_wrong_input_width():
    with pytest.raises(ValueError, match=r"expects inputs \(\.\.\., 5\), got \(2, 4\)"):
        nn.Linear(5, 3)(mx.zeros(2, 4))


def test_module_bookkeeping():
    model = nn.DecoderOnly(tiny())
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names)) and "stack.blocks.1.attn.q.weight" in names
    assert model.n_params() == sum(p.size for p in model.parameters())
    state = model.state_dict()
    other = nn.DecoderOnly(tiny())
    other.load_state_dict(state)
    x = ids(2, 5)
    np.testing.assert_array_equal(model(x)[0].numpy(), other(x)[0].numpy())
    model.eval()
    assert not model.stack.blocks[0].mlp.drop.training
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({k: v for k, v in state.items() if "blocks.1" not in k})
    with pytest.raises(ValueError, match=r"has shape \(11, 8\), the model's \(11, 16\)"):
        nn.DecoderOnly(tiny(d_model=16)).load_state_dict(state)


# --- attention against a direct dense computation --------------------------------------------------
def dense_attention(q, k, v, visible):
    """Plain NumPy: loop over batch and heads, mask invisible keys, softmax, weighted sum."""
    B, H, Nq, D = q.shape
    group = H // k.shape[1]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            s = q[b, h] @ k[b, h // group].T / np.sqrt(D)
            s = np.where(visible[b], s, -np.inf)
            for i in range(Nq):
                if visible[b, i].any():
                    p = np.exp(s[i] - s[i].max())
                    out[b, h, i] = (p / p.sum()) @ v[b, h // group]
    return out


def visible_matrix(B, Nq, Nk, causal=False, key_mask=None, window=None, prefix=None):
    vis = np.ones((B, Nq, Nk), bool)
    for i in range(Nq):
        pos = i + Nk - Nq
        for j in range(Nk):
            ok = True
            if causal:
                ok = j <= pos
                if window is not None:
                    ok = ok and j > pos - window
                if prefix is not None:
                    ok = ok or j < prefix
            vis[:, i, j] = ok
    if key_mask is not None:
        vis &= key_mask[:, None, :]
    return vis


ATTENTION_CASES = {
    "bidirectional": dict(Nq=5, Nk=5),
    "causal": dict(Nq=6, Nk=6, causal=True),
    "cross": dict(Nq=3, Nk=7),
    "padding": dict(Nq=5, Nk=5, key_mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)),
    "padding_causal_cross": dict(Nq=2, Nk=5, causal=True, key_mask=np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], bool)),
    "window": dict(Nq=7, Nk=7, causal=True, window=3),
    "prefix_lm": dict(Nq=7, Nk=7, causal=True, prefix=3),
    "gqa": dict(Nq=5, Nk=5, causal=True, Hkv=2),
    "mqa": dict(Nq=4, Nk=6, Hkv=1),
}


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("name", sorted(ATTENTION_CASES))
def test_attention_matches_dense_computation(name, impl):
    c = dict(ATTENTION_CASES[name])
    Nq, Nk, Hkv = c.pop("Nq"), c.pop("Nk"), c.pop("Hkv", 4)
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 4, Nq, 6)), rng.standard_normal((2, Hkv, Nk, 6)), rng.standard_normal((2, Hkv, Nk, 6))
    expected = dense_attention(q, k, v, visible_matrix(2, Nq, Nk, **c))
    key_mask = c.pop("key_mask", None)
    tensors = [mx.tensor(a, dtype="float64", requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*tensors, mask=key_mask, kernels=impl, **c)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert mx.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask=key_mask, kernels=impl, **c),
                        tensors)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_causal_output_does_not_see_the_future(impl):
    """Changing tokens after t must leave the output at every position <= t unchanged."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 2, 8, 4)) for _ in range(3))
    base = F.scaled_dot_product_attention(*map(mx.tensor, (q, k, v)), causal=True, kernels=impl).numpy()
    for t in range(7):
        k2, v2 = k.copy(), v.copy()
        k2[:, :, t + 1:] += 5 * rng.standard_normal(k2[:, :, t + 1:].shape)
        v2[:, :, t + 1:] += 5 * rng.standard_normal(v2[:, :, t + 1:].shape)
        out = F.scaled_dot_product_attention(*map(mx.tensor, (q, k2, v2)), causal=True, kernels=impl).numpy()
        np.testing.assert_allclose(out[:, :, :t + 1], base[:, :, :t + 1], rtol=1e-5, atol=1e-6)
        assert not np.allclose(out[:, :, t + 1:], base[:, :, t + 1:])


def test_decoder_only_model_does_not_leak_the_future():
    model = nn.DecoderOnly(tiny())
    x = ids(1, 10)
    base = model(x)[0].numpy()
    y = x.copy()
    y[0, 6:] = (y[0, 6:] + 1) % 11
    changed = model(y)[0].numpy()
    np.testing.assert_allclose(changed[0, :6], base[0, :6], rtol=1e-5, atol=1e-6)
    assert not np.allclose(changed[0, 6:], base[0, 6:])


def test_rope_scores_depend_only_on_distance():
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((1, 1, 1, 8)), rng.standard_normal((1, 1, 1, 8))
    def score(pq, pk):
        rq = nn.apply_rope(mx.tensor(q, dtype="float64"), start=pq).numpy()
        rk = nn.apply_rope(mx.tensor(k, dtype="float64"), start=pk).numpy()
        return float((rq * rk).sum())
    assert np.isclose(score(5, 2), score(13, 10)) and not np.isclose(score(5, 2), score(5, 4))


# --- the architectures --------------------------------------------------------------------------------
ARCH_CONFIGS = {
    "pre_ln_learned": {}, "post_ln_sinusoidal": dict(norm_first=False, pos="sinusoidal"),
    "rms_rope_swiglu_gqa": dict(norm="rms", pos="rope", mlp="swiglu", n_head=4, n_kv_head=2, bias=False),
    "window": dict(window=3),
}


@pytest.mark.parametrize("variant", sorted(ARCH_CONFIGS))
def test_decoder_only_gradcheck(variant):
    model = float64(nn.DecoderOnly(tiny(**ARCH_CONFIGS[variant])))
    x = ids(2, 6)
    check_module_gradients(model, x, np.roll(x, -1, axis=1))


def test_decoder_only_prefix_lm_and_loss_mask_gradcheck():
    model = float64(nn.DecoderOnly(tiny()))
    x = ids(2, 6)
    mask = np.array([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]], bool)
    check_module_gradients(model, x, np.roll(x, -1, axis=1), loss_mask=mask, prefix=3)


def test_loss_mask_counts_only_target_positions():
    model = nn.DecoderOnly(tiny())
    x, y = ids(2, 6), ids(2, 6, seed=1)
    mask = np.zeros((2, 6), bool)
    mask[:, 4:] = True
    logits, loss = model(x, y, loss_mask=mask)
    logp = logits.numpy() - np.log(np.exp(logits.numpy()).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, y[..., None], -1)[..., 0]
    assert np.isclose(loss.item(), -picked[:, 4:].mean(), rtol=1e-5)


@pytest.mark.parametrize("pool", ["first", "mean"])
def test_encoder_only_gradcheck(pool):
    model = float64(nn.EncoderOnly(tiny(), n_classes=3, pool=pool))
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    check_module_gradients(model, ids(2, 5), np.array([0, 2]), mask=mask)


@pytest.mark.parametrize("switches", [{}, dict(share_cross_self=True), dict(share_encoder_decoder=True),
                                      dict(cross_to="same"), dict(encoder_causal=True, share_embeddings=True)],
                         ids=["plain", "share_cross_self", "share_enc_dec", "cross_to_same", "causal_encoder"])
def test_encoder_decoder_gradcheck(switches):
    cfg = nn.EncoderDecoderConfig(**{**tiny().__dict__, "src_vocab_size": 7, **switches})
    if switches.get("share_embeddings"):
        cfg.src_vocab_size = None
    model = float64(nn.EncoderDecoder(cfg))
    src = ids(2, 5, high=7)
    tgt = ids(2, 4)
    check_module_gradients(model, src, tgt, np.roll(tgt, -1, axis=1),
                           src_mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool))


def test_sharing_switches_reduce_the_parameter_count():
    counts = {}
    for name, switches in [("plain", {}), ("share_cross_self", dict(share_cross_self=True)),
                           ("share_enc_dec", dict(share_encoder_decoder=True))]:
        counts[name] = nn.EncoderDecoder(nn.EncoderDecoderConfig(**tiny().__dict__, **switches)).n_params()
    assert counts["share_cross_self"] < counts["plain"] and counts["share_enc_dec"] < counts["plain"]


# --- KV cache ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(ARCH_CONFIGS))
def test_kv_cache_decoding_equals_full_forward(variant):
    model = float64(nn.DecoderOnly(tiny(**ARCH_CONFIGS[variant])))
    x = ids(2, 9)
    full = model(x)[0].numpy()
    cache = nn.KVCache()
    with mx.no_grad():
        pieces = [model(x[:, :4], cache=cache)[0].numpy()]      # a prompt, then one token at a time
        pieces += [model(x[:, t:t + 1], cache=cache)[0].numpy() for t in range(4, 9)]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-10, atol=1e-10)


def test_kv_cache_decoding_of_encoder_decoder_equals_full_forward():
    model = float64(nn.EncoderDecoder(nn.EncoderDecoderConfig(**tiny(pos="rope").__dict__)))
    src, tgt = ids(2, 6), ids(2, 5, seed=3)
    src_mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
    memories = model.encode(src, src_mask)
    full = model.decode(tgt, memories, src_mask).numpy()
    cache = nn.KVCache()
    with mx.no_grad():
        steps = [model.decode(tgt[:, t:t + 1], memories, src_mask, cache=cache).numpy() for t in range(5)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-10)


def test_kv_cache_refuses_to_record_gradients():
    with pytest.raises(RuntimeError, match="no_grad"):
        nn.DecoderOnly(tiny())(ids(1, 3), cache=nn.KVCache())


# --- bad input --------------------------------------------------------------------------------------
def test_bad_configs_and_inputs_are_named():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_head=4"):
        tiny(d_model=10, n_head=4)
    with pytest.raises(ValueError, match="n_head=4 is not divisible by n_kv_head=3"):
        tiny(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="pos must be one of .* got 'alibi'"):
        tiny(pos="alibi")
    model = nn.DecoderOnly(tiny())
    with pytest.raises(ValueError, match="13 tokens is longer than block_size=12"):
        model(ids(1, 13))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 11\)"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match=r"key_mask|mask"):
        model(ids(2, 5), mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"loss_mask of shape \(2, 4\)"):
        model(ids(2, 5), ids(2, 5), loss_mask=np.ones((2, 4), bool))
