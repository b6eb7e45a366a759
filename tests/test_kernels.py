"""Attention kernels: the reference against a plain loop and finite differences, every fused
kernel against the reference, bad inputs and dispatch. (What the CUDA kernels ask of a GPU:
tests/test_kernel_resources.py.)"""
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from minitx import backend, kernels
from minitx.kernels import (cupy_attention, dropout_mask, numba_attention, numba_attention_short,
                            numba_pointwise, reference, reference_pointwise)

FUSED = [   # (fused kernel module, device of its arrays); on CPU-only machines the CUDA
            # kernels run on the CuPy stand-in (MINITX_FAKE_CUPY=1), their blocks emulated
    pytest.param((numba_attention, "cpu"), id="numba"),
    pytest.param((numba_attention_short, "cpu"), id="numba-short"),
    pytest.param((cupy_attention, "cuda"), id="cupy", marks=pytest.mark.gpu),
]
MODULES = [reference, numba_attention, numba_attention_short, cupy_attention]


# ---------------------------------------------------------------------------------------------
# inputs

def key_mask_with_padding(B, Nk, rng):
    """Right-padded key mask: batch row 0 keeps ~2/3 of its keys, the last row is all padding."""
    mask = np.ones((B, Nk), dtype=bool)
    mask[0, max(1, 2 * Nk // 3):] = False
    mask[-1] = False
    if B > 2:
        mask[1, rng.integers(0, Nk, size=Nk // 4)] = False   # scattered holes too
    return mask


def make_inputs(B, H, Hkv, Nq, Nk, D, dtype=np.float64, seed=0, noncontiguous=False,
                spread=1.0):
    """q, k, v, do; with noncontiguous=True they are strided views, not fresh arrays."""
    rng = np.random.default_rng(seed)

    def draw(heads, n):
        if noncontiguous:   # (B, N, H, 2D) storage viewed as (B, H, N, D): permuted and strided
            storage = rng.standard_normal((B, n, heads, 2 * D)).astype(dtype)
            return storage.transpose(0, 2, 1, 3)[..., ::2]
        return rng.standard_normal((B, heads, n, D)).astype(dtype)

    q, k, v, do = draw(H, Nq) * dtype(spread), draw(Hkv, Nk), draw(Hkv, Nk), draw(H, Nq)
    return q, k, v, do


# name, (B, H, Hkv, Nq, Nk, D), options; key_mask=True means "use key_mask_with_padding"
CASES = [
    ("plain", (2, 4, 4, 37, 37, 16), dict()),
    ("causal", (2, 4, 4, 130, 130, 16), dict(causal=True)),
    ("padding", (3, 2, 2, 70, 70, 8), dict(key_mask=True)),
    ("causal-padding", (3, 2, 2, 70, 70, 8), dict(causal=True, key_mask=True)),
    ("cross-Nq<Nk", (2, 2, 2, 23, 130, 16), dict()),
    ("cross-Nq>Nk", (2, 2, 2, 130, 23, 16), dict(key_mask=True)),
    ("causal-Nq<Nk", (2, 2, 2, 23, 130, 16), dict(causal=True)),
    ("causal-Nq>Nk", (2, 2, 2, 130, 23, 16), dict(causal=True)),   # early rows see no key
    ("window", (2, 2, 2, 130, 130, 16), dict(causal=True, window=20)),
    ("window-prefix-padding", (3, 2, 1, 100, 100, 8), dict(causal=True, window=7, prefix=30,
                                                           key_mask=True)),
    ("prefix", (2, 2, 2, 130, 130, 16), dict(causal=True, prefix=70)),
    ("window-prefix>N", (1, 2, 2, 40, 40, 8), dict(causal=True, window=10**12, prefix=10**12)),
    ("gqa-4:2", (2, 4, 2, 70, 70, 16), dict(causal=True)),
    ("gqa-causal-Nq<Nk", (2, 4, 2, 45, 70, 16), dict(causal=True)),   # query blocks end mid-way
    ("gqa-4:1", (2, 4, 1, 70, 90, 16), dict(key_mask=True)),
    ("odd-D", (1, 3, 3, 67, 67, 7), dict(causal=True, scale=0.3)),
    ("N=1", (2, 2, 2, 1, 1, 16), dict(causal=True)),
    ("decode", (2, 4, 2, 1, 70, 16), dict(causal=True, key_mask=True)),   # one query, KV cache
    ("large-scores", (1, 2, 2, 70, 70, 16), dict(causal=True, spread=40.0)),
    # the head sizes of real models; row counts that end tiles and thread blocks mid-way
    ("D=32", (2, 2, 1, 45, 45, 32), dict(causal=True, key_mask=True)),
    ("D=64", (1, 2, 2, 37, 50, 64), dict(causal=True)),
    ("D=128", (1, 2, 1, 33, 21, 128), dict(key_mask=True)),
    # bias=shape: a random additive bias of that shape (broadcast to (B, H, Nq, Nk))
    ("bias-per-head", (2, 4, 2, 70, 130, 16), dict(causal=True, bias=(4, 70, 130))),
    ("bias-per-key-padding", (3, 2, 2, 70, 70, 8), dict(key_mask=True, bias=(3, 1, 1, 70))),
    ("dropout-causal", (2, 2, 2, 130, 130, 16), dict(causal=True, dropout=0.2, seed=11)),
    ("bias-dropout-gqa-window", (2, 4, 1, 70, 90, 16), dict(causal=True, window=30, bias=(70, 90),
                                                             dropout=0.5, seed=12)),
    # several of the flash kernel's blocks (up to 256 rows and keys) in each direction
    ("long-causal", (1, 2, 2, 600, 600, 8), dict(causal=True)),
    ("long-window-prefix-padding", (2, 2, 1, 530, 530, 8), dict(causal=True, window=300,
                                                                 prefix=270, key_mask=True)),
    ("long-cross", (1, 2, 2, 300, 530, 8), dict(key_mask=True)),
    ("long-bias-dropout", (1, 2, 1, 300, 530, 8), dict(key_mask=True, bias=(300, 530),
                                                       dropout=0.3, seed=4)),
]


def case_inputs(shape, options, dtype, noncontiguous=False, seed=0):
    options = dict(options)
    spread = options.pop("spread", 1.0)
    q, k, v, do = make_inputs(*shape, dtype=dtype, seed=seed, noncontiguous=noncontiguous,
                              spread=spread)
    if options.get("key_mask"):
        options["key_mask"] = key_mask_with_padding(shape[0], shape[4], np.random.default_rng(1))
    if "bias" in options:
        options["bias"] = np.random.default_rng(2).standard_normal(options["bias"]).astype(dtype)
    return (q, k, v, do), options


def assert_close(actual, expected, dtype, name):
    """float64: 1e-10 relative or absolute. float32: 1e-4 relative; an entry near zero is judged
    against max(1, largest entry), since float32 rounds relative to the O(1) numbers summed."""
    if dtype == np.float64:
        tol = dict(rtol=1e-10, atol=1e-10)
    else:
        finite = expected[np.isfinite(expected)]
        tol = dict(rtol=1e-4, atol=1e-4 * np.abs(finite).max(initial=1))
    assert actual.dtype == dtype, f"{name}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, err_msg=name, **tol)


# ---------------------------------------------------------------------------------------------
# the reference against a plain loop, written from the rules with no shared code

def loop_attention(q, k, v, causal=False, key_mask=None, window=None, prefix=None, scale=None,
                   bias=None, dropout=0.0, seed=0):
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(D) if scale is None else scale
    bias = np.zeros((B, H, Nq, Nk)) if bias is None else np.broadcast_to(bias, (B, H, Nq, Nk))
    keep = dropout_mask.keep_mask((B, H, Nq, Nk), dropout, seed)
    o = np.zeros(q.shape)
    lse = np.full((B, H, Nq), -np.inf)
    for b in range(B):
        for h in range(H):
            kv = h // (H // Hkv)
            for i in range(Nq):
                pos = i + Nk - Nq
                keys = []
                for j in range(Nk):
                    if key_mask is not None and not key_mask[b, j]:
                        continue
                    if causal:
                        in_window = j <= pos and (window is None or j > pos - window)
                        in_prefix = prefix is not None and j < prefix
                        if not (in_window or in_prefix):
                            continue
                    keys.append(j)
                if not keys:
                    continue
                s = np.array([scale * np.dot(q[b, h, i], k[b, kv, j]) + bias[b, h, i, j]
                              for j in keys])
                w = np.exp(s - s.max())
                lse[b, h, i] = s.max() + math.log(w.sum())
                kept = keep[b, h, i, keys] / (1 - dropout)
                o[b, h, i] = (w / w.sum() * kept) @ v[b, kv, keys]
    return o, lse


LOOP_CASES = [
    ("plain", (2, 2, 2, 9, 9, 4), dict()),
    ("causal-cross", (2, 2, 2, 5, 11, 4), dict(causal=True)),
    ("causal-Nq>Nk", (1, 2, 2, 11, 5, 4), dict(causal=True)),
    ("window-prefix-padding", (3, 4, 2, 12, 12, 4), dict(causal=True, window=3, prefix=4,
                                                         key_mask=True)),
    ("gqa-padding", (3, 4, 1, 6, 10, 4), dict(key_mask=True, scale=0.7)),
    ("large-scores", (1, 2, 2, 8, 8, 4), dict(causal=True, spread=300.0)),
    ("bias-dropout-gqa", (2, 4, 2, 6, 9, 4), dict(causal=True, key_mask=True, bias=(4, 6, 9),
                                                  dropout=0.3, seed=5)),
]


@pytest.mark.parametrize("name, shape, options", LOOP_CASES, ids=[c[0] for c in LOOP_CASES])
def test_reference_matches_loop(name, shape, options):
    (q, k, v, _), options = case_inputs(shape, options, np.float64)
    o, lse = reference.attention_forward(q, k, v, **options)
    o_loop, lse_loop = loop_attention(q, k, v, **options)
    assert np.isfinite(o).all()
    np.testing.assert_allclose(o, o_loop, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, lse_loop, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", [dict(), dict(causal=True, window=2, prefix=1, key_mask=True),
                                     dict(causal=True)], ids=["plain", "masked", "causal-Nq>Nk"])
def test_reference_backward_matches_finite_differences(options):
    """Full Jacobian of L = sum(o * do) by central differences, float64, small sizes."""
    B, H, Hkv, Nq, Nk, D = (2, 2, 1, 4, 4, 3) if "key_mask" in options else (1, 2, 1, 5, 3, 3)
    (q, k, v, do), options = case_inputs((B, H, Hkv, Nq, Nk, D), options, np.float64, seed=3)
    o, lse = reference.attention_forward(q, k, v, **options)
    grads = reference.attention_backward(q, k, v, o, lse, do, **options)
    eps = 1e-6
    for name, x, grad in zip("qkv", (q, k, v), grads):
        numeric = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            saved = x[index]
            x[index] = saved + eps
            plus = np.sum(reference.attention_forward(q, k, v, **options)[0] * do)
            x[index] = saved - eps
            minus = np.sum(reference.attention_forward(q, k, v, **options)[0] * do)
            x[index] = saved
            numeric[index] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=f"d{name}")


def test_reference_bias_gradient_matches_finite_differences():
    """dbias (B, H, Nq, Nk), summed to a per-head bias (H, Nq, Nk), with dropout on as well."""
    (q, k, v, do), options = case_inputs((2, 2, 1, 4, 5, 3), dict(causal=True, bias=(2, 4, 5),
                                                                   dropout=0.4, seed=3),
                                         np.float64, seed=4)
    bias = options["bias"]
    o, lse = reference.attention_forward(q, k, v, **options)
    dbias = reference.attention_backward(q, k, v, o, lse, do, **options)[3].sum(axis=0)
    numeric = np.zeros_like(bias)
    for index in np.ndindex(bias.shape):
        saved = bias[index]
        bias[index] = saved + 1e-6
        plus = np.sum(reference.attention_forward(q, k, v, **options)[0] * do)
        bias[index] = saved - 1e-6
        minus = np.sum(reference.attention_forward(q, k, v, **options)[0] * do)
        bias[index] = saved
        numeric[index] = (plus - minus) / 2e-6
    np.testing.assert_allclose(dbias, numeric, rtol=1e-6, atol=1e-8)


def test_dropout_mask_keeps_the_asked_fraction_and_depends_on_the_seed():
    keep = dropout_mask.keep_mask((4, 8, 64, 64), 0.3, seed=1)
    assert abs(keep.mean() - 0.7) < 0.01
    assert (keep != dropout_mask.keep_mask((4, 8, 64, 64), 0.3, seed=2)).mean() > 0.3
    assert dropout_mask.keep_mask((2, 3), 0.0, seed=5).all()


# ---------------------------------------------------------------------------------------------
# fused kernels against the reference

def run_both(implementation, inputs, options):
    """Reference results and those of `implementation` = (module, device): (o, lse, dq, dk, dv)
    each, as numpy arrays."""
    module, device = implementation
    q, k, v, do = inputs
    o, lse = reference.attention_forward(q, k, v, **options)
    expected = (o, lse) + reference.attention_backward(q, k, v, o, lse, do, **options)
    q, k, v, do = (backend.move_array(a, device) for a in inputs)
    for name in ("key_mask", "bias"):
        if options.get(name) is not None:
            options = dict(options, **{name: backend.move_array(options[name], device)})
    o, lse = module.attention_forward(q, k, v, **options)
    actual = (o, lse) + tuple(module.attention_backward(q, k, v, o, lse, do, **options))
    return expected, [backend.move_array(a, "cpu") for a in actual]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name, shape, options", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("implementation", FUSED)
def test_fused_matches_reference(implementation, name, shape, options, dtype):
    if implementation[0] in kernels.WITHOUT_BIAS_OR_DROPOUT and {"bias", "dropout"} & options.keys():
        pytest.skip("this kernel has no bias or dropout: kernels/ gives such calls to another")
    inputs, options = case_inputs(shape, options, dtype)
    expected, actual = run_both(implementation, inputs, options)
    assert len(actual) == len(expected)
    for label, a, e in zip(("o", "lse", "dq", "dk", "dv", "dbias"), actual, expected):
        assert not np.isnan(a).any(), f"{label} has NaN"
        assert_close(a, e, dtype, label)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 1e-6)],
                         ids=["f64", "f32"])
