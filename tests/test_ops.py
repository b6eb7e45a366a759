"""One table of op cases (tests/op_cases.py) drives every check: forward against NumPy, gradcheck
in float64, float32 staying float32, CPU against GPU; tests/test_torch_oracle.py adds PyTorch."""
import numpy as np
import pytest

import minitx as mx
from conftest import DEVICES
from op_cases import ARG_CASES, CASES


def to_tensors(arrays, device, dtype="float64"):
    return [mx.tensor(a, requires_grad=True, dtype=dtype, device=device) for a in arrays]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_forward_matches_numpy(case, device):
    arrays = case.make(np.random.default_rng(1))
    out = case.fn(*to_tensors(arrays, device))
    np.testing.assert_allclose(out.numpy(), case.ref(*arrays), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [c for c in CASES if c.gradcheck], ids=repr)
def test_gradcheck(case, device):
    arrays = case.make(np.random.default_rng(2))
    assert mx.gradcheck(case.fn, to_tensors(arrays, device))


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_float32_stays_float32(case):
    arrays = case.make(np.random.default_rng(3))
    inputs = to_tensors(arrays, "cpu", dtype="float32")
    out = case.fn(*inputs)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), case.ref(*[a.astype(np.float32) for a in arrays]),
                               rtol=2e-5, atol=2e-5)
    out.backward(mx.ones(*out.shape))
    assert all(x.grad.dtype == np.float32 for x in inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_cpu_and_gpu_agree(case):
    arrays = case.make(np.random.default_rng(4))
    results = []
    for device in ("cpu", "cuda"):
        inputs = to_tensors(arrays, device)
        out = case.fn(*inputs)
        out.backward(mx.ones(*out.shape, dtype="float64", device=device))
        results.append([out.numpy()] + [x.grad.numpy() for x in inputs])
    # Two float64 roundings of one computation; atol 1e-10, not 1e-12, because a gradient that
    # is analytically zero (layer norm of nearly constant rows) comes out as rounding noise
    # amplified by 1/std ~ 1e3 on either device.
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-10, atol=1e-10)


# --- behaviours that a table row cannot express --------------------------------------------------
def test_max_splits_gradient_between_ties():
    x = mx.tensor([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]], requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [1, 0, 0]])


def test_logsumexp_of_all_minus_inf_is_minus_inf_with_zero_gradient():
    x = mx.tensor([[-np.inf, -np.inf], [0.0, 0.0]], requires_grad=True, dtype="float64")
    out = x.logsumexp(axis=-1)
    assert out.numpy()[0] == -np.inf and np.isclose(out.numpy()[1], np.log(2))
    out[1].backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0], [0.5, 0.5]])


def test_softmax_of_1e4_logits_is_finite():
    x = mx.tensor([[1e4, 0.0, -1e4]], requires_grad=True)
    y = x.softmax()
    assert np.isfinite(y.numpy()).all() and np.isclose(y.numpy()[0, 0], 1.0)
    (y * mx.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_cross_entropy_ignores_targets_and_counts_mean_over_the_rest():
    logits = mx.tensor(np.zeros((2, 3)), requires_grad=True, dtype="float64")
    loss = mx.cross_entropy(logits, np.array([1, -100]))
    assert np.isclose(loss.item(), np.log(3))
    loss.backward()
    np.testing.assert_allclose(logits.grad.numpy()[1], 0)
    np.testing.assert_allclose(logits.grad.numpy()[0], [1 / 3, -2 / 3, 1 / 3])


def test_cross_entropy_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"targets of shape \(3,\)"):
        mx.cross_entropy(mx.zeros(2, 4), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        mx.cross_entropy(mx.zeros(2, 4), np.array([0, 7]))


def test_dropout_scales_kept_units_and_is_identity_in_eval():
    x = mx.ones(1000, 100, requires_grad=True)
    y = mx.dropout(x, p=0.25)
    kept = y.numpy() != 0
    assert 0.72 < kept.mean() < 0.78
    np.testing.assert_allclose(y.numpy()[kept], 1 / 0.75, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), kept / 0.75, rtol=1e-6)
    assert mx.dropout(x, p=0.25, training=False) is x
    with pytest.raises(ValueError, match="dropout probability"):
        mx.dropout(x, p=1.0)


def test_dropout_gradcheck_with_a_fixed_mask():
    x = mx.randn(3, 4, dtype="float64", requires_grad=True)

    def f(x):
        mx.manual_seed(7)  # the same mask at every evaluation
        return mx.dropout(x, p=0.3) * 2
    assert mx.gradcheck(f, (x,))


def test_binary_op_shape_error_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"add: .*\(2, 3\), \(4,\)"):
        mx.zeros(2, 3) + mx.zeros(4)


def test_reshape_and_axis_errors():
    with pytest.raises(ValueError, match=r"cannot reshape \(2, 3\)"):
        mx.zeros(2, 3).reshape(4, 2)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        mx.zeros(2, 3).sum(axis=2)
    with pytest.raises(ValueError, match="do not add up"):
        mx.split(mx.zeros(2, 5), [2, 2], axis=1)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\)"):
        mx.take(mx.zeros(3, 2), np.array([0, 3]))


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        mx.gelu(mx.zeros(2), approximate="fast")


