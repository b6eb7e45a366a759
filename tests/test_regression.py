"""A frozen end-to-end reference: logits, loss, gradient norms and a 10-step AdamW loss curve of
a tiny GPT in float64, saved once in tests/data/. A change that moves any of them is a change in
the numbers minitx computes, and must be understood before the reference is regenerated with
`python tests/test_regression.py`."""
import json
from pathlib import Path

import numpy as np

import minitx as mx
from minitx import nn
from minitx.optim import AdamW, clip_grad_norm

REFERENCE = Path(__file__).parent / "data" / "regression_decoder_only.json"


def compute():
    mx.manual_seed(1234)
    model = nn.DecoderOnly(nn.TransformerConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2,
                                                d_model=16)).to(dtype="float64")
    rng = np.random.default_rng(99)
    x = rng.integers(0, 13, (3, 8))
    y = np.roll(x, -1, axis=1)
    logits, loss = model(x, y)
    loss.backward()
    grad_norms = {name: float(np.linalg.norm(p.grad.numpy())) for name, p in model.named_parameters()}
    opt = AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    curve = []
    for _ in range(10):
        opt.zero_grad()
        step_loss = model(x, y)[1]
        step_loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        curve.append(step_loss.item())
    return {"logits_head": logits.numpy()[0, :2, :5].tolist(), "logits_sum": float(logits.numpy().sum()),
            "loss": loss.item(), "grad_norms": grad_norms, "curve": curve}


def test_matches_the_frozen_reference():
    expected = json.loads(REFERENCE.read_text())
    got = compute()
    np.testing.assert_allclose(got["logits_head"], expected["logits_head"], rtol=1e-9)
    np.testing.assert_allclose(got["logits_sum"], expected["logits_sum"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-10)
    assert got["grad_norms"].keys() == expected["grad_norms"].keys()
    for name, norm in expected["grad_norms"].items():
        np.testing.assert_allclose(got["grad_norms"][name], norm, rtol=1e-8, err_msg=name)
    np.testing.assert_allclose(got["curve"], expected["curve"], rtol=1e-9)


if __name__ == "__main__":
    REFERENCE.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {REFERENCE}")
