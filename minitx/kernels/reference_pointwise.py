"""Reference GELU (tanh form), layer/RMS normalisation, erf and the AdamW update: the readable
array code that the fused CPU kernels (numba_pointwise.py) are tested against, and what runs on
CuPy.

Written with the array module of its inputs (`xp`), so it runs on numpy and cupy alike. Each
backward restates the forward it undoes.
"""
import math

import numpy

from ..backend import get_array_module

SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def gelu_tanh_forward(x):
    """(y, t): y = x/2 (1 + t), t = tanh(sqrt(2/pi) (x + 0.044715 x^3)), t kept for backward."""
    t = get_array_module(x).tanh(SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x)))  # x*x*x: NumPy's
    return 0.5 * x * (1 + t), t                                                   # x**3 is ~50x slower


def gelu_tanh_grad(x, t, grad):
    """dL/dx = grad (1 + t + x (1 - t^2) du/dx) / 2,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    du = SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
    return grad * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)


def normalize(x, weight, bias, eps, center):
    """(y, xhat, rstd) of layer norm (center=True) or RMS norm (center=False) over the last axis:

        layer norm: xhat = (x - mean(x)) / sqrt(var(x) + eps)
        RMS norm:   xhat = x / sqrt(mean(x^2) + eps)
        y = xhat * weight + bias                   (weight, bias optional)
    """
    xp = get_array_module(x)
    if center:
        x = x - x.mean(axis=-1, keepdims=True)
    rstd = 1 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    xhat = x * rstd
    y = xhat if weight is None else xhat * weight
    return (y if bias is None else y + bias), xhat, rstd


def normalize_grad(grad, xhat, rstd, weight, center):
    """dL/dx of `normalize`: with dxhat = grad * weight,
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); RMS norm has no mean(dxhat)."""
    dxhat = grad if weight is None else grad * weight
    dx = dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    if center:
        dx = dx - dxhat.mean(axis=-1, keepdims=True)
    return rstd * dx


def erf(x):
    """The error function elementwise: CuPy has one; NumPy has none, so math.erf per element."""
    if get_array_module(x) is numpy:
        return numpy.vectorize(math.erf, otypes=[x.dtype])(x)
    import cupyx.scipy.special
    return cupyx.scipy.special.erf(x)


def adamw_update(p, g, m, v, lr, b1, b2, eps, decay, t):
    """Step t (from 1) of AdamW on parameter p with gradient g, in place on p and its moments m, v;
    returns p. `decay` is lr * weight_decay (0 for none), applied to p before the step:

        p *= 1 - decay
        m = b1 m + (1 - b1) g                        first moment (mean of g)
        v = b2 v + (1 - b2) g^2                      second moment (mean of g^2)
        p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    One scratch array d serves every line (the update is bound by memory traffic).
    """
    xp = get_array_module(p)
    d = xp.multiply(g, 1 - b1)
    m *= b1
    m += d
    xp.multiply(g, g, out=d)
    d *= 1 - b2
    v *= b2
    v += d
    xp.multiply(v, 1 / (1 - b2 ** t), out=d)
    xp.sqrt(d, out=d)
    d += eps
    xp.divide(m, d, out=d)
    d *= lr / (1 - b1 ** t)
    if decay:
        p *= 1 - decay
    p -= d
    return p