def test_numpy_values_on_the_left_give_tensors_in_the_graph():
    x = mx.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for y in (np.float64(3) * x, np.ones(3) * x, np.ones(3) - x, np.float32(2) ** x, np.ones(3) / x):
        assert isinstance(y, mx.Tensor) and y.requires_grad
    assert (np.float64(3) * x).dtype == np.float32  # a NumPy scalar acts as a Python number
    assert isinstance(np.zeros(3) < x, mx.Tensor)
    (np.arange(3.0) * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0, 1, 2])


def test_tensors_follow_the_sequence_protocol():
    x = mx.tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    rows = list(x)
    assert len(rows) == 3 and all(r.shape == (2,) and r.requires_grad for r in rows)
    assert [r.tolist() for r in x] == [[0, 1], [2, 3], [4, 5]]
    np.testing.assert_array_equal(np.asarray(x), x.numpy())
    with pytest.raises(IndexError, match="does not fit shape"):
        x[3]
    with pytest.raises(TypeError, match="0-d"):
        iter(mx.tensor(1.0))


def test_mixed_integer_and_array_indices_place_axes_as_pytorch_does():
    """x[1, :, d] applies the integer first, then d stays where it stood (NumPy moves it first)."""
    x = mx.tensor(np.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5))
    d = np.array([3, 0])
    assert x[1, :, d].shape == (3, 2, 5)             # NumPy: (2, 3, 5)
    np.testing.assert_array_equal(x[1, :, d].numpy(), x.numpy()[1][:, d])
    assert x[d[1:], :, 1].shape == (1, 3, 5)         # the same in both: d leads either way
    assert x[:, 1, d].shape == x.numpy()[:, 1, d].shape == (2, 2, 5)   # adjacent: both agree


def test_torch_keyword_names_and_their_conflicts():
    x = mx.tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.sum(dim=1, keepdim=True).numpy(), x.sum(axis=1, keepdims=True).numpy())
    assert mx.concatenate([x, x], dim=1).shape == (2, 6)
    with pytest.raises(TypeError, match="both axis= and dim="):
        x.sum(axis=0, dim=1)


def test_var_defaults_to_numpy_ddof0_and_takes_pytorch_names():
    x = mx.tensor([1.0, 2.0, 4.0], dtype="float64")
    assert np.isclose(x.var().item(), np.var([1, 2, 4]))
    for kwargs in (dict(ddof=1), dict(correction=1), dict(unbiased=True)):
        assert np.isclose(x.var(**kwargs).item(), np.var([1, 2, 4], ddof=1))
    with pytest.raises(TypeError, match="one of ddof=, correction=, unbiased="):
        x.var(ddof=1, correction=1)


@pytest.mark.parametrize("n, chunks, sizes", [(6, 4, [2, 2, 2]), (5, 3, [2, 2, 1]), (3, 5, [1, 1, 1]),
                                              (4, 1, [4])])
def test_chunk_cuts_like_pytorch(n, chunks, sizes):
    assert [p.shape[0] for p in mx.zeros(n, 2).chunk(chunks)] == sizes


@pytest.mark.parametrize("shape, axis, keepdims", ARG_CASES)
def test_argmax_and_argmin_match_numpy(shape, axis, keepdims):
    a = np.random.default_rng(0).standard_normal(shape)
    for name in ("argmax", "argmin"):
        out = getattr(mx, name)(mx.tensor(a), dim=axis, keepdim=keepdims)
        expected = getattr(np, name)(a.reshape(-1) if a.ndim == 0 and axis is not None else a,
                                     axis=axis, keepdims=keepdims)
        assert out.dtype == np.int64 and not out.requires_grad
        np.testing.assert_array_equal(out.numpy(), np.reshape(expected, out.shape))


def test_einsum_diagonal_needs_equal_sizes():
    with pytest.raises(ValueError, match="a diagonal needs equal sizes"):
        mx.einsum("ii->i", mx.zeros(1, 3))  # 1 would broadcast elsewhere, not here


def test_cross_entropy_option_errors():
    with pytest.raises(ValueError, match="reduction"):
        mx.cross_entropy(mx.zeros(2, 3), [0, 1], reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        mx.cross_entropy(mx.zeros(2, 3), [0, 1], label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"probabilities of shape \(2, 3\)"):
        mx.cross_entropy(mx.zeros(2, 3), np.ones((2, 4)) / 4)


def test_layer_norm_needs_a_trailing_shape():
    with pytest.raises(ValueError, match=r"not the trailing shape of \(2, 3, 4\)"):
        mx.layer_norm(mx.zeros(2, 3, 4), normalized_shape=(2, 3))


def test_attention_dropout_draws_its_mask_only_when_asked():
    q = mx.randn(1, 2, 5, 4, dtype="float64")
    state = mx.get_rng_state()
    plain = mx.nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.0)
    assert mx.get_rng_state() == state                       # no draw without dropout
    dropped = mx.nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    assert mx.get_rng_state() != state and not np.allclose(dropped.numpy(), plain.numpy())


def test_norm_layers_over_several_trailing_axes():
    x = mx.randn(2, 3, 4, dtype="float64")
    layer = mx.nn.LayerNorm((3, 4))
    layer.to(dtype="float64")
    expected = mx.layer_norm(x, normalized_shape=(3, 4)).numpy()
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-12, atol=1e-12)
    assert mx.nn.RMSNorm((3, 4)).weight.shape == (3, 4)
