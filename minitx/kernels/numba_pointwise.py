"""Fused CPU kernels for GELU (tanh form), layer/RMS normalisation and the AdamW update, compiled
with numba.

NumPy evaluates an expression one operation at a time: every `*` or `+` is a pass over memory
that writes a new temporary. For the largest arrays of a training step (the MLP's hidden
activations, the residual stream, every parameter in the optimizer step) those passes, not the
arithmetic, are the cost. Each kernel here makes one pass per row instead. The readable
definitions are beside them in reference_pointwise.py, which also runs on CuPy; the tests check
the two against each other.

numba compiles tanh to a scalar library call (no vector math library is assumed), about 30x
slower than NumPy's vectorised tanh, so the GELU forward leaves the tanh itself to NumPy.
All kernels take C-contiguous arrays, element-wise ones flattened, row-wise ones as (rows, d).
They run on one thread: they are bound by memory traffic, which one core nearly saturates, and
a parallel kernel waits for its slowest thread, so a busy core stalls all of them.
"""
import math

import numba
import numpy as np

from . import reference_pointwise


SUPPORTED_DTYPES = ("float32", "float64")
SQRT_2_OVER_PI = 0.7978845608028654
GELU_A = 0.044715


@numba.njit(cache=True)
def gelu_tanh_argument(x, u):
    """u = sqrt(2/pi) (x + 0.044715 x^3): what GELU's tanh is taken of."""
    c, a = x.dtype.type(SQRT_2_OVER_PI), x.dtype.type(GELU_A)
    for i in range(x.size):
        v = x[i]
        u[i] = c * (v + a * v * v * v)


@numba.njit(cache=True)
def gelu_tanh_output(x, t, y):
    """y = x/2 (1 + t), t = tanh(u)."""
    half = x.dtype.type(0.5)
    for i in range(x.size):
        y[i] = half * x[i] * (1 + t[i])


