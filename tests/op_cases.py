"""The one table of op cases. Each case is (name, minitx function, NumPy reference, input
generator, PyTorch counterpart), and every check reads it: the forward against NumPy, gradcheck in
float64, float32 staying float32, CPU against GPU (tests/test_ops.py), and forward plus every input
gradient against PyTorch (tests/test_torch_oracle.py).

The inputs include the hard regions: logits of 1e4, rows like [-1000, 1], 0-d tensors, size-0 and
size-1 axes, negative axes, tuples of axes, keepdims, repeated indices, pow at 0, a variance
divisor of 0. Where a function uses only operators and methods that PyTorch spells the same way
(a.sum(dim=1, keepdim=True)), the same lambda runs on both libraries; otherwise `torch` gives
PyTorch's version as a function of (the torch module, *tensors).
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

import minitx as mx
from minitx.kernels.dropout_mask import keep_mask

np_erf = np.vectorize(math.erf, otypes=[np.float64])
SAME = "same"  # `fn` itself runs on PyTorch tensors


@dataclass
class Case:
    name: str
    fn: Callable          # minitx tensors -> tensor
    ref: Callable         # numpy arrays -> array
    make: Callable        # rng -> list of float64 arrays (the differentiable inputs)
    torch: Optional[object] = SAME   # SAME, a function (torch, *tensors) -> tensor, or None
    gradcheck: bool = True           # False where finite differences cannot see the derivative
                                     # (a kink, inf or nan at the input); PyTorch still checks it

    def __repr__(self):
        return self.name

    def torch_fn(self, torch):
        return self.fn if self.torch == SAME else (lambda *xs: self.torch(torch, *xs))


def normal(*shapes, shift=0.0, scale=1.0):
    return lambda rng: [rng.standard_normal(s) * scale + shift for s in shapes]


def positive(*shapes):
    return lambda rng: [rng.uniform(0.5, 2.0, s) for s in shapes]


def away_from_zero(*shapes):
    """Values with |x| >= 0.1, so finite differences never straddle a kink at 0."""
    return lambda rng: [np.sign(x) * (np.abs(x) + 0.1) for x in (rng.standard_normal(s) for s in shapes)]


def distinct(*shapes):
    """A permutation of spread-out values: no ties for max/min to split."""
    return lambda rng: [rng.permutation(int(np.prod(s))).reshape(s) * 0.1 + 0.01 * rng.standard_normal(s)
                        for s in shapes]


def fixed(*arrays):
    return lambda rng: [np.array(a, dtype=np.float64) for a in arrays]


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def np_layer_norm(x, w, b, eps=1e-5, axes=(-1,)):
    return (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps) * w + b


def np_cross_entropy(logits, targets, ignore_index=-100, weight=None, smoothing=0.0, reduction="mean"):
    """The textbook formula: loss_n = -sum_c w_c u_nc log softmax_nc, u_n = (1 - eps) t_n + eps / C
    with t_n a one-hot class or a row of probabilities; the mean divides by the counted targets'
    weight (class indices) or by the number of rows (probabilities)."""
    n_class = logits.shape[-1]
    w = np.ones(n_class) if weight is None else weight
    if targets.dtype.kind == "f":
        u, total = (1 - smoothing) * targets + smoothing / n_class, targets[..., 0].size
    else:
        counted = targets != ignore_index
        onehot = np.eye(n_class)[np.where(counted, targets, 0)]
        u = ((1 - smoothing) * onehot + smoothing / n_class) * counted[..., None]
        total = (onehot @ w * counted).sum()
    loss = -(w * u * np_log_softmax(logits)).sum(-1)
    return {"none": loss, "sum": loss.sum(), "mean": loss.sum() / total}[reduction]


def np_sdpa(q, k, v, bias=0.0, causal=False, bool_mask=None, dropout=0.0):
    """softmax(q k^T / sqrt(D) + bias, masked) v, with minitx's dropout mask of seed DROPOUT_SEED."""
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1]) + bias
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    if bool_mask is not None:
        s = np.where(bool_mask, s, -np.inf)
    with np.errstate(invalid="ignore"):
        p = np.nan_to_num(np_softmax(s))   # a query that sees no key: zeros
    if dropout:
        p = p * keep_mask(p.shape, dropout, DROPOUT_SEED) / (1 - dropout)
    return p @ v


def torch_sdpa(torch, q, k, v, bias=None, causal=False, bool_mask=None, dropout=0.0):
    """PyTorch's attention; with dropout (PyTorch draws its own mask) its arithmetic on minitx's."""
    mask = bias if bool_mask is None else torch.where(torch.tensor(bool_mask), 0.0, -math.inf)
    if causal and mask is not None:  # PyTorch takes is_causal or a mask, not both
        mask = mask + torch.where(torch.ones(q.shape[-2], k.shape[-2]).tril() > 0, 0.0, -math.inf)
    if dropout:
        p = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask).softmax(-1)
        return p * torch.tensor(keep_mask(tuple(p.shape), dropout, DROPOUT_SEED)) / (1 - dropout) @ v
    return F(torch).scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 is_causal=causal and mask is None)


