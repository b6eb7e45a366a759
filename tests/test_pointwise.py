"""The fused CPU kernels for GELU, normalisation and erf against their readable references."""
import numpy as np
import pytest

from minitx.kernels import numba_pointwise as fused, reference_pointwise as reference

SHAPES = [(1,), (7,), (3, 5), (2, 3, 129)]


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gelu_kernels_match_the_array_code(shape, dtype, rtol):
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y, t = fused.gelu_tanh_forward(x)
    y_ref, t_ref = reference.gelu_tanh_forward(x)
    np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(fused.gelu_tanh_grad(x, t, g), reference.gelu_tanh_grad(x, t_ref, g),
                               rtol=rtol, atol=rtol)
    assert y.dtype == x.dtype


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 1e-4)])
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("affine", ["weight_bias", "weight", "none"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
def test_normalize_kernels_match_the_array_code(shape, affine, center, dtype, rtol):
    rng = np.random.default_rng(1)
    d = shape[-1]
    x = (1 + 0.01 * rng.standard_normal(shape)).astype(dtype)   # small variance: the hard case
    g = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(d).astype(dtype) if affine != "none" else None
    b = rng.standard_normal(d).astype(dtype) if affine == "weight_bias" else None
    got, expected = fused.normalize(x, w, b, 1e-5, center), reference.normalize(x, w, b, 1e-5, center)
    for a, e in zip(got, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol)
    xhat, rstd = expected[1:]
    np.testing.assert_allclose(fused.normalize_grad(g, xhat, rstd, w, center),
                               reference.normalize_grad(g, xhat, rstd, w, center),
                               rtol=rtol, atol=rtol * float(rstd.max()))


def test_kernels_accept_non_contiguous_inputs():
    x = np.random.default_rng(2).standard_normal((6, 8)).T
    np.testing.assert_allclose(fused.gelu_tanh_forward(x)[0], reference.gelu_tanh_forward(x)[0], rtol=1e-12)
    np.testing.assert_allclose(fused.normalize(x, None, None, 1e-5, True)[0],
                               reference.normalize(x, None, None, 1e-5, True)[0], rtol=1e-11, atol=1e-12)



@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_erf_kernel_matches_the_reference(dtype):
    x = np.linspace(-6, 6, 101).astype(dtype)
    y = fused.erf(x)
    np.testing.assert_array_equal(y, reference.erf(x))
    assert y.dtype == x.dtype


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("decay", [0.0, 1e-3], ids=["no_decay", "decay"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_adamw_kernel_matches_the_array_code_bit_for_bit(shape, decay, dtype):
    """Several steps, so the bias corrections change; the same operations in the same order, with
    the same rounded constants, give the same bits."""
    rng = np.random.default_rng(3)
    p = rng.standard_normal(shape).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
    for t in range(1, 5):
        g = rng.standard_normal(shape).astype(dtype)
        assert fused.adamw_update(p, g, m, v, 1e-2, 0.9, 0.99, 1e-8, decay, t) is p   # in place
        reference.adamw_update(p_ref, g, m_ref, v_ref, 1e-2, 0.9, 0.99, 1e-8, decay, t)
        for a, e in ((p, p_ref), (m, m_ref), (v, v_ref)):
            np.testing.assert_array_equal(a, e)
    assert p.dtype == m.dtype == v.dtype == dtype


def test_adamw_kernel_updates_non_contiguous_arrays_in_place():
    """A parameter that is not C-contiguous (a transposed view) still changes in place; so do
    its moments. A non-contiguous gradient is read as it is."""
    rng = np.random.default_rng(4)
    p, g = (rng.standard_normal((5, 7)).T for _ in range(2))
    m, v = np.zeros_like(p), np.zeros_like(p)
    expected = [a.copy() for a in (p, g, m, v)]
    fused.adamw_update(p, g, m, v, 1e-2, 0.9, 0.99, 1e-8, 1e-3, 1)
    reference.adamw_update(*expected, 1e-2, 0.9, 0.99, 1e-8, 1e-3, 1)
    for a, e in zip((p, g, m, v), expected):
        np.testing.assert_array_equal(a, e)
    p, m, v = (rng.standard_normal((5, 7)) for _ in range(3))
    v, g = v * v, rng.standard_normal((7, 5)).T
    expected = [a.copy() for a in (p, m, v)]
    fused.adamw_update(p, g, m, v, 1e-2, 0.9, 0.99, 1e-8, 1e-3, 1)
    reference.adamw_update(expected[0], g, *expected[1:], 1e-2, 0.9, 0.99, 1e-8, 1e-3, 1)
    for a, e in zip((p, m, v), expected):
        np.testing.assert_array_equal(a, e)
