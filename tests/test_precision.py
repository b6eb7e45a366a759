"""Reduced precision: the rounding, the policy's forward and backward, loss scaling, --precision."""
import json
import struct

import ml_dtypes
import numpy
import pytest

import minitx as mx
from minitx import precision
from minitx.__main__ import main
from minitx.ops.fused import CrossEntropy
from minitx.precision import LossScaler, autocast, round_to

from test_train import TEXT, TINY


def bits(x):
    return numpy.asarray(x, numpy.float32).view(numpy.uint32)


def floats(patterns):
    return numpy.asarray(patterns, numpy.uint32).view(numpy.float32)


EDGES = floats([
    0x00000000, 0x80000000,                          # +0, -0
    0x00000001, 0x00007FFF, 0x00008000, 0x00008001,  # float32 subnormals: below, at, above a tie
    0x00018000, 0x807FFFFF, 0x007F8000, 0x00800000,  # tie to even (up), largest subnormal, smallest normal
    0x3F808000, 0x3F818000, 0x3F808001, 0xBF808000,  # 1 + ties: to even down, up; past the tie; negative
    0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF,              # largest floats: stays finite, ties to inf, inf
    0x7F800000, 0xFF800000,                          # inf, -inf
    0x7FC00000, 0x7F800001, 0xFFC00001, 0x7FFFFFFF, 0xFFFFFFFF])  # NaNs, quiet and signalling


def test_bf16_rounding_matches_ml_dtypes_bit_for_bit():
    # every sign, exponent and bfloat16 mantissa (all 65536 top halves), each with low halves at,
    # below and above the tie, zero, all ones, and random
    rng = numpy.random.default_rng(0)
    top = numpy.arange(1 << 16, dtype=numpy.uint32) << 16
    low = numpy.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], numpy.uint32)
    patterns = numpy.concatenate([(top[:, None] | low).ravel(),
                                  top | rng.integers(0, 1 << 16, top.size, dtype=numpy.uint32),
                                  rng.integers(0, 1 << 32, 200_000, dtype=numpy.uint32), bits(EDGES)])
    x = floats(patterns)
    with numpy.errstate(invalid="ignore"):
        expected = x.astype(ml_dtypes.bfloat16).view(numpy.uint16).astype(numpy.uint32) << 16
    got = bits(round_to(x, "bf16"))
    wrong = numpy.flatnonzero(got != expected)
    assert not wrong.size, [(hex(p), hex(g), hex(e)) for p, g, e in
                            zip(patterns[wrong[:5]], got[wrong[:5]], expected[wrong[:5]])]
    assert got.dtype == numpy.uint32 and round_to(x, "bf16") is not x


def half(value):
    """float16 rounding of a Python float by the standard library (round half to even)."""
    return struct.unpack("<e", struct.pack("<e", value))[0]


def test_fp16_rounding_matches_an_independent_rounding():
    rng = numpy.random.default_rng(1)
    x = numpy.concatenate([rng.standard_normal(20_000) * 10.0 ** rng.uniform(-9, 4.5, 20_000),
                           numpy.arange(1, 4096) * 2.0 ** -25,    # subnormals and the ties between them
                           1 + numpy.arange(0, 4096) * 2.0 ** -11]).astype(numpy.float32)
    x = x[abs(x) < 65504]
    got = round_to(x, "fp16")
    assert got.dtype == numpy.float32
    numpy.testing.assert_array_equal(got, [half(float(v)) for v in x])
    # past the largest float16, inf; ties at the bottom go to even (zero)
    numpy.testing.assert_array_equal(round_to(numpy.float32([65519, 65520, -7e4, 2 ** -25, 2 ** -24]), "fp16"),
                                     [65504, numpy.inf, -numpy.inf, 0, 2 ** -24])
    assert numpy.isnan(round_to(EDGES[-5:], "fp16")).all()


def test_round_to_leaves_other_dtypes_alone():
    x = numpy.array([1 / 3], numpy.float64)
    assert round_to(x, "bf16") is x and round_to(numpy.arange(3), "fp16").dtype.kind == "i"


def r(x):
    return round_to(numpy.asarray(x, numpy.float32), "bf16")


