"""Fast paths of the ops against their readable definitions: einsum's BLAS-shaped views of the
operands (no copy for a linear layer's weight gradient), and the embedding gradient summed by
sorted runs instead of numpy.add.at."""
import importlib

import numpy as np
import pytest

import minitx as mx
from minitx.ops.shape import _add_rows

einsum_module = importlib.import_module("minitx.ops.einsum")   # minitx.ops.einsum is the function

CONTRACTIONS = [   # (subscripts, shapes, what numpy.einsum is given)
    ("...o,...i->oi", ((3, 5, 7), (3, 5, 4)), "bno,bni->oi"),   # a linear layer's weight gradient
    ("...i,oi->...o", ((3, 5, 4), (7, 4)), None),
    ("bnv,bnd->vd", ((2, 3, 6), (2, 3, 4)), None),
    ("bhqd,bhkd->bhqk", ((2, 3, 5, 4), (2, 3, 6, 4)), None),
    ("bhqk,bhkd->bqhd", ((2, 3, 5, 6), (2, 3, 6, 4)), None),
    ("bij,bjk->ik", ((2, 3, 4), (2, 4, 5)), None),               # letters that cannot merge
    ("abc,cb->a", ((3, 4, 5), (5, 4)), None),
    ("ij,jk,kl->il", ((3, 4), (4, 5), (5, 6)), None),
    ("i,i->", ((4,), (4,)), None),
    ("ij,k->ijk", ((2, 3), (4,)), None),
]


@pytest.mark.parametrize("subscripts, shapes, spelled", CONTRACTIONS, ids=[c[0] for c in CONTRACTIONS])
def test_contract_matches_numpy_einsum(subscripts, shapes, spelled):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in shapes]
    np.testing.assert_allclose(einsum_module.contract(subscripts, *arrays),
                               np.einsum(spelled or subscripts, *arrays), rtol=1e-12, atol=1e-12)
    strided = [np.asfortranarray(a) for a in arrays]            # the same through strided inputs
    np.testing.assert_allclose(einsum_module.contract(subscripts, *strided),
                               np.einsum(spelled or subscripts, *arrays), rtol=1e-12, atol=1e-12)


def test_weight_gradient_reads_its_operands_without_copying(monkeypatch):
    """dW = einsum("...o,...i->oi", g, x): both operands reach matmul as views of g and x."""
    g, x = np.ones((4, 6, 8)), np.ones((4, 6, 3))
    seen = []
    real_matmul = np.matmul

    def matmul(a, b):
        seen.extend([a, b])
        return real_matmul(a, b)
    monkeypatch.setattr(np, "matmul", matmul)
    einsum_module.contract("...o,...i->oi", g, x)
    assert np.shares_memory(seen[0], g) and np.shares_memory(seen[1], x)


def test_einsum_gradient_through_the_merged_path():
    x = mx.randn(3, 5, 4, requires_grad=True, dtype="float64")
    w = mx.randn(7, 4, requires_grad=True, dtype="float64")
    mx.gradcheck(lambda x, w: mx.einsum("bni,oi->bno", x, w).tanh().sum(), (x, w))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, count, width", [(65, 768, 16), (5, 7, 3), (1000, 50, 4), (3, 0, 2)])
def test_add_rows_matches_add_at(n, count, width, dtype):
    rng = np.random.default_rng(0)
    indices = rng.integers(-n, n, count)                 # repeats and negative indices
    rows = rng.standard_normal((count, width)).astype(dtype)
    expected, actual = np.zeros((n, width), dtype), np.zeros((n, width), dtype)
    np.add.at(expected, indices, rows)
    _add_rows(actual, indices, rows)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def test_embedding_gradient_with_repeated_ids():
    table = mx.randn(6, 3, requires_grad=True, dtype="float64")
    ids = np.array([[0, 5, 5, 2], [2, 2, 0, 4]])
    mx.gradcheck(lambda t: (mx.take(t, ids, axis=0) ** 2).sum(), (table,))
