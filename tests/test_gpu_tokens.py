"""The token-level ops and losses on CUDA tensors (`pytest -m gpu`, skipped without a GPU): the
same results as on CPU, no host synchronisation under ``torch.cuda.set_sync_debug_mode("error")``
(forward and backward), and ``torch.compile(fullgraph=True)`` (SPEC §3.2, issue 6)."""
import pytest
import torch

import entropy_ops as eo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]


def _batch(B=8, T=512, V=1000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=gen) * 2
    mask = torch.rand(B, T, generator=gen) < 0.7
    mask[3] = False  # a sequence without valid tokens
    logp = -torch.rand(B, T, generator=gen) * 3
    old = logp + 0.1 * torch.randn(B, T, generator=gen)
    adv = torch.randn(B, 1, generator=gen).expand(B, T).contiguous()
    keys = torch.randint(0, 2**62, (B, T), generator=gen)
    return logits, mask, logp, old, adv, keys


def _all_ops(logits, mask, logp, old, adv, keys):
    h = eo.entropy(logits, mask=mask)
    w = eo.window_entropy(h, mask)
    cu = torch.arange(0, mask.numel() + 1, mask.shape[1], device=mask.device)
    return (
        w,
        eo.window_entropy(h.reshape(-1), mask.reshape(-1), window=3, offset=0, cu_seqlens=cu),
        eo.masked_quantile(h, mask, 0.8),
        eo.masked_quantile(h, mask, torch.tensor([0.2, 0.5], device=h.device), per_sequence=False),
        eo.peak_entropy_mask(w, mask, 0.8),
        eo.token_covariance(logp, adv, mask),
        eo.clip_cov_policy_loss(logp, old, adv, mask, clip_cov_ratio=0.01, clip_cov_lb=0.0, random_keys=keys),
        eo.kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=0.01),
        eo.agg_loss(logp, mask, "seq-mean-token-mean"),
        eo.selective_entropy_loss(logits, mask, 1.0),
    )


def _flat(out):
    for o in out:
        if isinstance(o, tuple):
            yield from o
        else:
            yield o


def test_cuda_matches_cpu():
    cpu = _batch()
    gpu = tuple(t.cuda() for t in cpu)
    for a, b in zip(_flat(_all_ops(*gpu)), _flat(_all_ops(*cpu))):
        if a.dtype == torch.bool:
            assert torch.equal(a.cpu(), b)
        else:
            torch.testing.assert_close(a.cpu().double(), b.double(), rtol=1e-5, atol=1e-5, equal_nan=True)


def test_no_host_sync_forward_and_backward():
    logits, mask, logp, old, adv, keys = (t.cuda() for t in _batch(seed=1))
    logits.requires_grad_(True)
    logp.requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = list(_flat(_all_ops(logits, mask, logp, old, adv, keys)))
        gen = torch.Generator(device="cuda").manual_seed(0)
        out.append(eo.clip_cov_policy_loss(logp, old, adv, mask, generator=gen).loss)
        threshold = eo.EntropyThreshold().cuda()
        out.append(threshold(eo.entropy(logits.detach(), mask=mask), mask))
        loss = sum(o.float().sum() for o in out if o.is_floating_point() and o.requires_grad)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(logits.grad).all() and torch.isfinite(logp.grad).all()


def test_compile_fullgraph_on_cuda():
    torch._dynamo.reset()
    args = tuple(t.cuda() for t in _batch(B=4, T=64, V=128, seed=2))
    compiled = torch.compile(_all_ops, fullgraph=True)
    for a, b in zip(_flat(compiled(*args)), _flat(_all_ops(*args))):
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, equal_nan=True)