def test_numba_exp_matches_numpy(dtype, rtol):
    """The CPU kernel's own exp: close to np.exp over [-87, 0], 0 below, NaN kept, exact 1 at 0."""
    rng = np.random.default_rng(0)
    t = np.concatenate([-rng.uniform(0, 87, 5000), -rng.uniform(0, 1, 1000), np.arange(-87, 1),
                        [0.0, -86.99, -87.01, -200.0, -np.inf, np.nan]]).astype(dtype)
    shift = rng.standard_normal(t.size).astype(dtype)       # x - shift = t, row by row
    x = (t + shift)[None]
    t = x[0] - shift                                          # t as the kernel will see it
    numba_attention._exp_shifted(x, shift, *numba_attention.exp_constants(np.dtype(dtype)))
    kept = t >= -87
    np.testing.assert_allclose(x[0][kept], np.exp(t[kept].astype(np.float64)), rtol=rtol, atol=0)
    assert (x[0][t < -87] == 0).all() and np.isnan(x[0][np.isnan(t)]).all()
    assert x.dtype == dtype


@pytest.mark.parametrize("implementation", FUSED)
def test_fused_noncontiguous_inputs(implementation):
    inputs, options = case_inputs((2, 4, 2, 70, 70, 16), dict(causal=True, key_mask=True),
                                  np.float64, noncontiguous=True)
    assert not inputs[0].flags.c_contiguous and not inputs[1].flags.c_contiguous
    expected, actual = run_both(implementation, inputs, options)
    for label, a, e in zip(("o", "lse", "dq", "dk", "dv"), actual, expected):
        assert_close(a, e, np.float64, label)


