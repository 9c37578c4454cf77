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
from conftest import check_finfo_masked_rows


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
    """Four equal ``finfo.min`` logits at T = 0.5: ``max / T`` overflows, so ``lse`` would be -inf,
    but the distribution is uniform: ``logp = -log 4``, ``H = log 4``, and the gradient of
    ``logp_0 + H`` is ``(1[j = 0] - 1/4) / T`` (the entropy term is 0 for a uniform row). The saved
    row state ``(max, log S) = (finfo.min, log 4)`` is finite. The float64 reference cannot serve
    here (its ``lse - sum p z`` cancels 3e38-sized terms)."""
    x = torch.full((1, 4), torch.finfo(dtype).min, dtype=dtype, requires_grad=True)
    logp, h = eo.logprobs_and_entropy(x, torch.tensor([0]), 0.5)
    (logp + h).sum().backward()
    log4 = torch.tensor(4.0).log()
    torch.testing.assert_close(logp, -log4.view(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h, log4.view(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad.float(), torch.tensor([[1.5, -0.5, -0.5, -0.5]]), rtol=0, atol=0)
