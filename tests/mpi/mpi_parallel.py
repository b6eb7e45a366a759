"""Data and tensor parallel against one process; run by tests/test_distributed.py as

    mpiexec -n 2 python -m pytest tests/mpi/mpi_parallel.py

Every rank runs every test; the one-process reference is computed on each rank too.
"""
import numpy
import pytest

import minitx
from minitx import distributed, nn
from minitx.optim import AdamW

WORLD = distributed.init()
BLOCK = 16
CLIP = 0.1  # below every step's gradient norm: every step clips
TOKENS = numpy.random.default_rng(1).integers(0, 40, size=4000)  # the same corpus on every rank
CONFIGS = {
    "gelu": nn.TransformerConfig(vocab_size=40, block_size=BLOCK, n_layer=2, n_head=4, d_model=32),
    "swiglu-gqa-rope": nn.TransformerConfig(vocab_size=40, block_size=BLOCK, n_layer=2, n_head=4,
                                            n_kv_head=2, d_model=32, mlp="swiglu", pos="rope",
                                            bias=False),
}


def test_two_ranks():
    assert WORLD.size == 2, "run under mpiexec -n 2"


def make_model(strategy, cfg):
    minitx.manual_seed(0)
    return strategy.prepare(nn.DecoderOnly(cfg).to(dtype="float64"))


def train(strategy, cfg, batch_size, steps, clip):
    """The training loop's calls into a strategy; returns [(loss, grad norm)] and the model."""
    model = make_model(strategy, cfg)
    opt = AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    rng = numpy.random.default_rng(0)
    history = []
    for _ in range(steps):
        x, y = strategy.get_batch(TOKENS, batch_size, BLOCK, rng)
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        strategy.reduce_gradients()
        norm = strategy.clip_grad_norm(model.parameters(), clip).item()
        opt.step()
        history.append((strategy.loss(loss.item()), norm))
    return numpy.array(history), model


def whole_weights(strategy, model):
    return {name: strategy.full(name, p.data) for name, p in model.named_parameters()}


def assert_same_run(strategy, parallel, single, rtol=1e-10):
    """Losses and gradient norms to rtol, every weight to 1e-9 (they are O(0.1))."""
    (history, model), (ref_history, ref_model) = parallel, single
    numpy.testing.assert_allclose(history[:, 0], ref_history[:, 0], rtol=rtol, atol=0)  # losses
    numpy.testing.assert_allclose(history[:, 1], ref_history[:, 1], rtol=rtol, atol=0)  # norms
    assert (ref_history[:, 1] > CLIP).all()  # every step clipped: the norm must be the global one
    ref = whole_weights(distributed.SingleProcess(), ref_model)
    for name, value in whole_weights(strategy, model).items():
        numpy.testing.assert_allclose(value, ref[name], rtol=0, atol=1e-9, err_msg=name)


def test_data_parallel_batch_6_per_rank_equals_one_process_batch_12():
    cfg, dp = CONFIGS["gelu"], distributed.DataParallel(WORLD)
    assert_same_run(dp, train(dp, cfg, batch_size=6, steps=20, clip=CLIP),
                    train(distributed.SingleProcess(), cfg, batch_size=12, steps=20, clip=CLIP))


def test_data_parallel_ranks_see_different_windows_and_keep_equal_weights():
    dp = distributed.DataParallel(WORLD)
    x, _ = dp.get_batch(TOKENS, 6, BLOCK, numpy.random.default_rng(0))
    both = WORLD.allgather(x)                                    # (2, 6, BLOCK)
    whole, _ = distributed.SingleProcess().get_batch(TOKENS, 12, BLOCK, numpy.random.default_rng(0))
    numpy.testing.assert_array_equal(both.reshape(12, BLOCK), whole)
    _, model = train(dp, CONFIGS["gelu"], batch_size=6, steps=3, clip=1.0)
    for name, p in model.named_parameters():
        numpy.testing.assert_array_equal(WORLD.allgather(p.data)[1], p.data, err_msg=name)


def test_gradient_buckets_of_any_size_give_the_mean_gradient():
    model = make_model(distributed.DataParallel(WORLD), CONFIGS["gelu"])
    params = model.parameters()
    own = [numpy.random.default_rng(WORLD.rank).standard_normal(p.shape) for p in params]
    mean = [WORLD.allgather(g).mean(axis=0) for g in own]
    for bucket_bytes in (1, 10_000, 2 ** 30):
        buckets = distributed.GradientBuckets(params, WORLD, bucket_bytes)
        assert len(buckets.buckets) == {1: len(params), 2 ** 30: 1}.get(bucket_bytes, len(buckets.buckets))
        for p, g in zip(params, own):
            p.grad = minitx.tensor(g, dtype="float64")
        buckets.allreduce_mean()
        for p, m in zip(params, mean):
            numpy.testing.assert_allclose(p.grad.data, m, rtol=1e-14)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tensor_parallel_forward_and_backward_equal_the_unsharded_model(name):
    cfg = CONFIGS[name]
    x, y = distributed.SingleProcess().get_batch(TOKENS, 4, BLOCK, numpy.random.default_rng(3))
    ref = make_model(distributed.SingleProcess(), cfg)
    tp = distributed.TensorParallel(WORLD)
    model = make_model(tp, cfg)
    assert isinstance(model.stack.blocks[0].attn, distributed.ShardedAttention)
    assert model.stack.blocks[0].attn.q.weight.shape == (cfg.d_model // 2, cfg.d_model)
    (logits, loss), (ref_logits, ref_loss) = model(x, y), ref(x, y)
    numpy.testing.assert_allclose(logits.data, ref_logits.data, rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=1e-10)
    loss.backward()
    ref_loss.backward()
    ref_grads = dict(ref.named_parameters())
    for pname, p in model.named_parameters():
        numpy.testing.assert_allclose(tp.full(pname, p.grad.data), ref_grads[pname].grad.data,
                                      rtol=1e-10, atol=1e-12, err_msg=pname)


def test_tensor_parallel_training_equals_one_process():
    cfg, tp = CONFIGS["swiglu-gqa-rope"], distributed.TensorParallel(WORLD)
    assert_same_run(tp, train(tp, cfg, batch_size=12, steps=8, clip=CLIP),
                    train(distributed.SingleProcess(), cfg, batch_size=12, steps=8, clip=CLIP))


def test_whole_and_part_are_inverse():
    tp = distributed.TensorParallel(WORLD)
    model = make_model(tp, CONFIGS["swiglu-gqa-rope"])
    for name, p in model.named_parameters():
        numpy.testing.assert_array_equal(tp.part(name, tp.full(name, p.data)), p.data, err_msg=name)


def step_bytes(strategy, cfg, batch_size):
    model = make_model(strategy, cfg)
    x, y = strategy.get_batch(TOKENS, batch_size, BLOCK, numpy.random.default_rng(0))
    WORLD.bytes_sent = 0
    loss = model(x, y)[1]
    loss.backward()
    strategy.reduce_gradients()
    strategy.clip_grad_norm(model.parameters(), 1.0)
    strategy.loss(loss.item())
    return WORLD.bytes_sent, model


def test_bytes_per_step_follow_the_formulas():
    cfg = CONFIGS["gelu"]
    sent, model = step_bytes(distributed.DataParallel(WORLD), cfg, 6)
    assert sent == 8 * model.n_params() + 8                    # the gradient, and the loss
    sent, _ = step_bytes(distributed.TensorParallel(WORLD), cfg, 6)
    assert sent == 4 * cfg.n_layer * 6 * BLOCK * cfg.d_model * 8 + 8  # 2+2 (B, N, C) per block, the norm