@pytest.mark.parametrize("implementation", [pytest.param((reference, "cpu"), id="reference")]
                         + FUSED)
def test_rows_without_keys_are_zero(implementation):
    """Fully padded batch row and causal queries before the first key: o = 0, lse = -inf,
    zero gradients, and no NaN anywhere."""
    (q, k, v, do), _ = case_inputs((2, 2, 2, 9, 6, 4), dict(), np.float64)
    mask = np.ones((2, 6), dtype=bool)
    mask[1] = False
    _, actual = run_both(implementation, (q, k, v, do), dict(causal=True, key_mask=mask))
    o, lse, dq, dk, dv = actual
    assert not any(np.isnan(a).any() for a in actual)
    hidden = np.zeros((2, 2, 9), dtype=bool)
    hidden[1] = True                    # every query of batch row 1
    hidden[:, :, :3] = True             # queries 0..2 sit at positions -3..-1
    assert (lse[hidden] == -np.inf).all() and np.isfinite(lse[~hidden]).all()
    assert (o[hidden] == 0).all() and (dq[hidden] == 0).all()
    assert (dk[1] == 0).all() and (dv[1] == 0).all()


# ---------------------------------------------------------------------------------------------
# bad inputs: the same ValueError from every implementation (validation happens before any
# kernel or cupy is touched)