def test_gradients_under_the_policy_are_the_float32_gradients_of_the_rounded_computation():
    """loss = cross_entropy(tanh(x W1^T + b1) W2): under bf16 each op reads rounded inputs, computes
    in float32 and stores a rounded output; the backward rounds each gradient into and out of every
    op; cross-entropy runs in float32. The same, written out in NumPy, must agree exactly."""
    rng = numpy.random.default_rng(2)
    x, w1, b1, w2 = (rng.standard_normal(s).astype(numpy.float32) for s in [(6, 8), (5, 8), (5,), (5, 7)])
    targets = rng.integers(0, 7, 6)
    params = [mx.tensor(a, requires_grad=True) for a in (x, w1, b1, w2)]
    with autocast("bf16"):
        a = mx.ops.linear(params[0], params[1], params[2]).tanh()
        loss = mx.cross_entropy(mx.einsum("nh,hc->nc", a, params[3]), targets)
    loss.backward()

    h = r(r(x) @ r(w1).T + r(b1))
    t = r(numpy.tanh(h))
    logits = r(t @ r(w2))
    ctx = mx.autograd.Node(CrossEntropy, (None, None), (True, False))
    expected_loss = CrossEntropy.forward(ctx, logits, targets)
    dlogits = r(CrossEntropy.backward(ctx, numpy.float32(1))[0])       # rounded into the einsum
    dw2 = r(t.T @ dlogits)
    dt = r(r(dlogits @ r(w2).T))                                        # out of einsum, into tanh
    dh = r(r(dt * (1 - t * t)))                                         # out of tanh, into linear
    expected = [r(dh @ r(w1)), r(dh.T @ r(x)), r(dh.sum(axis=0)), dw2]

    assert loss.item() == expected_loss
    for p, e, name in zip(params, expected, ["x", "w1", "b1", "w2"]):
        numpy.testing.assert_array_equal(p.grad.numpy(), e, err_msg=name)
    # the master copies were only read, and the gradients really are rounded
    numpy.testing.assert_array_equal(params[1].numpy(), w1)
    assert not numpy.array_equal(r(w1), w1)


def test_exempt_ops_keep_float32_and_fp32_is_no_policy():
    x = mx.tensor(numpy.random.default_rng(3).standard_normal((4, 9)), requires_grad=True)
    with autocast("bf16"):
        p = x.softmax()
        y = x * 1.0
    assert not numpy.array_equal(r(p.numpy()), p.numpy())   # softmax: float32 output
    numpy.testing.assert_array_equal(r(y.numpy()), y.numpy())
    assert precision.current() is None and precision.make_policy("fp32") is None
    with autocast("fp32") as policy:
        assert policy is None
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        precision.make_policy("fp8")


def test_fp16_backward_underflows_small_gradients_and_loss_scaling_rescues_them():
    """loss = sum(w * a * b): dL/dw = a * b, here 2^-27 (under float16's smallest subnormal 2^-24),
    15 * 2^-26 (a subnormal: 3.75 units of 2^-24) and 2^-14 (normal). Every a and b is a float16."""
    a = mx.tensor(numpy.float32([2 ** -13, 3 * 2 ** -10, 2 ** -7]))
    b = mx.tensor(numpy.float32([2 ** -14, 5 * 2 ** -16, 2 ** -7]))
    true = a.numpy() * b.numpy()
    w = mx.tensor(numpy.ones(3, numpy.float32), requires_grad=True)
    with autocast("fp16"):
        loss = (w * a * b).sum()
    loss.backward()
    numpy.testing.assert_array_equal(w.grad.numpy(), [0, 4 * 2 ** -24, 2 ** -14])
    w.grad = None
    with autocast("fp16"):
        loss = (w * a * b).sum()
    assert LossScaler(2.0 ** 13).backward(loss, [w])    # scaled by 2^13 all are normal: exact
    numpy.testing.assert_array_equal(w.grad.numpy(), true)


