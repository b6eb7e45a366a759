"""One table of op cases drives every check: forward against NumPy, gradcheck in float64, devices.

Each case is (name, minitx function, NumPy reference, input generator). The inputs include the
hard regions: logits of 1e4, rows like [-1000, 1], broadcast and size-1 axes, repeated indices.
"""
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import minitx as mx
from conftest import DEVICES

np_erf = np.vectorize(math.erf)


@dataclass
class Case:
    name: str
    fn: Callable          # minitx tensors -> tensor
    ref: Callable         # numpy arrays -> array
    make: Callable        # rng -> list of float64 arrays (the differentiable inputs)

    def __repr__(self):
        return self.name


def normal(*shapes, shift=0.0, scale=1.0):
    return lambda rng: [rng.standard_normal(s) * scale + shift for s in shapes]


def positive(*shapes):
    return lambda rng: [rng.uniform(0.5, 2.0, s) for s in shapes]


def away_from_zero(*shapes):
    """Values with |x| >= 0.1, so finite differences never straddle a kink at 0."""
    return lambda rng: [np.sign(x) * (np.abs(x) + 0.1) for x in (rng.standard_normal(s) for s in shapes)]


def distinct(*shapes):
    """A permutation of spread-out values: no ties for max/min to split."""
    return lambda rng: [rng.permutation(np.prod(s)).reshape(s) * 0.1 + 0.01 * rng.standard_normal(s)
                        for s in shapes]