def _bad(q=(2, 4, 8, 16), k=(2, 2, 8, 16), v=None, **options):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in (q, k, v or k)]
    return arrays, options


BAD = [
    ("rank", _bad(q=(4, 8, 16)), "rank 4"),
    ("k-v-shape", _bad(v=(2, 2, 9, 16)), "same shape"),
    ("batch", _bad(k=(3, 2, 8, 16)), "batch size"),
    ("head-size", _bad(k=(2, 2, 8, 15)), "head size"),
    ("heads", _bad(k=(2, 3, 8, 16)), "multiple"),
    ("mask-shape", _bad(key_mask=np.ones((2, 7), dtype=bool)), "(2, 8)"),
    ("mask-dtype", _bad(key_mask=np.ones((2, 8))), "bool"),
    ("window-not-causal", _bad(window=3), "causal"),
    ("window-zero", _bad(causal=True, window=0), ">= 1"),
    ("prefix-not-causal", _bad(prefix=2), "causal"),
    ("prefix-negative", _bad(causal=True, prefix=-1), ">= 0"),
]
BAD_BIAS_OR_DROPOUT = [   # options the CUDA kernels never see (kernels/ hands them to the reference)
    ("bias-shape", _bad(bias=np.zeros((3, 8, 8))), "does not broadcast"),
    ("bias-dtype", _bad(bias=np.zeros((8, 8), np.float32)), "dtype of q"),
    ("dropout-one", _bad(dropout=1.0), "[0, 1)"),
]