def test_loss_scaling_skips_exactly_the_steps_with_non_finite_gradients():
    steps = [1.0, 1e4, 1.0, 1.0, numpy.nan, 1e4, 1.0, 1.0, 1.0, 1.0]   # 1e4 * scale overflows float16
    bad = {i for i, v in enumerate(steps) if not v == 1.0}
    model = mx.nn.Linear(4, 3)
    opt = mx.optim.AdamW(model.parameters(), lr=0.1)
    scaler = LossScaler(scale=2.0 ** 8, growth_interval=3)
    scales, x = [], mx.tensor(numpy.ones((2, 4), numpy.float32))
    for i, value in enumerate(steps):
        before = [p.numpy().copy() for p in model.parameters()]
        state = [{k: v.copy() for k, v in s.items()} for s in opt.state]
        with autocast("fp16"):
            loss = (model(x) * value).sum()
        opt.zero_grad()
        finite = scaler.backward(loss, opt.params)
        assert finite == (i not in bad), i
        if finite:
            opt.step()
        scales.append(scaler.scale)
        after = [p.numpy() for p in model.parameters()]
        unchanged = all(numpy.array_equal(a, b) for a, b in zip(before, after))
        assert unchanged == (i in bad), i
        if i in bad:
            assert all(numpy.array_equal(s[k], t[k]) for s, t in zip(state, opt.state) for k in s)
    assert scaler.skipped == len(bad) and opt.n_steps == len(steps) - len(bad)
    # halve on each skip; double after 3 clean steps in a row
    assert scales == [256, 128, 128, 128, 64, 32, 32, 32, 64, 64]
    restored = LossScaler()
    restored.load_state_dict(json.loads(json.dumps(scaler.state_dict())))
    assert restored.state_dict() == scaler.state_dict()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def summary(out):
    return json.loads((out / "summary.json").read_text())


def test_short_bf16_run_reaches_the_fp32_validation_loss(corpus, tmp_path):
    val = {}
    for p in ("fp32", "bf16"):
        out = tmp_path / p
        assert main(["train", "--data", str(corpus), "--out-dir", str(out), "--max-iters", "60",
                     "--lr", "1e-2", "--warmup-iters", "5", *TINY, "--precision", p]) == 0
        val[p] = summary(out)["val_loss_full"]
    assert val["fp32"] < 2.0 and abs(val["bf16"] - val["fp32"]) < 0.05, val


def test_fp16_run_logs_the_scale_and_resumes_exactly(corpus, tmp_path):
    """A first scale of 2^24 overflows: the run skips steps and halves it. Stopping after 8 steps
    and resuming to 16 reproduces the run that went straight to 16 (the scaler is in the
    checkpoint), while the weights stay float32."""
    common = ["train", "--data", str(corpus), "--lr", "3e-3", "--min-lr", "3e-3", "--warmup-iters", "1",
              "--eval-interval", "100", "--no-full-eval", *TINY, "--precision", "fp16",
              "--loss-scale", str(2.0 ** 24)]
    assert main([*common, "--out-dir", str(tmp_path / "full"), "--max-iters", "16"]) == 0
    assert main([*common, "--out-dir", str(tmp_path / "cut"), "--max-iters", "8"]) == 0
    assert main([*common, "--out-dir", str(tmp_path / "cut"), "--max-iters", "16", "--resume"]) == 0
    full, cut = step_records(tmp_path / "full"), step_records(tmp_path / "cut")
    assert full[0]["skipped"] == 1 and full[0]["loss_scale"] == 2.0 ** 23
    assert full[-1]["skipped"] < 8 and full[-1]["loss_scale"] == 2.0 ** (24 - full[-1]["skipped"])
    assert len(full) == 16 and cut == full
    with numpy.load(tmp_path / "full" / "checkpoint.npz") as f:
        assert {f[k].dtype for k in f.files if k != "__meta__"} == {numpy.dtype(numpy.float32)}


def step_records(run_dir):
    """The per-step records of a run's log, without their timings."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "ms"} for r in records if "loss" in r]


def test_precision_needs_float32_master_weights(corpus, tmp_path, capsys):
    assert main(["train", "--data", str(corpus), "--out-dir", str(tmp_path), *TINY,
                 "--precision", "bf16", "--dtype", "float64"]) == 1
    assert "needs --dtype float32" in capsys.readouterr().err
