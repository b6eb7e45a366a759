"""Reduced precision: training in bfloat16 or float16 with float32 master weights.

    with precision.autocast("bf16"):     # or "fp16"; "fp32" (or None) changes nothing
        loss = model(x, y)[1]
    loss.backward()                       # runs under the policy the forward ran under

A `Policy` says in which short format the values passed between ops are stored. `Function.apply`
(autograd.py) hands every op to the active policy; under it an op
  - reads its floating inputs rounded to the format: the weights too, so the float32 master
    weights stay untouched and the op sees a rounded copy, as a bf16 GEMM sees a cast copy;
  - computes in float32 on those values: products and sums accumulate in float32, as tensor-core
    hardware does;
  - stores its output rounded to the format, in place, so whatever the op saved of it for its
    backward is the stored value, not a more precise one.
The backward does the same with gradients: each node's incoming gradient is rounded and so is
every gradient it returns. Gradients reaching a master weight accumulate into its float32 `.grad`,
and the optimizer updates the float32 weights: small updates are not lost to a short format.

Two kinds of ops are exempt (`Policy.exempt`):
  float32  softmax, log-softmax, log-sum-exp, the norms and the loss: computed and kept in float32
           (neither their inputs nor their outputs are rounded, in either direction), because
           exponentials, variances and the loss are where a short format loses most
  exact    reshapes, transposes, indexing, gathers, concatenation, `where`: they move values
           without arithmetic, so there is nothing to round
Every other op, an op added tomorrow included, is a low-precision op.

The arrays stay float32 arrays holding values of the short format: the format is emulated, by
exact round-to-nearest-even in `round_to`, the one place where rounding happens. It runs on NumPy
and CuPy alike: float16 through the array module's own conversion (the GPU's hardware one on
CuPy), bfloat16 (the top 16 bits of a float32) by integer arithmetic on the bits.

float16 has 5 exponent bits: gradients below 2^-24 (its smallest subnormal) round to zero and
those below 2^-14 (its smallest normal) lose bits. `LossScaler` multiplies the loss, hence every
gradient, by a large scale before the backward and divides the master gradients by it after.
"""
import contextlib

import numpy

from .backend import get_array_module

FORMATS = ("fp32", "bf16", "fp16")
FP16_SMALLEST_SUBNORMAL = 2.0 ** -24
FP16_SMALLEST_NORMAL = 2.0 ** -14
FP16_MAX = 65504.0


def round_to(x, fmt):
    """float32 array `x` rounded to the nearest value of format `fmt` ("bf16" or "fp16"), ties to
    even, as a new float32 array; arrays of other dtypes (and non-arrays) come back as they are.

    bfloat16 keeps a float32's sign, all 8 exponent bits and the top 7 mantissa bits. Adding
    0x7FFF plus the lowest kept bit to the bit pattern and cutting the low 16 bits rounds to
    nearest, ties to even; a carry out of the mantissa steps the exponent up (to infinity past
    the largest bfloat16). NaN becomes the quiet NaN of its sign.
    """
    if getattr(x, "dtype", None) != numpy.float32:
        return x
    xp = get_array_module(x)
    if fmt == "fp16":
        with _overflow_allowed():
            return x.astype(xp.float16).astype(xp.float32)
    bits = x.view(xp.uint32)
    rounded = (bits + (((bits >> 16) & _ONE) + _HALF_ULP)) & _TOP16
    nan = (bits & _SIGN) | _QUIET_NAN
    return xp.where(xp.isnan(x), nan, rounded).view(xp.float32)


def _overflow_allowed():
    """No NumPy warnings (CuPy gives none) for overflow to inf and the NaNs that follow: in a short format they are
    expected, and the loss scaler is what deals with them."""
    return numpy.errstate(over="ignore", invalid="ignore")


_ONE, _HALF_ULP, _TOP16, _SIGN, _QUIET_NAN = (numpy.uint32(b) for b in (
    1, 0x7FFF, 0xFFFF0000, 0x80000000, 0x7FC00000))


