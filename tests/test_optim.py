"""The optimizer through the kernel dispatch, and gradient clipping."""
import warnings

import numpy as np
import pytest

import minitx as mx
from minitx import kernels
from minitx.kernels import numba_pointwise, reference_pointwise
from minitx.optim import AdamW, clip_grad_norm


def _train(steps=4):
    """A matrix (decayed) and a bias (not), a few AdamW steps; the final parameters."""
    rng = np.random.default_rng(0)
    w = mx.nn.Parameter(rng.standard_normal((6, 5)).astype(np.float32))
    b = mx.nn.Parameter(rng.standard_normal(5).astype(np.float32))
    opt = AdamW([w, b], lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        for p in (w, b):
            p.grad = mx.Tensor(rng.standard_normal(p.shape).astype(np.float32))
        opt.step()
    return w.numpy(), b.numpy()


def test_adamw_gives_the_same_bits_with_either_kernel(monkeypatch):
    monkeypatch.delenv("MINITX_KERNELS", raising=False)
    assert kernels.choose("pointwise", np.zeros(3, np.float32)) is numba_pointwise
    fused = _train()
    monkeypatch.setenv("MINITX_KERNELS", "reference")
    assert kernels.choose("pointwise", np.zeros(3, np.float32)) is reference_pointwise
    for a, e in zip(fused, _train()):
        np.testing.assert_array_equal(a, e)


def test_adamw_kernel_falls_back_for_other_dtypes(monkeypatch):
    """float16 (which minitx's tensors never hold, but the kernel layer takes) runs the reference,
    with one warning."""
    monkeypatch.setattr(kernels, "_warned", set())
    p, g = np.ones(4, np.float16), np.full(4, 0.5, np.float16)
    m, v = np.zeros_like(p), np.zeros_like(p)
    with pytest.warns(UserWarning, match="float16"):
        kernels.adamw_update(p, g, m, v, 1e-2, 0.9, 0.99, 1e-4, 0.0, 1, kernels="fused")
    expected = reference_pointwise.adamw_update(np.ones(4, np.float16), g, np.zeros_like(p),
                                                np.zeros_like(p), 1e-2, 0.9, 0.99, 1e-4, 0.0, 1)
    np.testing.assert_array_equal(p, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.adamw_update(p, g, m, v, 1e-2, 0.9, 0.99, 1e-4, 0.0, 2, kernels="fused")


@pytest.mark.parametrize("max_norm, clipped", [(1.0, True), (100.0, False)])
def test_clip_grad_norm_returns_the_norm_and_scales_in_place(max_norm, clipped):
    rng = np.random.default_rng(1)
    params = [mx.nn.Parameter(np.zeros(shape, np.float32)) for shape in [(3, 4), (4,), (2, 3)]]
    for p in params:
        p.grad = mx.Tensor(rng.standard_normal(p.shape).astype(np.float32))
    params[2].grad = mx.Tensor(rng.standard_normal((3, 2)).astype(np.float32).T)  # not contiguous
    grads = [p.grad.data for p in params]
    before = [g.copy() for g in grads]
    norm = clip_grad_norm(params, max_norm)
    expected = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in before))
    assert norm.shape == () and norm.dtype == np.float32
    np.testing.assert_allclose(norm.item(), expected, rtol=1e-6)
    scale = max_norm / (expected + 1e-6) if clipped else 1.0
    for p, g, b in zip(params, grads, before):
        assert p.grad.data is g                                 # the same arrays, scaled in place
        np.testing.assert_allclose(g, b * scale, rtol=1e-6)