def sdpa_case(kernels, causal=False, bool_mask=None, dropout=0.0):
    def sdpa(q, k, v, bias=None):
        mx.manual_seed(DROPOUT_SEED_OF)  # the same dropout mask at every call, as gradcheck needs
        return mx.nn.functional.scaled_dot_product_attention(
            q, k, v, causal=causal, attn_mask=bias if bool_mask is None else mx.tensor(bool_mask),
            dropout_p=dropout, kernels=kernels)
    return sdpa


def torch_prod(a, axes, keepdim=False):
    """PyTorch's prod takes one dim: reduce a tuple of axes one at a time, last first."""
    for ax in sorted((ax % a.dim() for ax in axes), reverse=True):
        a = a.prod(dim=ax, keepdim=keepdim)
    return a


TARGETS = np.array([[1, 0, 3], [2, -100, 2]])
WEIGHT = np.array([0.5, 2.0, 1.0, 1.5])     # class weights for cross-entropy
DROPOUT_SEED_OF = 7                          # manual_seed(7), then the first draw seeds the mask
DROPOUT_SEED = int(np.random.default_rng(DROPOUT_SEED_OF).integers(0, 2**63))
BOOL_MASK = np.array([[True, False, True, True, False], [False, False, False, False, False],
                      [True, True, True, True, True], [False, True, False, False, True]])
# scaled_dot_product_attention: name, shapes of q, k, v (and the additive bias), options
SDPA = [
    ("bias_per_head", ((2, 2, 5, 4), (2, 2, 6, 4), (2, 2, 6, 4), (2, 5, 6)), dict()),
    ("bias_per_key_causal", ((2, 2, 6, 4), (2, 2, 6, 4), (2, 2, 6, 4), (2, 1, 1, 6)), dict(causal=True)),
    ("bool_mask_row_sees_nothing", ((1, 2, 4, 3), (1, 2, 5, 3), (1, 2, 5, 3)), dict(bool_mask=BOOL_MASK)),
    ("dropout_bias", ((1, 2, 4, 3), (1, 2, 5, 3), (1, 2, 5, 3), (4, 5)), dict(dropout=0.3)),
]
ROWS = np.array([[0, 2], [2, 2]])          # repeated rows: their gradients must add up
MASK = np.array([[True, False, True, False], [False, False, True, True], [True, True, False, False]])
GATHER = np.array([[2, 0], [1, 1], [0, 2]])   # (3, 2) picks from (3, 4) along axis 1, repeats
D = np.array([0, 2, 1, 2])


def F(torch):
    return torch.nn.functional


# unary elementwise ops: (name, minitx fn, numpy ref, inputs, PyTorch fn or SAME), each run over
# UNARY_SHAPES; the `make` takes a shape
UNARY = [
    ("exp", lambda a: a.exp(), np.exp, normal, SAME),
    ("log", lambda a: a.log(), np.log, positive, SAME),
    ("sqrt", lambda a: a.sqrt(), np.sqrt, positive, SAME),
    ("rsqrt", lambda a: a.rsqrt(), lambda a: 1 / np.sqrt(a), positive, SAME),
    ("abs", lambda a: a.abs(), np.abs, away_from_zero, SAME),
    ("sign", lambda a: a.sign(), np.sign, away_from_zero, SAME),
    ("neg", lambda a: -a, np.negative, normal, SAME),
    ("tanh", lambda a: a.tanh(), np.tanh, normal, SAME),
    ("sigmoid", lambda a: a.sigmoid(), lambda a: 1 / (1 + np.exp(-a)), normal, SAME),
    ("relu", lambda a: a.relu(), lambda a: np.maximum(a, 0), away_from_zero, SAME),
    ("sin", lambda a: a.sin(), np.sin, normal, SAME),
    ("cos", lambda a: a.cos(), np.cos, normal, SAME),
    ("erf", lambda a: a.erf(), np_erf, normal, SAME),
    ("silu", mx.silu, lambda a: a / (1 + np.exp(-a)), normal, lambda t, a: F(t).silu(a)),
    ("softplus", mx.softplus, lambda a: np.logaddexp(0, a), normal, lambda t, a: F(t).softplus(a)),
    ("leaky_relu", lambda a: mx.leaky_relu(a, 0.1), lambda a: np.where(a > 0, a, 0.1 * a),
     away_from_zero, lambda t, a: F(t).leaky_relu(a, 0.1)),
    ("gelu", mx.gelu, lambda a: a * 0.5 * (1 + np_erf(a / math.sqrt(2))), normal, lambda t, a: F(t).gelu(a)),
    ("gelu_tanh", lambda a: mx.gelu(a, approximate="tanh"),
     lambda a: 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3))), normal,
     lambda t, a: F(t).gelu(a, approximate="tanh")),
    ("pow_scalar", lambda a: a ** 3, lambda a: a ** 3, normal, SAME),
    ("rpow", lambda a: 2.0 ** a, lambda a: 2.0 ** a, normal, SAME),
]
UNARY_SHAPES = [(3, 4), (), (0, 3), (2, 1)]