@numba.njit(cache=True)
def gelu_tanh_backward(x, t, grad, dx):
    """dx = grad (1 + t + x (1 - t^2) du/dx) / 2,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    c, a3, half = x.dtype.type(SQRT_2_OVER_PI), x.dtype.type(3 * GELU_A), x.dtype.type(0.5)
    for i in range(x.size):
        v, th = x[i], t[i]
        du = c * (1 + a3 * v * v)
        dx[i] = grad[i] * half * (1 + th + v * (1 - th * th) * du)


# The row sums may be added in any order, so LLVM can vectorise them; no other fast-math liberty
# (infinities and NaNs keep their meaning).
ROW_SUMS = dict(cache=True, fastmath={"reassoc", "nsz", "contract"})


@numba.njit(**ROW_SUMS)
def normalize_forward(x, weight, bias, eps, center, y, xhat, rstd):
    """Per row of x (rows, d): xhat = (x - mean) / sqrt(var + eps) (center) or x / sqrt(mean(x^2)
    + eps), y = xhat * weight + bias; also stores xhat and rstd for the backward."""
    rows, d = x.shape
    for r in range(rows):
        mean = x.dtype.type(0)
        if center:
            for j in range(d):
                mean += x[r, j]
            mean /= d
        square = x.dtype.type(0)
        for j in range(d):
            v = x[r, j] - mean
            square += v * v
        s = 1 / np.sqrt(square / d + eps)
        rstd[r] = s
        for j in range(d):
            h = (x[r, j] - mean) * s
            xhat[r, j] = h
            y[r, j] = h * weight[j] + bias[j]


@numba.njit(**ROW_SUMS)
def normalize_backward(grad, xhat, rstd, weight, center, dx):
    """Per row: dxhat = grad * weight,
    dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))  (no mean(dxhat) term without center)."""
    rows, d = grad.shape
    for r in range(rows):
        total = grad.dtype.type(0)
        projection = grad.dtype.type(0)
        for j in range(d):
            g = grad[r, j] * weight[j]
            total += g
            projection += g * xhat[r, j]
        mean_g = total / d if center else grad.dtype.type(0)
        mean_p = projection / d
        s = rstd[r]
        for j in range(d):
            dx[r, j] = s * (grad[r, j] * weight[j] - mean_g - xhat[r, j] * mean_p)


# error_model="numpy": a division by zero gives inf or NaN, as in NumPy, instead of raising; the
# check that raising needs would keep LLVM from vectorising the loop (10x slower).
@numba.njit(cache=True, error_model="numpy")
def adamw_kernel(p, g, m, v, b1, b2, eps, keep, step, v_correction):
    """One AdamW step in one pass, in place on p, m, v: the operations of
    reference_pointwise.adamw_update in its order, with its constants rounded to p's dtype as
    NumPy rounds them, so the results match it bit for bit. keep = 1 - lr * weight_decay,
    step = lr / (1 - b1^t), v_correction = 1 / (1 - b2^t)."""
    c = p.dtype.type
    one_minus_b1, one_minus_b2 = c(1 - b1), c(1 - b2)
    b1, b2, eps, keep, step, v_correction = c(b1), c(b2), c(eps), c(keep), c(step), c(v_correction)
    for i in range(p.size):
        gi = g[i]
        mi = m[i] * b1 + gi * one_minus_b1
        vi = v[i] * b2 + gi * gi * one_minus_b2
        m[i], v[i] = mi, vi
        p[i] = p[i] * keep - mi / (np.sqrt(vi * v_correction) + eps) * step


# --- the same signatures as the definitions in reference_pointwise.py -----------------------------
def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def gelu_tanh_forward(x):
    """(y, t) with t = tanh(u) saved for the backward."""
    xf = _flat(x)
    t = np.empty_like(xf)
    gelu_tanh_argument(xf, t)
    np.tanh(t, out=t)
    y = np.empty_like(xf)
    gelu_tanh_output(xf, t, y)
    return y.reshape(x.shape), t.reshape(x.shape)


def gelu_tanh_grad(x, t, grad):
    dx = np.empty(x.size, x.dtype)
    gelu_tanh_backward(_flat(x), _flat(t), _flat(grad.astype(x.dtype, copy=False)), dx)
    return dx.reshape(x.shape)


def _rows(a):
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def normalize(x, weight, bias, eps, center):
    """(y, xhat, rstd): layer norm (center) or RMS norm over the last axis."""
    d = x.shape[-1]
    weight = np.ones(d, x.dtype) if weight is None else np.ascontiguousarray(weight, x.dtype)
    bias = np.zeros(d, x.dtype) if bias is None else np.ascontiguousarray(bias, x.dtype)
    x2 = _rows(x)
    y, xhat = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty(len(x2), x.dtype)
    normalize_forward(x2, weight, bias, x.dtype.type(eps), center, y, xhat, rstd)
    return y.reshape(x.shape), xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,))


def normalize_grad(grad, xhat, rstd, weight, center):
    """dx of `normalize` (the weight and bias gradients are plain sums, left to the caller)."""
    d = xhat.shape[-1]
    weight = np.ones(d, xhat.dtype) if weight is None else np.ascontiguousarray(weight, xhat.dtype)
    g2 = _rows(grad.astype(xhat.dtype, copy=False))
    dx = np.empty_like(g2)
    normalize_backward(g2, _rows(xhat), np.ascontiguousarray(rstd).reshape(-1), weight, center, dx)
    return dx.reshape(xhat.shape)


def adamw_update(p, g, m, v, lr, b1, b2, eps, decay, t):
    """Step t of AdamW in place on p, m, v (see the reference); returns p. The kernel takes the
    constants in p's dtype, so float32 arithmetic stays float32. It writes through flat views of
    p, m and v, which need C-contiguous arrays (parameters and their moments are); other layouts
    take the reference, which writes in place whatever the layout."""
    if not (p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
        return reference_pointwise.adamw_update(p, g, m, v, lr, b1, b2, eps, decay, t)
    adamw_kernel(p.reshape(-1), np.ascontiguousarray(g, p.dtype).reshape(-1), m.reshape(-1),
                 v.reshape(-1), b1, b2, eps, 1 - decay, lr / (1 - b1 ** t), 1 / (1 - b2 ** t))
    return p


def _erf_scalar(x):
    return math.erf(x)


_erf_ufunc = None


def erf(x):
    """The error function elementwise, as a numba ufunc (one pass, no Python call per element)."""
    global _erf_ufunc
    if _erf_ufunc is None:  # compiled on first use, so `import minitx` does not wait for numba
        _erf_ufunc = numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)(_erf_scalar)
    return _erf_ufunc(x)
