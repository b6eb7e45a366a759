"""PyTorch as an oracle. Every op case of tests/op_cases.py: the forward and the gradient of every
input agree with PyTorch's in float64. And minitx and its PyTorch twin (tests/torch_twin.py),
loaded with the same float64 weights, agree on the logits, the loss and every parameter gradient
to 1e-8 relative, and AdamW with gradient clipping takes the same three steps."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import minitx as mx  # noqa: E402
from minitx import nn  # noqa: E402
from minitx.optim import AdamW, clip_grad_norm  # noqa: E402
from op_cases import ARG_CASES, CASES  # noqa: E402

import torch_twin  # noqa: E402  (tests/torch_twin.py)

RTOL, ATOL = 1e-8, 1e-10


@pytest.mark.filterwarnings("ignore:var... degrees of freedom is <= 0")  # PyTorch warns of a divisor <= 0
@pytest.mark.parametrize("case", [c for c in CASES if c.torch is not None], ids=repr)
def test_op_matches_torch(case):
    """Forward, then backward from one random output gradient: every input's gradient, nan and
    inf where PyTorch has them (a gradient PyTorch leaves undefined counts as zeros)."""
    rng = np.random.default_rng(5)
    arrays = case.make(rng)
    ours = [mx.tensor(a, requires_grad=True, dtype="float64") for a in arrays]
    theirs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out, expected = case.fn(*ours), case.torch_fn(torch)(*theirs)
    assert out.shape == tuple(expected.shape)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=RTOL, atol=ATOL)
    g = rng.standard_normal(out.shape)
    out.backward(np.asarray(g))
    expected.backward(torch.as_tensor(g))
    for i, (x, y) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(x.grad.numpy() if x.grad is not None else np.zeros(x.shape),
                                   y.grad.numpy() if y.grad is not None else np.zeros(x.shape),
                                   rtol=RTOL, atol=ATOL, err_msg=f"gradient of input {i}")


@pytest.mark.parametrize("shape, axis, keepdims", ARG_CASES)
def test_argmax_and_argmin_match_torch(shape, axis, keepdims):
    a = np.random.default_rng(6).standard_normal(shape)
    for name in ("argmax", "argmin"):
        expected = getattr(torch, name)(torch.tensor(a), dim=axis, keepdim=keepdims)
        np.testing.assert_array_equal(getattr(mx, name)(mx.tensor(a), dim=axis, keepdim=keepdims).numpy(),
                                      expected.numpy())


SMALL = dict(vocab_size=11, block_size=8, n_layer=2, n_head=4, d_model=16)
B, N = 3, 8
DECODER_CASES = {
    "pre-ln layer learned gelu": dict(),
    "post-ln rms sinusoidal swiglu": dict(norm_first=False, norm="rms", pos="sinusoidal", mlp="swiglu"),
    "rope gqa no-bias": dict(pos="rope", n_kv_head=2, bias=False),
    "rope multi-query post-ln": dict(pos="rope", n_kv_head=1, norm_first=False, norm="rms"),
    "sliding window": dict(window=3, mlp="swiglu"),
}


def _perturbed(model, rng):
    """The model in float64 with every parameter moved off its init (norm gains off 1, biases off
    0), so no term of the gradient vanishes by accident; loaded into minitx, returned as a state."""
    model.to(dtype="float64")
    state = {name: a + rng.normal(0, 0.1, a.shape) for name, a in model.state_dict().items()}
    model.load_state_dict(state)
    return state


def _twin(model, device):
    twin = torch_twin.from_minitx(model, device)
    assert {n for n, _ in twin.named_parameters()} == {n for n, _ in model.named_parameters()}
    return twin


def _t(a, device):
    return None if a is None else torch.as_tensor(np.asarray(a), device=device)


def _compare(model, twin, out, twin_out):
    """Logits, loss and every parameter gradient of minitx (out) and the twin (twin_out)."""
    (logits, loss), (twin_logits, twin_loss) = out, twin_out
    loss.backward()
    twin_loss.backward()
    np.testing.assert_allclose(logits.numpy(), twin_logits.detach().cpu().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(loss.item(), twin_loss.item(), rtol=RTOL)
    twin_params = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        np.testing.assert_allclose(p.grad.numpy(), twin_params[name].grad.cpu().numpy(),
                                   rtol=RTOL, atol=ATOL, err_msg=name)


def _padding(rng, lengths_from, n):
    """Boolean (B, n) key masks: True on the first `length` positions of each row."""
    lengths = rng.integers(lengths_from, n + 1, B)
    return np.arange(n)[None, :] < lengths[:, None]


def _decoder_check(overrides, device, loss_mask=False, prefix=None, mask=False):
    rng = np.random.default_rng(0)
    model = nn.DecoderOnly(nn.TransformerConfig(**{**SMALL, **overrides}))
    _perturbed(model, rng)
    model.to(device)
    twin = _twin(model, device)
    ids, targets = rng.integers(0, SMALL["vocab_size"], (2, B, N))
    lm = rng.random((B, N)) < 0.6 if loss_mask else None
    km = _padding(rng, 2, N) if mask else None
    out = model(ids, targets, loss_mask=lm, prefix=prefix, mask=km)
    twin_out = twin(_t(ids, device), _t(targets, device), loss_mask=_t(lm, device), prefix=prefix,
                    mask=_t(km, device))
    _compare(model, twin, out, twin_out)


@pytest.mark.parametrize("case", DECODER_CASES)
def test_decoder_only_matches_torch(case):
    _decoder_check(DECODER_CASES[case], "cpu")


def test_decoder_only_loss_mask_prefix_and_padding():
    _decoder_check(dict(pos="rope", n_kv_head=2), "cpu", loss_mask=True, prefix=3, mask=True)


@pytest.mark.parametrize("pool, overrides", [("first", dict()),
                                             ("mean", dict(norm_first=False, pos="rope", n_kv_head=2))])
def test_encoder_only_matches_torch(pool, overrides):
    rng = np.random.default_rng(1)
    model = nn.EncoderOnly(nn.TransformerConfig(**{**SMALL, **overrides}), n_classes=5, pool=pool)
    _perturbed(model, rng)
    twin = _twin(model, "cpu")
    ids, labels, mask = rng.integers(0, SMALL["vocab_size"], (B, N)), rng.integers(0, 5, B), _padding(rng, 2, N)
    _compare(model, twin, model(ids, labels, mask=mask), twin(_t(ids, "cpu"), _t(labels, "cpu"),
                                                             mask=_t(mask, "cpu")))


@pytest.mark.parametrize("overrides", [
    dict(src_vocab_size=13, cross_to="same", pos="rope", n_kv_head=2),
    dict(share_embeddings=True, share_cross_self=True, share_encoder_decoder=True,
         norm_first=False, norm="rms", mlp="swiglu", encoder_causal=True),
], ids=["separate weights", "all shared"])
def test_encoder_decoder_matches_torch(overrides):
    rng = np.random.default_rng(2)
    cfg = nn.EncoderDecoderConfig(**{**SMALL, **overrides})
    model = nn.EncoderDecoder(cfg)
    _perturbed(model, rng)
    twin = _twin(model, "cpu")
    M = N - 2  # source and target lengths differ: cross-attention is not square
    src = rng.integers(0, cfg.src_vocab_size or cfg.vocab_size, (B, M))
    tgt, targets = rng.integers(0, cfg.vocab_size, (2, B, N))
    src_mask = _padding(rng, 1, M)
    out = model(src, tgt, targets, src_mask=src_mask)
    twin_out = twin(_t(src, "cpu"), _t(tgt, "cpu"), _t(targets, "cpu"), src_mask=_t(src_mask, "cpu"))
    _compare(model, twin, out, twin_out)


def _adamw_check(device):
    """Three training steps (forward, backward, clip to norm 0.5, AdamW) in minitx and PyTorch."""
    lr, betas, eps, weight_decay, max_norm = 1e-2, (0.9, 0.99), 1e-8, 0.1, 0.5
    rng = np.random.default_rng(3)
    model = nn.DecoderOnly(nn.TransformerConfig(**{**SMALL, "pos": "rope", "n_kv_head": 2}))
    start = _perturbed(model, rng)
    model.to(device)
    twin = _twin(model, device)
    opt = AdamW(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    twin_opt = torch_twin.adamw(twin, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    norms = []
    for _ in range(3):
        ids, targets = rng.integers(0, SMALL["vocab_size"], (2, B, N))
        loss = model(ids, targets)[1]
        opt.zero_grad()
        loss.backward()
        norm = clip_grad_norm(model.parameters(), max_norm)
        opt.step()
        twin_loss = twin(_t(ids, device), _t(targets, device))[1]
        twin_opt.zero_grad()
        twin_loss.backward()
        twin_norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm)
        twin_opt.step()
        np.testing.assert_allclose(loss.item(), twin_loss.item(), rtol=RTOL)
        np.testing.assert_allclose(norm.item(), twin_norm.item(), rtol=RTOL)
        norms.append(norm.item())
    assert max(norms) > max_norm  # clipping did take effect
    twin_params = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        assert not np.allclose(p.numpy(), start[name]), f"{name} did not move"
        np.testing.assert_allclose(p.numpy(), twin_params[name].detach().cpu().numpy(),
                                   rtol=RTOL, atol=ATOL, err_msg=name)


def test_adamw_steps_match_torch():
    _adamw_check("cpu")


@pytest.mark.gpu
def test_decoder_only_and_adamw_match_torch_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build has no CUDA")
    for overrides in DECODER_CASES.values():
        _decoder_check(overrides, "cuda")
    _decoder_check(dict(pos="rope", n_kv_head=2), "cuda", loss_mask=True, prefix=3, mask=True)
    _adamw_check("cuda")