CASES = [
    Case(f"{name}_{'x'.join(map(str, shape)) or '0d'}", fn, ref, make(shape), torch)
    for name, fn, ref, make, torch in UNARY for shape in UNARY_SHAPES
] + [
    # --- elementwise at the hard inputs --------------------------------------------------------
    Case("sigmoid_saturated", lambda a: a.sigmoid(), lambda a: 1 / (1 + np.exp(-a)),
         fixed([-30.0, -2.0, 0.0, 0.5, 3.0, 30.0])),
    Case("softplus_beta_threshold", lambda a: mx.softplus(a, beta=2.0, threshold=5.0),
         lambda a: np.where(2 * a > 5, a, np.logaddexp(0, 2 * a) / 2), fixed([-40.0, -1.0, 0.0, 2.0, 2.6, 40.0]),
         lambda t, a: F(t).softplus(a, beta=2.0, threshold=5.0)),
    Case("relu_at_zero", lambda a: a.relu(), lambda a: np.maximum(a, 0), fixed([0.0, -1.0, 1.0]),
         gradcheck=False),
    Case("abs_at_zero", lambda a: a.abs(), np.abs, fixed([0.0, -1.0, 1.0]), gradcheck=False),
    Case("leaky_relu_at_zero", lambda a: mx.leaky_relu(a), lambda a: np.where(a > 0, a, 0.01 * a),
         fixed([0.0, -1.0, 1.0]), lambda t, a: F(t).leaky_relu(a), gradcheck=False),
    Case("sign_at_zero", lambda a: a.sign(), np.sign, fixed([0.0, -2.0, 3.0]), gradcheck=False),
    Case("rsqrt_at_zero", lambda a: a.rsqrt(), lambda a: np.array([np.inf, 1.0]), fixed([0.0, 1.0]),
         gradcheck=False),
    Case("pow_zero_exponent", lambda a: a ** 0.0, lambda a: a ** 0.0, fixed([0.0, -2.0, 3.0])),
    Case("rpow_zero_base", lambda b: 0.0 ** b, lambda b: 0.0 ** b, fixed([0.3, 2.0, 5.0])),
    Case("rpow_zero_base_at_zero", lambda b: 0.0 ** b, lambda b: np.array([1.0, np.inf]),
         fixed([0.0, -1.0]), gradcheck=False),
    Case("pow_zero_base_positive_exponent", lambda a, b: a ** b, lambda a, b: a ** b,
         fixed([0.0, 0.0, 1.5], [2.0, 3.0, 0.0])),
    Case("pow_edges", lambda a, b: a ** b, lambda a, b: np.array([1.0, 0.0, 1.0, np.inf]),
         fixed([0.0, 0.0, np.inf, 0.0], [0.0, 0.3, 0.0, -1.0]), gradcheck=False),

    # --- binary, broadcasting ------------------------------------------------------------------
    Case("add_broadcast", lambda a, b: a + b, np.add, normal((3, 4), (4,))),
    Case("add_size1_axes", lambda a, b: a + b, np.add, normal((3, 1), (1, 4))),
    Case("add_scalar", lambda a: 2.5 + a, lambda a: 2.5 + a, normal((2, 3))),
    Case("add_0d_and_empty", lambda a, b: a + b, np.add, normal((), (0, 3))),
    Case("sub_broadcast", lambda a, b: a - b, np.subtract, normal((2, 3, 4), (3, 1))),
    Case("rsub", lambda a: 1 - a, lambda a: 1 - a, normal((5,))),
    Case("mul_broadcast", lambda a, b: a * b, np.multiply, normal((2, 1, 4), (3, 1))),
    Case("mul_0d", lambda a, b: a * b, np.multiply, normal((), (2, 3))),
    Case("div", lambda a, b: a / b, np.divide, lambda rng: [rng.standard_normal((3, 4)),
                                                           rng.uniform(0.5, 2, (4,))]),
    Case("rdiv", lambda a: 3 / a, lambda a: 3 / a, positive((2, 3))),
    Case("pow_tensor", lambda a, b: a ** b, np.power, lambda rng: [rng.uniform(0.5, 2, (2, 3)),
                                                                  rng.standard_normal((3,))]),
    Case("maximum", mx.maximum, np.maximum, distinct((3, 4), (4,)), lambda t, a, b: t.maximum(a, b)),
    Case("minimum_broadcast", mx.minimum, np.minimum, distinct((2, 1, 3), (4, 1)),
         lambda t, a, b: t.minimum(a, b)),
    Case("maximum_ties", mx.maximum, np.maximum, fixed([1.0, 2.0, 3.0], [1.0, 0.0, 3.0]),
         lambda t, a, b: t.maximum(a, b), gradcheck=False),
    Case("clip_numbers", lambda a: a.clip(-0.5, 0.7), lambda a: np.clip(a, -0.5, 0.7),
         fixed([-2.0, -0.4, 0.0, 0.69, 0.71, 3.0])),
    Case("clip_at_bounds", lambda a: a.clip(-0.5, 0.7), lambda a: np.clip(a, -0.5, 0.7),
         fixed([-0.5, 0.7]), gradcheck=False),
    Case("clip_lower_only", lambda a: mx.clip(a, min=0.1), lambda a: np.maximum(a, 0.1),
         away_from_zero((3, 4)), lambda t, a: t.clamp(a, min=0.1)),
    Case("clip_tensor_bounds", lambda a, lo, hi: a.clip(lo, hi), np.clip,
         fixed([-2.0, 0.0, 0.5, 3.0], [-1.0, -1.0, 0.6, 1.0], [1.0, 1.0, 2.0, 2.0])),
    Case("where", lambda a, b: mx.where(mx.tensor(MASK, device=a.device), a, b), lambda a, b: np.where(MASK, a, b),
         normal((3, 4), (4,)), lambda t, a, b: t.where(t.tensor(MASK), a, b)),
    Case("masked_fill", lambda a: a.masked_fill(mx.tensor(MASK, device=a.device), -3.0), lambda a: np.where(MASK, -3.0, a),
         normal((3, 4)), lambda t, a: a.masked_fill(t.tensor(MASK), -3.0)),

    # --- reductions ----------------------------------------------------------------------------
    Case("sum_all", lambda a: a.sum(), np.sum, normal((3, 4))),
    Case("sum_axis", lambda a: a.sum(dim=1), lambda a: a.sum(axis=1), normal((2, 3, 4))),
    Case("sum_axes_keepdims", lambda a: a.sum(dim=(0, -1), keepdim=True),
         lambda a: a.sum(axis=(0, -1), keepdims=True), normal((2, 3, 4))),
    Case("sum_size1_axis", lambda a: a.sum(dim=1), lambda a: a.sum(axis=1), normal((3, 1, 2))),
    Case("sum_0d_axis0", lambda a: a.sum(dim=0), lambda a: a, normal(())),
    Case("sum_0d_axis-1_keepdims", lambda a: a.sum(dim=-1, keepdim=True), lambda a: a, normal(())),
    Case("sum_empty_axis", lambda a: a.sum(dim=0), lambda a: a.sum(axis=0), normal((0, 3))),
    Case("prod_all", lambda a: mx.prod(a), np.prod, normal((2, 3)), lambda t, a: a.prod()),
    Case("prod_axes_keepdims", lambda a: a.prod(dim=(0, -1), keepdim=True),
         lambda a: a.prod(axis=(0, -1), keepdims=True), normal((2, 3, 4)),
         lambda t, a: torch_prod(a, (0, -1), keepdim=True)),
    Case("prod_with_zeros", lambda a: a.prod(dim=-1), lambda a: a.prod(axis=-1),
         fixed([[0.0, 2.0, 3.0], [0.0, 0.0, 4.0], [1.0, 2.0, 3.0]])),
    Case("prod_empty_axis", lambda a: a.prod(dim=0), lambda a: a.prod(axis=0), normal((0, 2))),
    Case("mean", lambda a: a.mean(dim=0), lambda a: a.mean(axis=0), normal((3, 4))),
    Case("mean_keepdims", lambda a: a.mean(dim=-1, keepdim=True), lambda a: a.mean(-1, keepdims=True),
         normal((3, 4))),
    Case("mean_axes", lambda a: a.mean(dim=(0, 2)), lambda a: a.mean(axis=(0, 2)), normal((2, 3, 4))),
    Case("mean_empty_axis", lambda a: a.mean(dim=0), lambda a: np.full(3, np.nan), normal((0, 3))),
    Case("var", lambda a: mx.var(a, axis=-1), lambda a: a.var(axis=-1), normal((3, 5)),
         lambda t, a: a.var(dim=-1, correction=0)),
    Case("var_correction1_all", lambda a: a.var(correction=1), lambda a: a.var(ddof=1), normal((3, 5))),
    Case("var_unbiased_axes_keepdims", lambda a: a.var(dim=(0, -1), unbiased=True, keepdim=True),
         lambda a: a.var(axis=(0, -1), ddof=1, keepdims=True), normal((2, 3, 4))),
    Case("var_divisor_zero", lambda a: a.var(dim=-1, correction=1), lambda a: np.full(3, np.nan),
         normal((3, 1)), gradcheck=False),
    Case("var_divisor_negative", lambda a: a.var(dim=-1, correction=3), lambda a: np.full(2, np.inf),
         fixed([[1.0, 2.0, 4.0], [1.0, 1.0, 5.0]]), gradcheck=False),
    Case("var_empty_axis", lambda a: a.var(dim=0, correction=0), lambda a: np.full(3, np.nan), normal((0, 3))),
    Case("std", lambda a: a.std(dim=-1, correction=1), lambda a: a.std(axis=-1, ddof=1), normal((3, 5))),
    Case("std_default_population", lambda a: a.std(), lambda a: a.std(), normal((2, 3)),
         lambda t, a: a.std(correction=0)),
    Case("std_constant_row", lambda a: a.std(dim=-1, correction=1), lambda a: np.zeros(2),
         fixed([[1.0, 1.0], [2.0, 2.0]]), gradcheck=False),
    Case("max_axis", lambda a: a.max(axis=1), lambda a: a.max(axis=1), distinct((3, 4)),
         lambda t, a: a.amax(dim=1)),
    Case("max_all_keepdims", lambda a: a.max(keepdims=True), lambda a: a.max(keepdims=True), distinct((3, 4)),
         lambda t, a: a.amax(dim=(0, 1), keepdim=True)),
    Case("max_axes_negative", lambda a: a.max(axis=(-1, 0)), lambda a: a.max(axis=(-1, 0)), distinct((2, 3, 4)),
         lambda t, a: a.amax(dim=(-1, 0))),
    Case("max_ties", lambda a: a.max(axis=-1), lambda a: a.max(axis=-1), fixed([[1.0, 3.0, 3.0]]),
         lambda t, a: a.amax(dim=-1), gradcheck=False),
    Case("min_axis", lambda a: a.min(axis=0), lambda a: a.min(axis=0), distinct((3, 4)),
         lambda t, a: a.amin(dim=0)),
    Case("min_0d", lambda a: a.min(axis=-1), lambda a: a, normal(()), lambda t, a: a.amin(dim=-1)),
    Case("logsumexp", lambda a: a.logsumexp(dim=-1), lambda a: np.log(np.exp(a).sum(-1)), normal((3, 4))),
    Case("logsumexp_axes_keepdims", lambda a: a.logsumexp(dim=(0, 2), keepdim=True),
         lambda a: np.log(np.exp(a).sum(axis=(0, 2), keepdims=True)), normal((2, 3, 4))),
    Case("logsumexp_0d", lambda a: a.logsumexp(dim=0), lambda a: a, normal(())),
    Case("logsumexp_1e4", lambda a: a.logsumexp(dim=-1, keepdim=True),
         lambda a: a.max(-1, keepdims=True) + np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)),
         fixed([[1e4, 1e4 - 1.0, 0.0], [-1000.0, 1.0, 2.0]])),
    Case("cumsum", lambda a: a.cumsum(dim=1), lambda a: a.cumsum(axis=1), normal((2, 3, 4))),
    Case("cumsum_negative_axis", lambda a: a.cumsum(dim=-1), lambda a: a.cumsum(axis=-1), normal((2, 1, 3))),
    Case("cumsum_empty", lambda a: a.cumsum(dim=0), lambda a: a.cumsum(axis=0), normal((0, 2))),

    # --- shapes --------------------------------------------------------------------------------
    Case("reshape", lambda a: a.reshape(4, 6), lambda a: a.reshape(4, 6), normal((2, 3, 4))),
    Case("reshape_0d_and_minus1", lambda a: a.reshape(-1), lambda a: a.reshape(-1), normal(())),
    Case("view", lambda a: a.view(3, -1), lambda a: a.reshape(3, -1), normal((2, 3, 2))),
    Case("permute", lambda a: a.permute(2, 0, 1), lambda a: a.transpose(2, 0, 1), normal((2, 3, 4))),
    Case("transpose", lambda a: a.transpose(0, 2), lambda a: a.swapaxes(0, 2), normal((2, 3, 4))),
    Case("expand", lambda a: a.expand(2, 3, 4), lambda a: np.broadcast_to(a, (2, 3, 4)), normal((3, 1))),
    Case("expand_keep_axis", lambda a: a.expand(2, -1, 4), lambda a: np.broadcast_to(a, (2, 3, 4)),
         normal((3, 1))),
    Case("squeeze_all", lambda a: a.squeeze(), np.squeeze, normal((1, 3, 1, 2))),
    Case("squeeze_axis", lambda a: a.squeeze(dim=-2), lambda a: a.squeeze(axis=-2), normal((2, 1, 3))),
    Case("squeeze_axes_not_size1", lambda a: a.squeeze(dim=(0, 1)), lambda a: a.squeeze(axis=0),
         normal((1, 3, 1))),
    Case("unsqueeze", lambda a: a.unsqueeze(-1), lambda a: a[..., None], normal((2, 3))),
    Case("unsqueeze_0d", lambda a: a.unsqueeze(0), lambda a: a.reshape(1), normal(())),
    Case("flatten", lambda a: a.flatten(), lambda a: a.reshape(-1), normal((2, 3, 4))),
    Case("flatten_middle", lambda a: a.flatten(1, -2), lambda a: a.reshape(2, 12, 5), normal((2, 3, 4, 5))),
    Case("flatten_0d", lambda a: a.flatten(), lambda a: a.reshape(1), normal(())),
    Case("flip", lambda a: a.flip(dims=(0, -1)), lambda a: np.flip(a, (0, -1)), normal((2, 3, 4))),
    Case("flip_size1", lambda a: a.flip(dims=(1,)), lambda a: np.flip(a, 1), normal((3, 1))),
    Case("repeat", lambda a: a.repeat(2, 1, 3), lambda a: np.tile(a, (2, 1, 3)), normal((3, 2))),
    Case("repeat_0d", lambda a: a.repeat(3), lambda a: np.tile(a, 3), normal(())),
    Case("chunk_uneven", lambda a: mx.concatenate([p * (i + 1) for i, p in enumerate(a.chunk(3, dim=-1))], -1),
         lambda a: a * np.array([1, 1, 2, 2, 3]), normal((2, 5)),
         lambda t, a: t.cat([p * (i + 1) for i, p in enumerate(a.chunk(3, dim=-1))], -1)),
    Case("split", lambda a: mx.split(a, [1, 3], axis=1)[1] * 2, lambda a: a[:, 1:] * 2, normal((2, 4)),
         lambda t, a: a.split([1, 3], dim=1)[1] * 2),
    Case("pad", lambda a: mx.pad(a, (1, 2)), lambda a: np.pad(a, ((0, 0), (1, 2))), normal((2, 3)),
         lambda t, a: F(t).pad(a, (1, 2))),
    Case("pad_two_axes_value", lambda a: mx.pad(a, (0, 1, 2, 0), value=-1.5),
         lambda a: np.pad(a, ((0, 0), (2, 0), (0, 1)), constant_values=-1.5), normal((2, 2, 3)),
         lambda t, a: F(t).pad(a, (0, 1, 2, 0), value=-1.5)),
    Case("pad_negative_crops", lambda a: mx.pad(a, (-1, 2)), lambda a: np.pad(a[:, 1:], ((0, 0), (0, 2))),
         normal((2, 3)), lambda t, a: F(t).pad(a, (-1, 2))),
    Case("tril", lambda a: a.tril(), np.tril, normal((3, 4))),
    Case("triu_batched_offset", lambda a: a.triu(1), lambda a: np.triu(a, 1), normal((2, 4, 3))),
    Case("tril_negative_offset", lambda a: mx.tril(a, -1), lambda a: np.tril(a, -1), normal((4, 4)),
         lambda t, a: t.tril(a, -1)),
    Case("getitem_slice", lambda a: a[1:, ::2], lambda a: a[1:, ::2], normal((3, 5))),
    Case("getitem_int_none", lambda a: a[1, None, :, -1], lambda a: a[1, None, :, -1], normal((2, 3, 4))),
    Case("getitem_repeated", lambda a: a[D], lambda a: a[D], normal((3, 4)), lambda t, a: a[t.tensor(D)]),
    Case("getitem_bool", lambda a: a[mx.tensor(MASK, device=a.device)], lambda a: a[MASK], normal((3, 4)),
         lambda t, a: a[t.tensor(MASK)]),
    Case("getitem_int_and_array_apart", lambda a: a[1, :, 3:11:2, D, 0:2],
         lambda a: np.moveaxis(a[1, :, 3:11:2, D, 0:2], 0, 2), normal((2, 3, 12, 5, 4)),
         lambda t, a: a[1, :, 3:11:2, t.tensor(D), 0:2]),
    Case("getitem_arrays_apart", lambda a: a[D[:2], :, D[1:3]], lambda a: a[D[:2], :, D[1:3]],
         normal((3, 2, 4)), lambda t, a: a[t.tensor(D[:2]), :, t.tensor(D[1:3])]),
    Case("take_repeated", lambda a: mx.take(a, ROWS), lambda a: a[ROWS], normal((3, 4)),
         lambda t, a: a[t.tensor(ROWS)]),
    Case("take_axis1", lambda a: mx.take(a, np.array([3, 0, 3]), axis=1), lambda a: a[:, [3, 0, 3]],
         normal((2, 4, 2)), lambda t, a: a.index_select(1, t.tensor([3, 0, 3]))),
    Case("gather", lambda a: a.gather(1, mx.tensor(GATHER)), lambda a: np.take_along_axis(a, GATHER, 1),
         normal((3, 4)),
         lambda t, a: a.gather(1, t.tensor(GATHER))),
    Case("gather_smaller_index_axis0", lambda a: mx.gather(a, 0, np.array([[2, 0, 1]])),
         lambda a: np.take_along_axis(a[:, :3], np.array([[2, 0, 1]]), 0), normal((3, 4)),
         lambda t, a: t.gather(a, 0, t.tensor([[2, 0, 1]]))),
    Case("concatenate", lambda a, b: mx.concatenate([a, b, a], axis=1),
         lambda a, b: np.concatenate([a, b, a], axis=1), normal((2, 3), (2, 1)),
         lambda t, a, b: t.cat([a, b, a], dim=1)),
    Case("concatenate_empty", lambda a, b: mx.concatenate([a, b], dim=0), lambda a, b: np.concatenate([a, b]),
         normal((0, 3), (2, 3)), lambda t, a, b: t.cat([a, b], dim=0)),
    Case("stack", lambda a, b: mx.stack([a, b], dim=-1), lambda a, b: np.stack([a, b], axis=-1),
         normal((2, 3), (2, 3)), lambda t, a, b: t.stack([a, b], dim=-1)),

    # --- contraction ---------------------------------------------------------------------------
    Case("matmul", lambda a, b: a @ b, np.matmul, normal((3, 4), (4, 2))),
    Case("matmul_vector", lambda a, b: a @ b, np.matmul, normal((4,), (4, 2))),
    Case("matmul_batched_broadcast", lambda a, b: a @ b, np.matmul, normal((2, 1, 3, 4), (5, 4, 2))),
    Case("matmul_empty_out", lambda a, b: a @ b, np.matmul, normal((8, 8), (8, 0))),
    Case("matmul_empty_rows", lambda a, b: a @ b, np.matmul, normal((0, 8), (8, 8))),
    Case("matmul_empty_contraction", lambda a, b: a @ b, np.matmul, normal((0,), (0, 8))),
    Case("einsum_attention_scores", lambda q, k: mx.einsum("bhnd,bhmd->bhnm", q, k),
         lambda q, k: np.einsum("bhnd,bhmd->bhnm", q, k), normal((2, 2, 3, 4), (2, 2, 5, 4)),
         lambda t, q, k: t.einsum("bhnd,bhmd->bhnm", q, k)),
    Case("einsum_three_operands", lambda a, b, c: mx.einsum("ij,jk,kl->il", a, b, c),
         lambda a, b, c: np.einsum("ij,jk,kl->il", a, b, c), normal((2, 3), (3, 4), (4, 2)),
         lambda t, a, b, c: t.einsum("ij,jk,kl->il", a, b, c)),
    Case("einsum_ellipsis", lambda a, b: mx.einsum("...d,de->...e", a, b),
         lambda a, b: np.einsum("...d,de->...e", a, b), normal((2, 3, 4), (4, 5)),
         lambda t, a, b: t.einsum("...d,de->...e", a, b)),
    Case("einsum_sum_out", lambda a, b: mx.einsum("ij,jk->k", a, b),
         lambda a, b: np.einsum("ij,jk->k", a, b), normal((2, 3), (3, 4)),
         lambda t, a, b: t.einsum("ij,jk->k", a, b)),
    Case("einsum_outer_broadcast", lambda a, b: mx.einsum("bi,bj->bij", a, b),
         lambda a, b: np.einsum("bi,bj->bij", np.broadcast_to(a, (3, 2)), b), normal((1, 2), (3, 4)),
         lambda t, a, b: t.einsum("bi,bj->bij", a, b)),
    Case("einsum_single_transpose", lambda a: mx.einsum("ijk->kij", a),
         lambda a: np.einsum("ijk->kij", a), normal((2, 3, 4)), lambda t, a: t.einsum("ijk->kij", a)),
    Case("einsum_implicit", lambda a, b: mx.einsum("ij,jk", a, b), lambda a, b: np.einsum("ij,jk", a, b),
         normal((2, 3), (3, 4)), lambda t, a, b: t.einsum("ij,jk", a, b)),
    Case("einsum_trace", lambda a: mx.einsum("ii->", a), lambda a: np.einsum("ii->", a), normal((3, 3)),
         lambda t, a: t.einsum("ii->", a)),
    Case("einsum_diagonal", lambda a: mx.einsum("ii->i", a), lambda a: np.einsum("ii->i", a), normal((3, 3)),
         lambda t, a: t.einsum("ii->i", a)),
    Case("einsum_batched_trace", lambda a: mx.einsum("...ii->...", a), lambda a: np.einsum("...ii->...", a),
         normal((2, 3, 3)), lambda t, a: t.einsum("...ii->...", a)),
    Case("einsum_two_diagonals", lambda a, b: mx.einsum("iij,kkj->j", a, b),
         lambda a, b: np.einsum("iij,kkj->j", a, b), normal((2, 2, 3), (4, 4, 3)),
         lambda t, a, b: t.einsum("iij,kkj->j", a, b)),
    Case("einsum_size0_contraction", lambda a, b: mx.einsum("ij,jk->ik", a, b),
         lambda a, b: np.einsum("ij,jk->ik", a, b), normal((2, 0), (0, 3)),
         lambda t, a, b: t.einsum("ij,jk->ik", a, b)),

    # --- neural-network ops --------------------------------------------------------------------
    Case("softmax", lambda a: a.softmax(dim=-1), np_softmax,
         fixed([[-1000.0, 1.0, 0.5], [1e4, 1e4 - 2.0, 0.0], [0.1, 0.2, 0.3]])),
    Case("softmax_axis0", lambda a: a.softmax(dim=0), lambda a: np_softmax(a, 0), normal((3, 4))),
    Case("log_softmax", lambda a: a.log_softmax(dim=-1), np_log_softmax,
         fixed([[-1000.0, 1.0, 0.5], [1e4, 1e4 - 2.0, 0.0], [0.1, 0.2, 0.3]])),
    Case("cross_entropy", lambda a: mx.cross_entropy(a, TARGETS), lambda a: np_cross_entropy(a, TARGETS),
         normal((2, 3, 4), scale=3),
         lambda t, a: F(t).cross_entropy(a.reshape(-1, 4), t.tensor(TARGETS).reshape(-1))),
    Case("cross_entropy_1e4", lambda a: mx.cross_entropy(a, np.array([0, 1])),
         lambda a: np_cross_entropy(a, np.array([0, 1])), fixed([[1e4, 0.0, -1e4], [-1000.0, 1.0, 2.0]]),
         lambda t, a: F(t).cross_entropy(a, t.tensor([0, 1]))),
    Case("layer_norm", mx.layer_norm, np_layer_norm, lambda rng: [rng.standard_normal((2, 3, 5)),
                                                                rng.standard_normal(5),
                                                                rng.standard_normal(5)],
         lambda t, a, w, b: F(t).layer_norm(a, (5,), w, b)),
    Case("layer_norm_tiny_variance", lambda a: mx.layer_norm(a),
         lambda a: (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5),
         lambda rng: [1.0 + 1e-3 * rng.standard_normal((3, 4))], lambda t, a: F(t).layer_norm(a, (4,))),
    Case("rms_norm", mx.rms_norm, lambda a, w: a / np.sqrt((a * a).mean(-1, keepdims=True) + 1e-6) * w,
         normal((3, 5), (5,)), lambda t, a, w: F(t).rms_norm(a, (5,), w, eps=1e-6)),
    Case("cross_entropy_sum_smoothing_weight",
         lambda a: mx.cross_entropy(a, TARGETS, weight=WEIGHT, label_smoothing=0.2, reduction="sum"),
         lambda a: np_cross_entropy(a, TARGETS, weight=WEIGHT, smoothing=0.2, reduction="sum"),
         normal((2, 3, 4), scale=3),
         lambda t, a: F(t).cross_entropy(a.reshape(-1, 4), t.tensor(TARGETS).reshape(-1), weight=t.tensor(WEIGHT),
                                         label_smoothing=0.2, reduction="sum")),
    Case("cross_entropy_mean_weight", lambda a: mx.cross_entropy(a, TARGETS, weight=WEIGHT),
         lambda a: np_cross_entropy(a, TARGETS, weight=WEIGHT), normal((2, 3, 4)),
         lambda t, a: F(t).cross_entropy(a.reshape(-1, 4), t.tensor(TARGETS).reshape(-1), weight=t.tensor(WEIGHT))),
    Case("cross_entropy_none_classes_axis1",
         lambda a: mx.cross_entropy(a, TARGETS, axis=1, reduction="none", label_smoothing=0.1),
         lambda a: np_cross_entropy(np.moveaxis(a, 1, -1), TARGETS, smoothing=0.1, reduction="none"),
         normal((2, 4, 3)),
         lambda t, a: F(t).cross_entropy(a, t.tensor(TARGETS), reduction="none", label_smoothing=0.1)),
    Case("cross_entropy_probabilities", lambda a, p: mx.cross_entropy(a, p, weight=WEIGHT, label_smoothing=0.1),
         lambda a, p: np_cross_entropy(a, p, weight=WEIGHT, smoothing=0.1),
         lambda rng: [rng.standard_normal((3, 4)), rng.dirichlet(np.ones(4), 3)],
         lambda t, a, p: F(t).cross_entropy(a, p, weight=t.tensor(WEIGHT), label_smoothing=0.1)),
    Case("cross_entropy_probabilities_axis1", lambda a, p: mx.cross_entropy(a, p, axis=1),
         lambda a, p: np_cross_entropy(np.moveaxis(a, 1, -1), np.moveaxis(p, 1, -1)),
         lambda rng: [rng.standard_normal((2, 4, 3)), rng.dirichlet(np.ones(4), (2, 3)).transpose(0, 2, 1)],
         lambda t, a, p: F(t).cross_entropy(a, p)),
    Case("cross_entropy_all_ignored", lambda a: mx.cross_entropy(a, np.array([-100, -100])),
         lambda a: np.array(np.nan), normal((2, 3)),
         lambda t, a: F(t).cross_entropy(a, t.tensor([-100, -100])), gradcheck=False),
    Case("layer_norm_two_axes", mx.layer_norm, lambda x, w, b: np_layer_norm(x, w, b, axes=(-2, -1)),
         normal((2, 3, 4, 5), (4, 5), (4, 5)), lambda t, a, w, b: F(t).layer_norm(a, (4, 5), w, b)),
    Case("layer_norm_three_axes_no_weight", lambda a: mx.layer_norm(a, normalized_shape=(2, 3, 4)),
         lambda x: np_layer_norm(x, 1.0, 0.0, axes=(-3, -2, -1)), normal((2, 3, 4)),
         lambda t, a: F(t).layer_norm(a, (2, 3, 4))),
    Case("rms_norm_two_axes", mx.rms_norm,
         lambda a, w: a / np.sqrt((a * a).mean(axis=(-2, -1), keepdims=True) + 1e-6) * w,
         normal((3, 2, 5), (2, 5)), lambda t, a, w: F(t).rms_norm(a, (2, 5), w, eps=1e-6)),
] + [
    Case(f"sdpa_{name}_{kernels}", sdpa_case(kernels, **options), lambda *xs, o=options: np_sdpa(*xs, **o),
         normal(*shapes), lambda t, *xs, o=options: torch_sdpa(t, *xs, **o))
    for name, shapes, options in SDPA for kernels in ("reference", "fused")
]

# argmax / argmin have no gradient, so no row above: (shape, axis, keepdims)
ARG_CASES = [((3, 4), None, False), ((3, 4), -1, True), ((2, 3, 4), 1, False), ((), None, False),
             ((), 0, True), ((1, 3), 0, False), ((2, 3), -2, False)]