class Policy:
    """How ops store their values under a short format `fmt` ("bf16" or "fp16"); see the module
    docstring. `Function.apply` runs an op's forward through `forward`, which marks the op's
    node so that the backward walk runs its backward through `backward`."""

    def __init__(self, fmt):
        if fmt not in ("bf16", "fp16"):
            raise ValueError(f"a precision policy needs 'bf16' or 'fp16', got {fmt!r}")
        self.fmt = fmt
        from .ops import elementwise, fused, reduce, shape  # ops sit above this module
        self.exempt = {op: "float32" for op in (fused.Softmax, fused.LogSoftmax, fused.CrossEntropy,
                                              fused.Normalize, reduce.LogSumExp)}
        self.exempt.update({op: "exact" for op in (shape.Reshape, shape.Permute, shape.Expand,
                                                 shape.GetItem, shape.Take, shape.Concatenate,
                                                 elementwise.Where, elementwise.Transfer)})

    def __repr__(self):
        return f"Policy({self.fmt!r})"

    def forward(self, ctx, arrays, params):
        """ctx.fn's forward on the rounded inputs, its output rounded in place."""
        ctx.policy = self
        with _overflow_allowed():
            if ctx.fn in self.exempt:
                return ctx.fn.forward(ctx, *arrays, **params)
            out = ctx.fn.forward(ctx, *[round_to(a, self.fmt) for a in arrays], **params)
        if out.dtype != numpy.float32:
            return out
        out = get_array_module(out).asarray(out)   # a NumPy scalar becomes a 0-d array
        out[...] = round_to(out, self.fmt)
        return out

    def backward(self, ctx, grad):
        """ctx.fn's backward on the rounded gradient, the gradients it returns rounded."""
        with _overflow_allowed():
            if ctx.fn in self.exempt:
                return ctx.fn.backward(ctx, grad)
            grads = ctx.fn.backward(ctx, round_to(grad, self.fmt))
        if not isinstance(grads, tuple):
            return round_to(grads, self.fmt)
        return tuple(round_to(g, self.fmt) for g in grads)


_policy = None   # the policy ops run under now; None = float32 as written


def current():
    return _policy


def make_policy(precision):
    """The Policy for "bf16" or "fp16"; None for "fp32" or None (no policy at all)."""
    if precision in (None, "fp32"):
        return None
    if precision not in FORMATS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {FORMATS}")
    return Policy(precision)


@contextlib.contextmanager
def autocast(precision):
    """Run the ops inside under `precision`: "bf16", "fp16", "fp32" or None (float32 as written),
    or a policy object: anything with Policy's `forward` and `backward` (the precision experiment
    passes one that rounds nothing and counts the gradients)."""
    global _policy
    previous = _policy
    _policy = make_policy(precision) if precision is None or isinstance(precision, str) else precision
    try:
        yield _policy
    finally:
        _policy = previous


class LossScaler:
    """Dynamic loss scaling for float16 (Micikevicius et al. 2018, "Mixed precision training").

    The backward starts from `scale` instead of 1, so every gradient is `scale` times larger and
    the small ones clear float16's underflow; `unscale` divides the master gradients by it and
    says whether all are finite. A step with an inf or NaN gradient is skipped (the weights and
    the optimizer's state stay as they were) and the scale halves; after `growth_interval` clean
    steps in a row it doubles, to find again the largest scale that does not overflow.
    """

    def __init__(self, scale=2.0 ** 16, growth_interval=1000):
        self.scale, self.growth_interval = float(scale), growth_interval
        self.clean_steps = 0   # finite steps since the scale last changed
        self.skipped = 0       # steps skipped so far

    def backward(self, loss, params):
        """loss.backward() with the gradient scaled by `scale`, the gradients of `params` unscaled,
        the scale updated; returns whether the gradients are finite (whether to take the step)."""
        xp = get_array_module(loss.data)
        with _overflow_allowed():  # the engine's sums of overflowed gradients too
            loss.backward(xp.full(loss.shape, self.scale, dtype=loss.dtype))
        finite = self.unscale(params)
        self.update(finite)
        return finite

    def unscale(self, params):
        """Divide every parameter's .grad by the scale in place; True if all are finite (one
        device-to-host copy on the GPU, of one flag)."""
        grads = [p.grad.data for p in params if p.grad is not None]
        if not grads:
            return True
        xp = get_array_module(*grads)
        for g in grads:
            g *= 1 / self.scale
        return bool(xp.stack([xp.isfinite(g).all() for g in grads]).all())

    def update(self, finite):
        """After a step: halve the scale and count a skip if it had non-finite gradients, else
        double it after growth_interval clean steps."""
        if not finite:
            self.scale, self.clean_steps = self.scale / 2, 0
            self.skipped += 1
            return
        self.clean_steps += 1
        if self.clean_steps == self.growth_interval:
            self.scale, self.clean_steps = self.scale * 2, 0

    def state_dict(self):
        return {"scale": self.scale, "growth_interval": self.growth_interval,
                "clean_steps": self.clean_steps, "skipped": self.skipped}

    def load_state_dict(self, state):
        self.scale, self.growth_interval = float(state["scale"]), state["growth_interval"]
        self.clean_steps, self.skipped = state["clean_steps"], state["skipped"]
