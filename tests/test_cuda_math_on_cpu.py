"""The CUDA kernels' per-thread math (``Exp2Accumulator`` in the shared header) run on the CPU
through a ``_C`` test hook: no GPU here, so this is what checks the device arithmetic (SPEC §6)."""
import pytest
import torch

from conftest import FINITE_KINDS, NAN_KINDS, assert_within_eager_bound, eager_entropy, make_rows
from entropy_ops import reference as R


def _accumulate(C, row, temperature):
    row = row.contiguous()
    out = torch.empty(2)
    C.exp2_accumulate_row(row.data_ptr(), row.numel(), temperature, out.data_ptr())
    return out


# Up to about what one GPU thread folds (a chunk of <= 16384 elements over 256 threads); a single
# fp32 accumulator over a whole 32K row would measure sequential-summation error the kernels avoid.
@pytest.mark.parametrize("vocab", (1, 2, 7, 8, 9, 111, 1024))
@pytest.mark.parametrize("temperature", (1.0, 0.7))
def test_exp2_accumulator_matches_reference(native, vocab, temperature):
    kinds = FINITE_KINDS + NAN_KINDS if vocab > 2 else ()
    x, row_kinds = make_rows(12, vocab, torch.float32, kinds=kinds, seed=vocab)
    ours = torch.stack([_accumulate(native, row, temperature) for row in x])
    ref_h = R.entropy_ref(x, temperature)
    assert_within_eager_bound(ours[:, 1], ref_h, eager_entropy(x, temperature), row_kinds, "entropy")
    # log_norm = log sum_j e^((x_j - max) / T), what the backward's log p is formed from.
    def log_norm(rows):
        return torch.logsumexp((rows - rows.amax(-1, keepdim=True)) / temperature, -1)
    used = torch.isfinite(ref_h)
    assert_within_eager_bound(ours[used, 0], log_norm(x.double())[used], log_norm(x)[used],
                              what="log_norm")


def test_exp2_accumulator_of_finfo_masked_rows(native):
    """The GPU thread fold of a row masked with finfo.min (a first group of masked entries alone,
    rescaled to a real max when the allowed tokens come): finite, equal to the reference."""
    from entropy_common import finfo_masked_rows
    for vocab in (16, 1000):
        x, _ = finfo_masked_rows(vocab, torch.float32, seed=vocab)
        ours = torch.stack([_accumulate(native, row, 0.7) for row in x])
        ref_h = R.entropy_ref(x, 0.7)
        assert_within_eager_bound(ours[:, 1], ref_h, eager_entropy(x, 0.7), what="entropy")