@pytest.mark.parametrize("module", MODULES, ids=["reference", "numba", "numba-short", "cupy"])
@pytest.mark.parametrize("name, bad, message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(module, name, bad, message):
    (q, k, v), options = bad
    with pytest.raises(ValueError, match=re.escape(message)):
        module.attention_forward(q, k, v, **options)


@pytest.mark.parametrize("module", [reference, numba_attention], ids=["reference", "numba"])
@pytest.mark.parametrize("name, bad, message", BAD_BIAS_OR_DROPOUT, ids=[b[0] for b in BAD_BIAS_OR_DROPOUT])
def test_bad_bias_or_dropout(module, name, bad, message):
    test_bad_inputs(module, name, bad, message)


def test_bad_backward_shapes():
    (q, k, v, do), _ = case_inputs((1, 2, 2, 5, 5, 4), dict(), np.float64)
    o, lse = reference.attention_forward(q, k, v)
    with pytest.raises(ValueError, match="lse"):
        kernels.attention_backward(q, k, v, o, lse[..., :-1], do)
    with pytest.raises(ValueError, match="do"):
        kernels.attention_backward(q, k, v, o, lse, do[:, :, :-1])


# ---------------------------------------------------------------------------------------------
# dispatch

def test_dispatch(monkeypatch):
    q = np.zeros((1, 1, 2, 4))
    short_keys = kernels.FUSED_MIN_SIZE[("attention", "cpu")]
    long_keys = kernels.SHORT_BELOW[("attention", "cpu")][0]
    monkeypatch.delenv("MINITX_KERNELS", raising=False)
    assert kernels.choose("attention", q, long_keys) is numba_attention          # flash
    assert kernels.choose("attention", q, long_keys - 1) is numba_attention_short
    assert kernels.choose("attention", q, short_keys) is numba_attention_short
    assert kernels.choose("attention", q, short_keys - 1) is reference   # few keys: reference wins
    assert kernels.choose("attention", q, 2, "fused") is numba_attention_short
    assert kernels.choose("attention", q, long_keys, "fused") is numba_attention
    assert kernels.choose("attention", q, long_keys, "reference") is reference
    assert kernels.choose("pointwise", q, 1) is numba_pointwise          # no minimum size
    monkeypatch.setenv("MINITX_KERNELS", "reference")                    # one switch for all
    assert kernels.choose("attention", q, long_keys) is reference
    assert kernels.choose("pointwise", q, 1) is reference_pointwise
    assert kernels.choose("attention", q, 2, "fused") is numba_attention_short   # explicit wins
    monkeypatch.setenv("MINITX_KERNELS", "fused")
    assert kernels.choose("attention", q, 2) is numba_attention_short
    assert kernels.choose("attention", q, long_keys) is numba_attention
    monkeypatch.setenv("MINITX_KERNELS", "fast")
    with pytest.raises(ValueError, match="MINITX_KERNELS"):
        kernels.choose("attention", q, 2)
    with pytest.raises(ValueError, match="unknown kernels"):
        kernels.attention_forward(q, q, q, kernels="flash")


def test_a_kernel_without_bias_or_dropout_hands_such_calls_to_the_reference(monkeypatch):
    """The CUDA kernels lack the bias and dropout options: kernels/ runs the reference instead,
    saying so once (shown here with the CPU's short kernel in the CUDA kernels' place)."""
    monkeypatch.setattr(kernels, "WITHOUT_BIAS_OR_DROPOUT", {numba_attention_short: reference})
    monkeypatch.setattr(kernels, "_warned", set())
    (q, k, v, do), options = case_inputs((1, 2, 2, 5, 5, 4), dict(bias=(5, 5), dropout=0.2, seed=1),
                                         np.float64)
    with pytest.warns(UserWarning, match="run the reference kernel"):
        o, lse = kernels.attention_forward(q, k, v, kernels="fused", **options)
    np.testing.assert_array_equal(o, reference.attention_forward(q, k, v, **options)[0])
    assert len(kernels.attention_backward(q, k, v, o, lse, do, kernels="fused", **options)) == 4
    plain = dict(bias=None, dropout=0.0, seed=0)                          # plain calls stay fused
    assert kernels._attention(q, 5, "fused", plain) == (numba_attention_short, {})


def test_the_short_kernel_hands_bias_and_dropout_to_the_flash_kernel(monkeypatch):
    """The CPU's short-sequence kernel lacks bias and dropout: such calls run the flash kernel
    (linear memory, same results), silently; plain calls stay on the short kernel."""
    monkeypatch.setattr(kernels, "_warned", set())
    (q, k, v, do), options = case_inputs((1, 2, 2, 70, 70, 4), dict(bias=(70, 70), dropout=0.2,
                                                                     seed=1), np.float64)
    assert kernels._attention(q, 70, "fused", options)[0] is numba_attention
    o, lse = kernels.attention_forward(q, k, v, kernels="fused", **options)
    np.testing.assert_allclose(o, reference.attention_forward(q, k, v, **options)[0], atol=1e-12)
    plain = dict(bias=None, dropout=0.0, seed=0)
    assert kernels._attention(q, 70, "fused", plain) == (numba_attention_short, {})
    assert not kernels._warned


def test_the_kernel_decision_lives_in_one_module():
    """Only kernels/__init__.py reads MINITX_KERNELS, and no module outside kernels/ reaches a
    kernel module past it: everything else asks kernels.choose (through the kernels' functions)."""
    root = Path(kernels.__file__).parents[1]
    sources = {str(p.relative_to(root)): p.read_text() for p in root.rglob("*.py")}
    assert {name for name, text in sources.items() if "MINITX_" + "KERNELS" in text} == \
        {"kernels/__init__.py"}
    kernel_modules = (r"numba_attention|numba_attention_short|numba_pointwise|numba_math|"
                      r"cupy_attention|reference_pointwise|kernels\.reference")
    assert [name for name, text in sources.items()
            if not name.startswith("kernels/") and re.search(kernel_modules, text)] == []


def test_unsupported_dtype_falls_back_once(monkeypatch):
    monkeypatch.setattr(kernels, "_warned", set())
    (q, k, v, _), _ = case_inputs((1, 2, 2, 5, 5, 4), dict(), np.float16)
    with pytest.warns(UserWarning, match="float16"):
        o, lse = kernels.attention_forward(q, k, v, causal=True, kernels="fused")
    assert o.dtype == np.float16
    o_ref, _ = reference.attention_forward(q, k, v, causal=True)
    np.testing.assert_array_equal(o, o_ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.attention_forward(q, k, v, causal=True, kernels="fused")


def _run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=300)


def test_import_leaves_the_process_alone():
    """`import minitx` neither calls glibc's mallopt nor sets numba's threading layer;
    use_fast_cpu_settings does both."""
    code = (
        "import ctypes\n"
        "calls, real_cdll = [], ctypes.CDLL\n"
        "class Recorder:  # a shared library whose mallopt is recorded, not called\n"
        "    def __init__(self, name, *args, **kwargs):\n"
        "        self.name, self.lib = name, real_cdll(name, *args, **kwargs)\n"
        "    def __getattr__(self, f):\n"
        "        if f != 'mallopt': return getattr(self.lib, f)\n"
        "        return lambda *a: calls.append((self.name, f))\n"
        "ctypes.CDLL = Recorder\n"
        "import numba; layer = numba.config.THREADING_LAYER\n"
        "import minitx\n"
        "print(calls, numba.config.THREADING_LAYER == layer)\n"
        "minitx.use_fast_cpu_settings()\n"
        "print(sorted(set(calls)), numba.config.THREADING_LAYER)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    on_import, after_opt_in = result.stdout.splitlines()
    assert on_import == "[] True"
    expected_calls = "[('libc.so.6', 'mallopt')]" if sys.platform.startswith("linux") else "[]"
    assert after_opt_in == f"{expected_calls} workqueue"


def test_compile_notice_only_when_compiling(tmp_path):
    """The 'preparing the CPU attention kernel' notice comes when numba compiles, not when the
    kernel loads from numba's cache."""
    code = ("import numpy as np; from minitx import kernels\n"
            "q = np.ones((1, 1, 4, 2), np.float32)\n"
            "kernels.attention_forward(q, q, q, kernels='fused')\n")
    first = _run_python(code, NUMBA_CACHE_DIR=str(tmp_path))
    second = _run_python(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "preparing the CPU attention kernel _forward_kernel for float32" in first.stderr
    assert "preparing" not in second.stderr


@pytest.mark.parametrize("kernel", ["numba_attention", "numba_attention_short"])
def test_numba_kernel_runs_as_plain_python(kernel):
    """NUMBA_DISABLE_JIT=1 (the documented way to debug the kernel) still gives the same numbers."""
    code = (
        f"import numpy as np; from minitx.kernels import {kernel} as f, reference as r\n"
        "g = np.random.default_rng(0); q = g.standard_normal((1, 2, 7, 3))\n"
        "k, v = g.standard_normal((2, 1, 1, 9, 3)); m = np.arange(9)[None] != 4\n"
        "opt = dict(causal=True, window=4, prefix=2, key_mask=m)\n"
        "a = f.attention_forward(q, k, v, **opt); b = r.attention_forward(q, k, v, **opt)\n"
        "ga = f.attention_backward(q, k, v, *a, q, **opt)\n"
        "gb = r.attention_backward(q, k, v, *b, q, **opt)\n"
        "for x, y in zip(a + ga, b + gb): np.testing.assert_allclose(x, y, 1e-12, 1e-12)\n"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", [numba_attention, numba_attention_short], ids=["numba", "numba-short"])
def test_cpu_kernels_give_back_the_blas_threads(module):
    """The CPU kernels hold BLAS to one thread while they run (numba's threads have the cores);
    afterwards every BLAS library has the thread count it had before."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    (q, k, v, do), _ = case_inputs((1, 2, 2, 130, 130, 8), dict(), np.float32)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):   # more than the kernel's 1
        before = [(info["filepath"], info["num_threads"]) for info in threadpoolctl.threadpool_info()]
        o, lse = module.attention_forward(q, k, v, causal=True)
        module.attention_backward(q, k, v, o, lse, do, causal=True)
        after = [(info["filepath"], info["num_threads"]) for info in threadpoolctl.threadpool_info()]
    assert before   # at least NumPy's BLAS; SciPy's may load during the call, so compare those
    assert {path: n for path, n in after if path in dict(before)} == dict(before)   # seen before
