"""Forward of ``entropy`` and ``logprobs_and_entropy`` vs the float64 reference over SPEC §2's
regime boundaries: V, N, leading shapes, dtypes, special rows (one-hot, uniform, +-1e4 shifts,
``-inf`` masked vocab)."""
import math

import pytest
import torch

import entropy_ops as eo
from conftest import (
    FLOAT_DTYPES,
    acc_dtype,
    assert_within_eager_bound,
    eager_entropy,
    eager_logprobs_and_entropy,
    make_labels,
    make_rows,
)
from entropy_common import check_far_label_logps
from entropy_ops.reference import entropy_ref, logprobs_and_entropy_ref

VOCABS = [1, 2, 111, 1023, 1024, 32000, 151936]
LAYOUTS = ["N0", "N1", "Nodd", "BT", "1d"]


def leading_shape(layout, vocab):
    big = vocab >= 32000
    return {"N0": (0,), "N1": (1,), "Nodd": (7,) if big else (9,), "BT": (2, 3) if big else (3, 5), "1d": ()}[layout]


def make_input(layout, vocab, dtype):
    leading = leading_shape(layout, vocab)
    x, kinds = make_rows(math.prod(leading), vocab, dtype, seed=vocab + len(leading))
    return x.reshape(*leading, vocab), kinds


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_entropy_matches_reference(backend, dtype, vocab, layout):
    x, kinds = make_input(layout, vocab, dtype)
    h = eo.entropy(x)
    assert h.dtype == acc_dtype(dtype)
    assert h.shape == x.shape[:-1]
    assert_within_eager_bound(h, entropy_ref(x), eager_entropy(x), kinds, what="entropy")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_logprobs_and_entropy_matches_reference(backend, dtype, vocab, layout):
    x, kinds = make_input(layout, vocab, dtype)
    y = make_labels(len(kinds), vocab, seed=vocab).reshape(x.shape[:-1])
    logp, h = eo.logprobs_and_entropy(x, y)
    assert logp.dtype == h.dtype == acc_dtype(dtype)
    assert logp.shape == h.shape == x.shape[:-1]
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y)
    eager_logp, eager_h = eager_logprobs_and_entropy(x, y)
    assert_within_eager_bound(logp, ref_logp, eager_logp, kinds, what="logp")
    assert_within_eager_bound(h, ref_h, eager_h, kinds, what="entropy")
    assert (logp[y == -100] == 0).all()


@pytest.mark.parametrize("vocab", [111, 1024, 32000, 151936])
@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_shifted_rows_keep_entropy_within_1e5(backend, vocab, shift):
    """SPEC §2: fp32 rows shifted by +-1e4 keep the entropy error <= 1e-5 (eager loses ~1e-3)."""
    gen = torch.Generator().manual_seed(vocab)
    x = torch.randn(5, vocab, generator=gen) * torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])[:, None] + shift
    y = torch.randint(vocab, (5,), generator=gen)
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y)
    h = eo.entropy(x)
    logp, h2 = eo.logprobs_and_entropy(x, y)
    assert (h.double() - ref_h).abs().max().item() <= 1e-5
    assert (h2.double() - ref_h).abs().max().item() <= 1e-5
    assert_within_eager_bound(logp, ref_logp, eager_logprobs_and_entropy(x, y)[0], what="logp")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_uniform_and_onehot_rows_are_exact(backend, dtype):
    """Closed forms: a uniform row has H = log V and logp = -log V; a one-hot row (rest -inf) has
    H = 0 and logp = 0 at the hot label, -inf elsewhere."""
    vocab = 1000
    x = torch.zeros(4, vocab, dtype=dtype)
    x[1] = 5.0
    x[2:] = float("-inf")
    x[2, 17] = 1.0
    x[3, 999] = -3.0
    y = torch.tensor([3, 999, 17, 0])
    logp, h = eo.logprobs_and_entropy(x, y)
    tol = 1e-5
    assert torch.allclose(h[:2].double(), torch.full((2,), math.log(vocab), dtype=torch.float64), atol=tol, rtol=0)
    assert torch.allclose(logp[:2].double(), torch.full((2,), -math.log(vocab), dtype=torch.float64), atol=tol, rtol=0)
    assert h[2].item() == 0 and h[3].item() == 0
    assert logp[2].item() == 0
    assert logp[3].item() == float("-inf")


@pytest.mark.parametrize("vocab", [8])
def test_many_rows(backend, vocab):
    """SPEC §2: no grid-size limit on N; N = 70000 rows on a small V."""
    x, kinds = make_rows(70000, vocab, torch.float32, seed=7)
    y = make_labels(70000, vocab, n_ignored=100, seed=8)
    logp, h = eo.logprobs_and_entropy(x, y)
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y)
    eager_logp, eager_h = eager_logprobs_and_entropy(x, y)
    assert_within_eager_bound(logp, ref_logp, eager_logp, kinds, what="logp")
    assert_within_eager_bound(h, ref_h, eager_h, kinds, what="entropy")
    assert_within_eager_bound(eo.entropy(x.bfloat16()), entropy_ref(x.bfloat16()),
                              eager_entropy(x.bfloat16()), kinds, what="entropy bf16")


def test_far_label_logps_at_low_temperatures(backend):
    """|logp| in the hundreds to thousands (T in {0.01, 0.1}, the label at the row's min): every op
    that returns a label's log-prob rounds it once, row by row within the eager bound."""
    check_far_label_logps()
