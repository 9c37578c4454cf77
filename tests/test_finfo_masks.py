"""Vocabularies masked with ``torch.finfo(dtype).min`` (``logits.masked_fill(~allowed, finfo.min)``,
the usual action-mask / constrained-decoding idiom) are finite input: entropy, log-probs and
gradients stay finite and within SPEC §2's bound, on every CPU backend and ISA. Such a row's
masked slices make online-softmax states of huge negative max, whose rescale to a real max
underflows; the product ``sum_exp * delta`` there overflows, and ``-inf * 0`` made the entropy
(and its gradient) NaN, in the native CPU kernels once a whole block was masked, and in the
Triton and CUDA kernels for as little as the first 16 tokens. Also a row of ``finfo.min`` at
T < 1, whose ``lse = max / T + log S`` overflows: the saved row state ``(max, log S)`` stays
finite, and the backward never forms ``lse``."""
import pytest
import torch

import entropy_ops as eo
from entropy_common import check_finfo_masked_rows, check_uniform_row_of_finfo_min


def test_finfo_masked_rows(backend):
    check_finfo_masked_rows()


def test_finfo_masked_rows_on_every_isa(native):
    before = native.get_isa()
    try:
        with eo.use_backend("cpu"):
            for isa in native.supported_isas():
                native.set_isa(isa)
                check_finfo_masked_rows(vocabs=(4099,), dtypes=(torch.bfloat16,), temperatures=(0.7,))
    finally:
        native.set_isa(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_lse_overflow_keeps_an_exact_backward(backend, dtype):
    check_uniform_row_of_finfo_min(dtype)
