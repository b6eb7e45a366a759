"""Numerical gradient checking: compare what autograd computes with central differences.

    d f(x) / d x_i  ~  (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)

The truncation error of the central difference is O(eps^2) and the rounding error about
1e-16 / eps, so in float64 with eps = 1e-6 the estimate is good to ~1e-9 relative: enough to
catch any wrong backward. (In float32 the rounding error alone would be ~1e-1: hence float64 only.)
"""
import numpy

from .autograd import no_grad
from .backend import get_array_module
from .tensor import Tensor


class GradcheckError(AssertionError):
    """A gradient from autograd disagrees with its numerical estimate."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, n_directions=None, seed=0):
    """Check the gradients of `fn(*inputs)` with respect to every input that requires grad.

    The output (any shape) is reduced to the scalar sum(r * fn(x)) with a fixed random r, one
    backward gives its analytic gradient, and central differences give the numerical one:
    element by element (the full check), or along `n_directions` random directions per input
    (cheaper, for large inputs). Inputs must be float64.

    Returns True, or raises GradcheckError naming the input, the worst element, the analytic
    and numerical values and how many elements disagree.
    """
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != numpy.float64:
            raise ValueError(f"gradcheck: input {i} is {inputs[i].dtype}; finite differences need "
                             "float64 (create it with dtype='float64')")
    saved_grads = [x.grad for x in inputs if isinstance(x, Tensor)]
    saved_data = {i: inputs[i].data for i in checked}
    try:
        for i in checked:
            inputs[i].data, inputs[i].grad = inputs[i].data.copy(), None
        out = fn(*inputs)
        xp = get_array_module(out.data)
        rng = numpy.random.default_rng(seed)
        r = xp.asarray(rng.standard_normal(out.shape))
        if not out.requires_grad:
            raise ValueError("gradcheck: fn's output does not depend on any input that requires grad")
        out.backward(r)

        def objective():
            with no_grad():
                return float((fn(*inputs).data * r).sum())

        for i in checked:
            x = inputs[i].data
            analytic = inputs[i].grad.data if inputs[i].grad is not None else xp.zeros_like(x)
            if n_directions is None:
                _check_elements(i, x, analytic, objective, eps, atol, rtol)
            else:
                _check_directions(i, x, analytic, objective, eps, atol, rtol, n_directions, rng)
    finally:
        for x, g in zip((x for x in inputs if isinstance(x, Tensor)), saved_grads):
            x.grad = g
        for i, data in saved_data.items():
            inputs[i].data = data
    return True


def _central_difference(x, step, objective, eps):
    """(f(x + eps step) - f(x - eps step)) / (2 eps), leaving x as it was."""
    original = x.copy()
    x += eps * step
    f_plus = objective()
    x[...] = original - eps * step
    f_minus = objective()
    x[...] = original
    return (f_plus - f_minus) / (2 * eps)


def _check_elements(i, x, analytic, objective, eps, atol, rtol):
    xp = get_array_module(x)
    numeric = numpy.zeros(x.shape)
    step = xp.zeros_like(x)
    for idx in numpy.ndindex(x.shape):
        step[idx] = 1
        numeric[idx] = _central_difference(x, step, objective, eps)
        step[idx] = 0
    analytic = numpy.asarray(analytic.get() if hasattr(analytic, "get") else analytic)
    bad = ~numpy.isclose(analytic, numeric, rtol=rtol, atol=atol)
    if bad.any():
        worst = numpy.unravel_index(numpy.argmax(numpy.abs(analytic - numeric) * bad), x.shape)
        raise GradcheckError(
            f"gradient of input {i} (shape {x.shape}) is wrong at {bad.sum()} of {x.size} elements; "
            f"worst at index {tuple(int(j) for j in worst)}: analytic {analytic[worst]:.10g}, "
            f"numerical {numeric[worst]:.10g}, difference {abs(analytic[worst] - numeric[worst]):.3g}")


def _check_directions(i, x, analytic, objective, eps, atol, rtol, n_directions, rng):
    xp = get_array_module(x)
    for k in range(n_directions):
        d = xp.asarray(rng.standard_normal(x.shape))
        d /= float(xp.sqrt((d * d).sum())) or 1.0
        numeric = _central_difference(x, d, objective, eps)
        expected = float((analytic * d).sum())
        if not numpy.isclose(expected, numeric, rtol=rtol, atol=atol):
            raise GradcheckError(
                f"gradient of input {i} (shape {x.shape}) is wrong along random direction {k}: "
                f"analytic {expected:.10g}, numerical {numeric:.10g}, "
                f"difference {abs(expected - numeric):.3g}")