def fixed(*arrays):
    return lambda rng: [np.array(a, dtype=np.float64) for a in arrays]


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def np_layer_norm(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def np_cross_entropy(logits, targets, ignore_index=-100):
    logp = np_log_softmax(logits)
    keep = targets != ignore_index
    picked = np.take_along_axis(logp, np.where(keep, targets, 0)[..., None], -1)[..., 0]
    return -(picked * keep).sum() / max(keep.sum(), 1)


TARGETS = np.array([[1, 0, 3], [2, -100, 2]])
ROWS = np.array([[0, 2], [2, 2]])          # repeated rows: their gradients must add up
MASK = np.array([[True, False, True, False], [False, False, True, True], [True, True, False, False]])

CASES = [
    Case("add_broadcast", lambda a, b: a + b, lambda a, b: a + b, normal((3, 4), (4,))),
    Case("add_size1_axes", lambda a, b: a + b, lambda a, b: a + b, normal((3, 1), (1, 4))),
    Case("add_scalar", lambda a: 2.5 + a, lambda a: 2.5 + a, normal((2, 3))),
    Case("sub_broadcast", lambda a, b: a - b, lambda a, b: a - b, normal((2, 3, 4), (3, 1))),
    Case("rsub", lambda a: 1 - a, lambda a: 1 - a, normal((5,))),
    Case("mul_broadcast", lambda a, b: a * b, lambda a, b: a * b, normal((2, 1, 4), (3, 1))),
    Case("div", lambda a, b: a / b, lambda a, b: a / b, lambda rng: [rng.standard_normal((3, 4)),
                                                                    rng.uniform(0.5, 2, (4,))]),
    Case("rdiv", lambda a: 3 / a, lambda a: 3 / a, positive((2, 3))),
    Case("neg", lambda a: -a, lambda a: -a, normal((2, 3))),
    Case("pow_scalar", lambda a: a ** 3, lambda a: a ** 3, normal((2, 3))),
    Case("pow_tensor", lambda a, b: a ** b, lambda a, b: a ** b, lambda rng: [rng.uniform(0.5, 2, (2, 3)),
                                                                             rng.standard_normal((3,))]),
    Case("rpow", lambda a: 2.0 ** a, lambda a: 2.0 ** a, normal((4,))),
    Case("exp", mx.exp, np.exp, normal((3, 4))),
    Case("log", mx.log, np.log, positive((3, 4))),
    Case("sqrt", mx.sqrt, np.sqrt, positive((3, 4))),
    Case("abs", mx.abs, np.abs, away_from_zero((3, 4))),
    Case("tanh", mx.tanh, np.tanh, normal((3, 4), scale=2)),
    Case("sigmoid", mx.sigmoid, lambda a: 1 / (1 + np.exp(-a)), fixed([-30.0, -2.0, 0.0, 0.5, 3.0, 30.0])),
    Case("relu", mx.relu, lambda a: np.maximum(a, 0), away_from_zero((3, 4))),
    Case("gelu", mx.gelu, lambda a: a * 0.5 * (1 + np_erf(a / math.sqrt(2))), normal((3, 4), scale=2)),
    Case("gelu_tanh", lambda a: mx.gelu(a, approximate="tanh"),
         lambda a: 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3))),
         normal((3, 4), scale=2)),
    Case("sum_all", lambda a: a.sum(), lambda a: a.sum(), normal((3, 4))),
    Case("sum_axis", lambda a: a.sum(axis=1), lambda a: a.sum(axis=1), normal((2, 3, 4))),
    Case("sum_axes_keepdims", lambda a: a.sum(axis=(0, -1), keepdims=True),
         lambda a: a.sum(axis=(0, -1), keepdims=True), normal((2, 3, 4))),
    Case("sum_size1_axis", lambda a: a.sum(axis=1), lambda a: a.sum(axis=1), normal((3, 1, 2))),
    Case("mean", lambda a: a.mean(axis=0), lambda a: a.mean(axis=0), normal((3, 4))),
    Case("mean_keepdims", lambda a: a.mean(axis=-1, keepdims=True), lambda a: a.mean(-1, keepdims=True),
         normal((3, 4))),
    Case("var", lambda a: a.var(axis=-1), lambda a: a.var(axis=-1), normal((3, 5))),
    Case("var_ddof1_all", lambda a: a.var(ddof=1), lambda a: a.var(ddof=1), normal((3, 5))),
    Case("max_axis", lambda a: a.max(axis=1), lambda a: a.max(axis=1), distinct((3, 4))),
    Case("max_all_keepdims", lambda a: a.max(keepdims=True), lambda a: a.max(keepdims=True), distinct((3, 4))),
    Case("min_axis", lambda a: a.min(axis=0), lambda a: a.min(axis=0), distinct((3, 4))),
    Case("logsumexp", lambda a: a.logsumexp(axis=-1), lambda a: np.log(np.exp(a).sum(-1)), normal((3, 4))),
    Case("logsumexp_1e4", lambda a: a.logsumexp(axis=-1, keepdims=True),
         lambda a: a.max(-1, keepdims=True) + np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)),
         fixed([[1e4, 1e4 - 1.0, 0.0], [-1000.0, 1.0, 2.0]])),
    Case("reshape", lambda a: a.reshape(4, 6), lambda a: a.reshape(4, 6), normal((2, 3, 4))),
    Case("permute", lambda a: a.permute(2, 0, 1), lambda a: a.transpose(2, 0, 1), normal((2, 3, 4))),
    Case("transpose", lambda a: a.transpose(0, 2), lambda a: a.swapaxes(0, 2), normal((2, 3, 4))),
    Case("expand", lambda a: a.expand(2, 3, 4), lambda a: np.broadcast_to(a, (2, 3, 4)), normal((3, 1))),
    Case("getitem_slice", lambda a: a[1:, ::2], lambda a: a[1:, ::2], normal((3, 5))),
    Case("getitem_int_none", lambda a: a[1, None, :, -1], lambda a: a[1, None, :, -1], normal((2, 3, 4))),
    Case("getitem_repeated", lambda a: a[np.array([0, 2, 2, 0])], lambda a: a[np.array([0, 2, 2, 0])],
         normal((3, 4))),
    Case("getitem_bool", lambda a: a[mx.tensor(MASK, device=a.device)], lambda a: a[MASK], normal((3, 4))),
    Case("take_repeated", lambda a: mx.take(a, ROWS), lambda a: a[ROWS], normal((3, 4))),
    Case("take_axis1", lambda a: mx.take(a, np.array([3, 0, 3]), axis=1), lambda a: a[:, [3, 0, 3]],
         normal((2, 4, 2))),
    Case("concatenate", lambda a, b: mx.concatenate([a, b, a], axis=1),
         lambda a, b: np.concatenate([a, b, a], axis=1), normal((2, 3), (2, 1))),
    Case("stack", lambda a, b: mx.stack([a, b], axis=1), lambda a, b: np.stack([a, b], axis=1),
         normal((2, 3), (2, 3))),
    Case("split", lambda a: mx.split(a, [1, 3], axis=1)[1] * 2, lambda a: a[:, 1:] * 2, normal((2, 4))),
    Case("where", lambda a, b: mx.where(mx.tensor(MASK, device=a.device), a, b), lambda a, b: np.where(MASK, a, b),
         normal((3, 4), (4,))),
    Case("masked_fill", lambda a: a.masked_fill(mx.tensor(MASK, device=a.device), -3.0), lambda a: np.where(MASK, -3.0, a),
         normal((3, 4))),
    Case("softmax", lambda a: a.softmax(axis=-1), np_softmax,
         fixed([[-1000.0, 1.0, 0.5], [1e4, 1e4 - 2.0, 0.0], [0.1, 0.2, 0.3]])),
    Case("softmax_axis0", lambda a: a.softmax(axis=0), lambda a: np_softmax(a, 0), normal((3, 4))),
    Case("log_softmax", lambda a: a.log_softmax(), np_log_softmax,
         fixed([[-1000.0, 1.0, 0.5], [1e4, 1e4 - 2.0, 0.0], [0.1, 0.2, 0.3]])),
    Case("cross_entropy", lambda a: mx.cross_entropy(a, TARGETS), lambda a: np_cross_entropy(a, TARGETS),
         normal((2, 3, 4), scale=3)),
    Case("cross_entropy_1e4", lambda a: mx.cross_entropy(a, np.array([0, 1])),
         lambda a: np_cross_entropy(a, np.array([0, 1])), fixed([[1e4, 0.0, -1e4], [-1000.0, 1.0, 2.0]])),
    Case("layer_norm", mx.layer_norm, np_layer_norm, lambda rng: [rng.standard_normal((2, 3, 5)),
                                                                rng.standard_normal(5),
                                                                rng.standard_normal(5)]),
    Case("layer_norm_tiny_variance", lambda a: mx.layer_norm(a),
         lambda a: (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5),
         lambda rng: [1.0 + 1e-3 * rng.standard_normal((3, 4))]),
    Case("rms_norm", mx.rms_norm, lambda a, w: a / np.sqrt((a * a).mean(-1, keepdims=True) + 1e-6) * w,
         normal((3, 5), (5,))),
    Case("matmul", lambda a, b: a @ b, lambda a, b: a @ b, normal((3, 4), (4, 2))),
    Case("matmul_vector", lambda a, b: a @ b, lambda a, b: a @ b, normal((4,), (4, 2))),
    Case("matmul_batched_broadcast", lambda a, b: a @ b, lambda a, b: a @ b, normal((2, 1, 3, 4), (5, 4, 2))),
    Case("einsum_attention_scores", lambda q, k: mx.einsum("bhnd,bhmd->bhnm", q, k),
         lambda q, k: np.einsum("bhnd,bhmd->bhnm", q, k), normal((2, 2, 3, 4), (2, 2, 5, 4))),
    Case("einsum_three_operands", lambda a, b, c: mx.einsum("ij,jk,kl->il", a, b, c),
         lambda a, b, c: np.einsum("ij,jk,kl->il", a, b, c), normal((2, 3), (3, 4), (4, 2))),
    Case("einsum_ellipsis", lambda a, b: mx.einsum("...d,de->...e", a, b),
         lambda a, b: np.einsum("...d,de->...e", a, b), normal((2, 3, 4), (4, 5))),
    Case("einsum_sum_out", lambda a, b: mx.einsum("ij,jk->k", a, b),
         lambda a, b: np.einsum("ij,jk->k", a, b), normal((2, 3), (3, 4))),
    Case("einsum_outer_broadcast", lambda a, b: mx.einsum("bi,bj->bij", a, b),
         lambda a, b: np.einsum("bi,bj->bij", np.broadcast_to(a, (3, 2)), b), normal((1, 2), (3, 4))),
    Case("einsum_single_transpose", lambda a: mx.einsum("ijk->kij", a),
         lambda a: np.einsum("ijk->kij", a), normal((2, 3, 4))),
    Case("einsum_implicit", lambda a, b: mx.einsum("ij,jk", a, b), lambda a, b: np.einsum("ij,jk", a, b),
         normal((2, 3), (3, 4))),
]


def to_tensors(arrays, device, dtype="float64"):
    return [mx.tensor(a, requires_grad=True, dtype=dtype, device=device) for a in arrays]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_forward_matches_numpy(case, device):
    arrays = case.make(np.random.default_rng(1))
    out = case.fn(*to_tensors(arrays, device))
    np.testing.assert_allclose(out.numpy(), case.ref(*arrays), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=repr)
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
