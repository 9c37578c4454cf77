"""SPEC §2: a row that is all ``-inf``, or holds a NaN or a ``+inf``, gives NaN (entropy and logp)
in that row only; every other row matches the reference as usual."""
import pytest
import torch

import entropy_ops as eo
from conftest import (
    NAN_KINDS,
    assert_within_eager_bound,
    eager_entropy,
    eager_logprobs_and_entropy,
    make_rows,
)
from entropy_ops.reference import entropy_ref, logprobs_and_entropy_ref


@pytest.mark.parametrize("vocab", [1, 2, 111, 1024, 32000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_nan_rows_are_isolated(backend, dtype, vocab):
    x, kinds = make_rows(8, vocab, dtype, kinds=NAN_KINDS, seed=vocab)
    y = torch.randint(vocab, (8,), generator=torch.Generator().manual_seed(1))
    h = eo.entropy(x)
    logp, h2 = eo.logprobs_and_entropy(x, y)
    bad = torch.tensor([k in NAN_KINDS for k in kinds])
    assert bad.sum() == 3
    for out in (h, h2, logp):
        assert torch.equal(out.isnan(), bad), f"NaN rows {out.isnan().nonzero().tolist()}, expected {bad.nonzero().tolist()}"
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y)
    eager_logp, eager_h = eager_logprobs_and_entropy(x[~bad], y[~bad])
    assert torch.equal(ref_h.isnan(), bad)
    assert_within_eager_bound(h[~bad], ref_h[~bad], eager_h, what="entropy")
    assert_within_eager_bound(h2[~bad], ref_h[~bad], eager_h, what="entropy")
    assert_within_eager_bound(logp[~bad], ref_logp[~bad], eager_logp, what="logp")


def test_nan_row_with_ignored_label_has_zero_logp(backend):
    """The ignored label wins: logp = 0 even where the row's entropy is NaN."""
    x = torch.randn(3, 64)
    x[1, 5] = float("nan")
    y = torch.tensor([3, -100, 4])
    logp, h = eo.logprobs_and_entropy(x, y)
    assert h[1].isnan() and logp[1].item() == 0
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y)
    assert_within_eager_bound(logp, ref_logp, eager_logprobs_and_entropy(x, y)[0], what="logp")


def test_nan_rows_with_temperature_tensor(backend):
    x = torch.randn(4, 300)
    x[0] = float("-inf")
    x[3, 299] = float("inf")
    t = torch.tensor([0.5, 1.0, 2.0, 0.8])
    h = eo.entropy(x, t)
    assert torch.equal(h.isnan(), torch.tensor([True, False, False, True]))
    assert_within_eager_bound(h[1:3], entropy_ref(x, t)[1:3], eager_entropy(x[1:3], t[1:3]), what="entropy")
