"""Property-based shapes (hypothesis) for elementwise, reduction and einsum ops.

Each example is checked against NumPy in the forward pass and with gradcheck in float64.
"""
import string

import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import minitx as mx

SETTINGS = settings(max_examples=30, deadline=None)
# every binary op, with the NumPy function it must match; inputs kept where each is smooth
BINARY = {"add": (lambda a, b: a + b, np.add),
          "sub": (lambda a, b: a - b, np.subtract),
          "mul": (lambda a, b: a * b, np.multiply),
          "div": (lambda a, b: a / (b * b + 1), lambda a, b: a / (b * b + 1)),
          "pow": (lambda a, b: (a * a + 1) ** b, lambda a, b: (a * a + 1) ** b),
          "maximum": (mx.maximum, np.maximum),
          "minimum": (mx.minimum, np.minimum),
          "where": (lambda a, b: mx.where(a > 0, a, b), lambda a, b: np.where(a > 0, a, b)),
          "clip": (lambda a, b: mx.clip(a, max=b), lambda a, b: np.minimum(a, b))}
UNARY = {"exp": (mx.exp, np.exp), "tanh": (mx.tanh, np.tanh), "sigmoid": (mx.sigmoid, lambda a: 1 / (1 + np.exp(-a))),
         "square": (lambda a: a ** 2, lambda a: a ** 2)}


def leaf(array):
    return mx.tensor(array, requires_grad=True, dtype="float64")


@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=3),
       op=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2**16))
def test_binary_ops_broadcast_like_numpy(shapes, op, seed):
    """Any two broadcastable shapes, size-0 and 0-d included, for every binary op; values spread
    apart so that maximum, minimum, where and clip have no ties within a finite-difference step."""
    rng = np.random.default_rng(seed)
    a, b = (rng.permutation(int(np.prod(s))).reshape(s) * 0.37 - 0.6 + 0.01 * rng.random(s)
            for s in shapes.input_shapes)
    fn, ref = BINARY[op]
    out = fn(leaf(a), leaf(b))
    np.testing.assert_allclose(out.numpy(), ref(a, b), rtol=1e-12)
    assert out.shape == shapes.result_shape
    assert mx.gradcheck(fn, (leaf(a), leaf(b)))


@SETTINGS
@given(shapes=mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=3,
                                            max_side=3), seed=st.integers(0, 2**16))
def test_matmul_broadcasts_batch_axes_like_numpy(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(s) for s in shapes.input_shapes)
    np.testing.assert_allclose((leaf(a) @ leaf(b)).numpy(), a @ b, rtol=1e-10, atol=1e-12)
    assert mx.gradcheck(lambda x, y: x @ y, (leaf(a), leaf(b)))


@SETTINGS
@given(shape=array_shapes(min_dims=0, max_dims=3, max_side=4), op=st.sampled_from(sorted(UNARY)),
       seed=st.integers(0, 2**16))
def test_unary_ops(shape, op, seed):
    a = np.random.default_rng(seed).standard_normal(shape)
    fn, ref = UNARY[op]
    np.testing.assert_allclose(fn(leaf(a)).numpy(), ref(a), rtol=1e-12)
    assert mx.gradcheck(fn, (leaf(a),))


@st.composite
def reduction_case(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=4))
    axes = draw(st.lists(st.integers(-len(shape), len(shape) - 1), unique_by=lambda a: a % len(shape),
                         max_size=len(shape)))
    axis = None if not axes else (axes[0] if len(axes) == 1 else tuple(axes))
    return shape, axis, draw(st.booleans()), draw(st.sampled_from(["sum", "mean", "var", "max", "min"]))


@SETTINGS
@given(case=reduction_case(), seed=st.integers(0, 2**16))
def test_reductions_over_any_axes(case, seed):
    shape, axis, keepdims, op = case
    rng = np.random.default_rng(seed)
    a = rng.permutation(int(np.prod(shape))).reshape(shape) + 0.1 * rng.random(shape)  # no ties for max/min
    fn = lambda x: getattr(x, op)(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(fn(leaf(a)).numpy(), getattr(a, op)(axis=axis, keepdims=keepdims), rtol=1e-12)
    assert mx.gradcheck(fn, (leaf(a),), atol=1e-5)


@st.composite
def einsum_case(draw):
    """Random subscripts: 1 to 3 operands over up to 5 letters, any output subset, random sizes."""
    letters = string.ascii_lowercase[:draw(st.integers(1, 5))]
    sizes = {c: draw(st.integers(1, 3)) for c in letters}
    n_operands = draw(st.integers(1, 3))
    subs = [draw(st.permutations(letters).map(lambda p: "".join(p[:draw(st.integers(0, len(p)))])))
            for _ in range(n_operands)]
    used = sorted(set("".join(subs)))
    output = "".join(draw(st.permutations(used))[:draw(st.integers(0, len(used)))])
    shapes = [tuple(sizes[c] for c in s) for s in subs]
    return ",".join(subs) + "->" + output, shapes


@SETTINGS
@given(case=einsum_case(), seed=st.integers(0, 2**16))
def test_einsum_matches_numpy_and_gradcheck(case, seed):
    subscripts, shapes = case
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in shapes]
    fn = lambda *xs: mx.einsum(subscripts, *xs)
    np.testing.assert_allclose(fn(*map(leaf, arrays)).numpy(), np.einsum(subscripts, *arrays),
                               rtol=1e-10, atol=1e-12)
    assert mx.gradcheck(fn, [leaf(a) for a in arrays])
