"""Every public op under ``torch.compile(fullgraph=True, dynamic=True)``, the mode trainers with
varying sequence lengths end up in (dynamo also turns a dimension dynamic by itself on its second
size): the batch size changes between calls without an error, and outputs and gradients equal
eager. Under ``dynamic=True`` Python floats reach the entry checks as symbolic values, so those
checks must stay comparisons that dynamo can trace (``math.isfinite`` of one broke every
vocabulary op called with its default temperature, and the fused linear head with any)."""
import pytest
import torch

import entropy_ops as eo

V = 37
SIZES = (5, 9, 13)


def _weighted_sum(t):
    return (t * torch.linspace(0.5, 1.5, t.numel()).view(t.shape)).sum()


def _rows(n):
    gen = torch.Generator().manual_seed(n)
    return torch.randn(n, V, generator=gen) * 2, torch.randint(0, V, (n,), generator=gen)


def _tokens(n):
    gen = torch.Generator().manual_seed(n)
    return torch.rand(3, n, generator=gen) * 4, torch.rand(3, n, generator=gen) < 0.8


def _policy(n):
    gen = torch.Generator().manual_seed(n)
    logp = -torch.rand(4, n, generator=gen) * 3
    old = logp + 0.1 * torch.randn(4, n, generator=gen)
    return logp, old, torch.randn(4, n, generator=gen), torch.rand(4, n, generator=gen) < 0.8


def _linear(n):
    gen = torch.Generator().manual_seed(n)
    return torch.randn(n, 8, generator=gen), torch.randn(V, 8, generator=gen), torch.randint(0, V, (n,), generator=gen)


# name -> (inputs of size n, the function compiled: a scalar to differentiate, or a tuple of outputs)
CASES = {
    "entropy": (lambda n: _rows(n)[:1], lambda x: _weighted_sum(eo.entropy(x))),
    "logprobs_and_entropy": (_rows, lambda x, y: _weighted_sum(sum(eo.logprobs_and_entropy(x, y, 0.7)))),
    "top_p_entropy": (lambda n: _rows(n)[:1], lambda x: _weighted_sum(eo.top_p_entropy(x, 0.8, 0.7))),
    "top_p_mask": (lambda n: _rows(n)[:1], lambda x: (eo.top_p_mask(x, 0.8),)),
    "min_p_logprobs": (_rows, lambda x, y: _weighted_sum(eo.min_p_logprobs(x, y, 0.05, 0.7))),
    "token_stats": (_rows, lambda x, y: tuple(eo.token_stats(x, y))),
    "linear_logprobs_and_entropy": (_linear, lambda h, w, y: _weighted_sum(sum(eo.linear_logprobs_and_entropy(
        h, w, y, temperature=0.7, softcap=20.0)))),
    "window_entropy": (_tokens, lambda h, m: _weighted_sum(eo.window_entropy(h, m))),
    "masked_quantile": (_tokens, lambda h, m: (eo.masked_quantile(h, m, 0.8),
                                               eo.masked_quantile(h, m, 0.3, per_sequence=False))),
    "peak_entropy_mask": (_tokens, lambda h, m: (eo.peak_entropy_mask(h, m, 0.8),)),
    "selective_entropy_loss": (lambda n: (torch.randn(2, n, V, generator=torch.Generator().manual_seed(n)),
                                          torch.ones(2, n, dtype=torch.bool)),
                               lambda x, m: eo.selective_entropy_loss(x, m, 0.5, coef=0.1)),
    "agg_loss": (lambda n: _policy(n)[2:], lambda a, m: eo.agg_loss(a, m, "seq-mean-token-mean")),
    "token_covariance": (lambda n: _policy(n)[:1] + _policy(n)[2:], lambda l, a, m: (eo.token_covariance(l, a, m),)),
    "kl_cov_policy_loss": (_policy, lambda l, o, a, m: eo.kl_cov_policy_loss(l, o, a, m, kl_cov_ratio=0.1).loss),
    "clip_cov_policy_loss": (lambda n: (*_policy(n), torch.randint(0, 2**62, (4, n), generator=torch.Generator().manual_seed(n))),
                             lambda l, o, a, m, k: eo.clip_cov_policy_loss(l, o, a, m, clip_cov_ratio=0.1, clip_cov_lb=-1.0,
                                                                           random_keys=k).loss),
}


def _leaves(args):
    return [a.clone().requires_grad_() if a.is_floating_point() else a for a in args]


@pytest.mark.parametrize("name", sorted(CASES))
def test_dynamic_shapes_compile_fullgraph(backend, name):
    make, fn = CASES[name]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for n in SIZES:
        args = make(n)
        ours, ref_args = _leaves(args), _leaves(args)
        got, want = compiled(*ours), fn(*ref_args)
        if isinstance(want, tuple):
            for a, b in zip(got, want):
                if b is not None:
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
            continue
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        got.backward()
        want.backward()
        for a, b in zip(ours, ref_args):
            if isinstance(a, torch.Tensor) and a.requires_grad:
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
