"""The graph engine, the Tensor API, the gradient checker and the backend switch."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minitx as mx
from minitx.autograd import Function


def test_chain_of_50000_ops_backpropagates_without_recursion():
    x = mx.tensor(1.0, requires_grad=True, dtype="float64")
    y = x
    for _ in range(50_000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad.item() == 1.0


def test_shared_subexpression_gets_both_gradients():
    x = mx.tensor([2.0, 3.0], requires_grad=True, dtype="float64")
    h = x * x                 # used twice below
    (h + h * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * 2 * np.array([2.0, 3.0]))


def test_gradients_accumulate_across_backward_calls():
    x = mx.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 5.0])


def test_leaf_gradients_are_not_shared_arrays():
    a = mx.tensor([1.0], requires_grad=True)
    b = mx.tensor([1.0], requires_grad=True)
    (a + b).sum().backward()  # add hands the same array to both inputs
    a.grad.data *= 10
    assert b.grad.item() == 1.0


def test_graph_is_freed_after_backward_unless_retained():
    x = mx.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * np.exp([1.0, 2.0]), rtol=1e-6)
    with pytest.raises(RuntimeError, match="a second time.*retain_graph=True"):
        y.backward()


def test_backward_needs_grad_for_non_scalars_and_a_graph():
    x = mx.randn(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"needs a scalar.*\(2, 3\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\)"):
        (x * 2).backward(mx.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        mx.randn(2).sum().backward()
    (x * 2).backward(mx.ones(2, 3))
    np.testing.assert_allclose(x.grad.numpy(), 2.0)


def test_no_grad_records_nothing():
    x = mx.randn(3, requires_grad=True)
    with mx.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf
    assert mx.is_grad_enabled()

    @mx.no_grad()
    def f(t):
        return t * 2
    assert not f(x).requires_grad


def test_intermediate_tensors_get_no_grad_and_detach_cuts_the_graph():
    x = mx.randn(3, requires_grad=True)
    h = x * 2
    (h.detach() * x).sum().backward()
    assert h.grad is None
    np.testing.assert_allclose(x.grad.numpy(), h.numpy())


# --- the gradient checker itself must catch a wrong backward -----------------------------------
class WrongSquare(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return a * a

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.a  # should be 2 * a


def test_gradcheck_catches_a_wrong_backward_and_says_where():
    x = mx.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True, dtype="float64")
    with pytest.raises(mx.GradcheckError, match=r"input 0 .*4 of 4 elements.*worst at index \(\d, \d\): analytic"):
        mx.gradcheck(lambda x: WrongSquare.apply(x), (x,))
    with pytest.raises(mx.GradcheckError, match="random direction"):
        mx.gradcheck(lambda x: WrongSquare.apply(x), (x,), n_directions=3)


def test_gradcheck_passes_random_directions_and_leaves_inputs_alone():
    x = mx.randn(20, 30, requires_grad=True, dtype="float64")
    before = x.numpy().copy()
    assert mx.gradcheck(lambda x: (x.tanh() ** 2).sum(axis=0), (x,), n_directions=5)
    np.testing.assert_array_equal(x.numpy(), before)
    assert x.grad is None


def test_gradcheck_refuses_float32_and_inputs_without_grad():
    with pytest.raises(ValueError, match="float64"):
        mx.gradcheck(lambda x: x.sum(), (mx.randn(3, requires_grad=True),))
    with pytest.raises(ValueError, match="no input has requires_grad"):
        mx.gradcheck(lambda x: x.sum(), (mx.randn(3, dtype="float64"),))


# --- the Tensor API -------------------------------------------------------------------------------
def test_tensor_dtypes_and_conversions():
    assert mx.tensor([1.0, 2.0]).dtype == np.float32
    assert mx.tensor(np.zeros(3)).dtype == np.float32           # float32 unless asked
    assert mx.tensor([1.0], dtype="float64").dtype == np.float64
    assert mx.tensor([1, 2]).dtype == np.int64
    assert mx.tensor([True]).dtype == np.bool_
    t = mx.tensor([[1.5, 2.5]])
    assert t.shape == (1, 2) and t.ndim == 2 and t.size == 2 and len(t) == 1 and t.device == "cpu"
    assert t[0, 1].item() == 2.5 and t.tolist() == [[1.5, 2.5]]
    assert isinstance(t.numpy(), np.ndarray)
    assert "tensor([[1.5, 2.5]], dtype=float32" in repr(t)
    assert t.to(dtype="float64").dtype == np.float64


def test_bad_dtypes_and_devices_are_named():
    with pytest.raises(ValueError, match="unsupported dtype 'float16'"):
        mx.zeros(2, dtype="float16")
    with pytest.raises(ValueError, match="unknown dtype"):
        mx.zeros(2, dtype="floaty")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        mx.zeros(2, device="tpu")
    with pytest.raises(ValueError, match="only floating tensors"):
        mx.tensor([1, 2], requires_grad=True)
    with pytest.raises(ValueError, match="item.. needs a tensor with one element"):
        mx.zeros(2).item()


@pytest.mark.skipif(mx.cuda_available(), reason="checks the message on machines without a GPU")
def test_asking_for_cuda_without_a_gpu_says_what_to_do():
    with pytest.raises(RuntimeError, match="device 'cuda'.*(CuPy|GPU)"):
        mx.zeros(2, device="cuda")
    assert mx.cuda_available() is False


def test_default_device_from_environment():
    code = "import minitx; print(minitx.default_device())"
    env = dict(os.environ, MINITX_DEVICE="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "cpu"
    env["MINITX_DEVICE"] = "gpu0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "unknown device 'gpu0'" in out.stderr


def test_factories():
    assert mx.zeros(2, 3).numpy().sum() == 0 and mx.ones((2, 3)).numpy().sum() == 6
    assert mx.zeros_like(mx.ones(4, dtype="float64")).dtype == np.float64
    assert mx.ones_like(mx.zeros(4)).numpy().sum() == 4
    np.testing.assert_array_equal(mx.arange(5).numpy(), np.arange(5))
    np.testing.assert_array_equal(mx.arange(1, 7, 2).numpy(), [1, 3, 5])
    r = mx.rand(1000)
    assert 0 <= r.numpy().min() and r.numpy().max() < 1
    assert mx.randn(3, 4, requires_grad=True).requires_grad


def test_manual_seed_makes_draws_repeatable():
    mx.manual_seed(123)
    a = mx.randn(5).numpy()
    mx.manual_seed(123)
    np.testing.assert_array_equal(mx.randn(5).numpy(), a)
    state = mx.get_rng_state()
    b = mx.rand(3).numpy()
    mx.set_rng_state(state)
    np.testing.assert_array_equal(mx.rand(3).numpy(), b)


def test_comparisons_give_boolean_tensors_outside_the_graph():
    x = mx.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for result, expected in [(x < 2, [1, 0, 0]), (x <= 2, [1, 1, 0]), (x > 2, [0, 0, 1]),
                             (x >= 2, [0, 1, 1]), (x == 2, [0, 1, 0]), (x != 2, [1, 0, 1])]:
        assert result.dtype == np.bool_ and not result.requires_grad
        np.testing.assert_array_equal(result.numpy(), expected)


def test_mixed_dtypes_give_gradients_in_each_input_dtype():
    a = mx.tensor([1.0, 2.0], requires_grad=True)                  # float32
    b = mx.tensor([3.0, 4.0], requires_grad=True, dtype="float64")
    (a * b).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64


def test_gpt_backward_runs_only_engine_ops_and_kernels():
    """A GPT's backward pass runs code only in tensor.py, autograd.py, ops/ and kernels/ (and the
    array-module helpers of backend.py): nn/ builds the graph and has no backward of its own."""
    package = Path(mx.__file__).parent
    model = mx.nn.DecoderOnly(mx.nn.TransformerConfig(vocab_size=11, block_size=8, n_layer=1,
                                                      n_head=2, d_model=8, dropout=0.1))
    ids = np.arange(16).reshape(2, 8) % 11
    loss = model(ids, (ids + 1) % 11)[1]
    ran = set()

    def record(frame, event, arg):
        path = Path(frame.f_code.co_filename)
        if event == "call" and package in path.parents:
            ran.add(path.relative_to(package).as_posix())
    sys.setprofile(record)
    try:
        loss.backward()
    finally:
        sys.setprofile(None)
    outside = {f for f in ran if f not in ("tensor.py", "autograd.py", "backend.py")
               and not f.startswith(("ops/", "kernels/"))}
    assert outside == set()
    assert {"autograd.py", "ops/fused.py", "ops/einsum.py", "kernels/__init__.py"} <= ran


# --- in-place changes between forward and backward ---------------------------------------------
def test_an_optimizer_step_before_backward_is_refused_naming_the_op():
    w = mx.randn(3, 2, requires_grad=True, dtype="float64")
    x = mx.randn(4, 3, dtype="float64")
    loss = mx.einsum("nd,dk->nk", x, w).tanh().sum()
    (w * 1.0).sum().backward()       # a first gradient, so the optimizer has one to apply
    mx.optim.SGD([w], lr=0.1).step()  # w changes while `loss`'s graph still holds its old value
    with pytest.raises(RuntimeError, match=r"backward through einsum: input 1 changed in place"):
        loss.backward()


@pytest.mark.parametrize("change", ["assign", "augmented"])
def test_changing_data_before_backward_is_refused(change):
    x = mx.tensor([1.0, 2.0], requires_grad=True, dtype="float64")
    y = x * x
    if change == "assign":
        x.data = np.array([5.0, 5.0])
    else:
        x.data += 1
    with pytest.raises(RuntimeError, match="backward through mul: input 0 and input 1 changed"):
        y.sum().backward()


def test_a_changed_output_is_refused_and_unchanged_graphs_run():
    x = mx.tensor([1.0, 2.0], requires_grad=True, dtype="float64")
    y = x.exp()          # exp's backward reads its output
    y.data *= 2
    with pytest.raises(RuntimeError, match="changed in place"):
        y.backward(np.ones(2))
    x.data = x.data * 3  # before the forward pass: nothing to refuse
    x.exp().sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp([3.0, 6.0]))


def test_every_change_through_data_counts_a_version():
    p = mx.nn.Parameter(np.zeros((2, 2)))
    assert p._version == 0
    p.grad = mx.ones(2, 2)
    opt = mx.optim.AdamW([p], lr=0.1)
    opt.step()           # weight decay and the update, one fused in-place change
    p.data = np.ones((2, 2))
    assert p._version == 2
