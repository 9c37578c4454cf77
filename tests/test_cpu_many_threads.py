"""The `cpu` backend on many threads: a server's `torch.get_num_threads()` is 32 to 128, far more
than this machine's cores and than the rows or sequences of a small batch. Every op that runs on
the native thread pool must give the bits of one thread (SPEC §2: results never depend on how the
work is split), and the pool must cope with more workers than work.
"""
import pytest
import torch

import entropy_ops as eo

from conftest import assert_same_bits, skip_unless_available

THREADS = (1, 3, 16, 64)


@pytest.fixture(autouse=True)
def cpu_only():
    skip_unless_available("cpu")
    before = torch.get_num_threads()
    with eo.use_backend("cpu"):
        yield
    torch.set_num_threads(before)


def _vocab_ops(n, vocab, dtype):
    g = torch.Generator().manual_seed(n * 1000 + vocab)
    x = (torch.randn(n, vocab, generator=g) * 3).to(dtype)
    y = torch.randint(vocab, (n,), generator=g)
    g_logp, g_h = torch.randn(n, generator=g), torch.randn(n, generator=g)
    out = {}
    leaf = x.clone().requires_grad_(True)
    logp, h = eo.logprobs_and_entropy(leaf, y, 0.8)
    torch.autograd.backward((logp, h), (g_logp, g_h))
    out.update(logp=logp, h=h, grad=leaf.grad)
    leaf = x.clone().requires_grad_(True)
    top_h = eo.top_p_entropy(leaf, 0.9)
    top_h.backward(g_h)
    out.update(top_h=top_h, top_grad=leaf.grad, top_mask=eo.top_p_mask(x, 0.9))
    leaf = x.clone().requires_grad_(True)
    min_logp = eo.min_p_logprobs(leaf, y, 0.05)
    min_logp.backward(torch.where(torch.isfinite(min_logp), g_logp, 0))
    out.update(min_logp=min_logp, min_grad=leaf.grad)
    out.update({f"stats_{k}": v for k, v in eo.token_stats(x, y)._asdict().items()})
    return {k: v.detach() for k, v in out.items()}


def _token_ops(b, t):
    g = torch.Generator().manual_seed(b * 1000 + t)
    ent = torch.rand(b, t, generator=g) * 4
    mask = torch.rand(b, t, generator=g) < 0.8
    logp = -torch.rand(b, t, generator=g) * 3
    old = logp + torch.randn(b, t, generator=g) * 0.05
    adv = torch.randn(b, t, generator=g)
    out = {}
    leaf = ent.clone().requires_grad_(True)
    win = eo.window_entropy(leaf, mask, window=4, offset=1)
    win.backward(torch.randn(b, t, generator=g))
    out.update(window=win, window_grad=leaf.grad)
    leaf = ent.clone().requires_grad_(True)
    long_win = eo.window_entropy(leaf, mask, window=40, offset=0)
    long_win.backward(torch.randn(b, t, generator=g))
    out.update(long_window=long_win, long_window_grad=leaf.grad)
    out["quantile_seq"] = eo.masked_quantile(ent, mask, 0.8)
    out["quantile_all"] = eo.masked_quantile(ent, mask, 0.95, per_sequence=False)
    out["peak"] = eo.peak_entropy_mask(ent, mask, 0.8)
    out["kl_cov"] = eo.kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=0.01).selected
    clip = eo.clip_cov_policy_loss(logp, old, adv, mask, clip_cov_ratio=0.01, clip_cov_lb=-5.0,
                                   generator=torch.Generator().manual_seed(3))
    out["clip_cov"] = clip.selected
    return {k: v.detach() for k, v in out.items()}


def _same_bits_on_any_thread_count(compute):
    torch.set_num_threads(1)
    want = compute()
    for threads in THREADS[1:]:
        torch.set_num_threads(threads)
        got = compute()
        for name, a in want.items():
            assert_same_bits(got[name], a, f"{name}: {threads} threads vs 1")


@pytest.mark.parametrize("n, vocab", [(1, 5000), (5, 300), (70, 4099), (257, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_vocab_row_ops_same_bits_on_many_threads(n, vocab, dtype):
    _same_bits_on_any_thread_count(lambda: _vocab_ops(n, vocab, dtype))


@pytest.mark.parametrize("b, t", [(1, 7), (3, 1000), (70, 300), (4, 70000)])
def test_token_ops_same_bits_on_many_threads(b, t):
    _same_bits_on_any_thread_count(lambda: _token_ops(b, t))
