"""Differentiation other than ``backward()``: torch.library custom ops have no forward-mode rule, so
forward-mode AD through them would drop the tangent without a word (0 or None: a wrong derivative).
Every differentiable op raises under it instead, naming itself; the reverse-mode transforms of
``torch.func`` either raise (torch 2.13's custom-op autograd is an ``autograd.Function`` that
functorch cannot transform) or give ``torch.autograd.grad``'s gradient; ``vmap`` of a forward is
the batched call; the policy losses are torch ops around a selection and support forward mode."""
import pytest
import torch
from torch.autograd import forward_ad

import entropy_ops as eo

V = 11
LOGITS = torch.randn(3, 4, V, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
LABELS = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(1))
HIDDEN = LOGITS[..., :5]
MASK = torch.ones(3, 4, dtype=torch.bool)


# (name, function of the differentiated tensor to a tensor, that tensor)
DIFFERENTIABLE = [
    ("entropy", lambda x: eo.entropy(x), LOGITS),
    ("logprobs_and_entropy", lambda x: eo.logprobs_and_entropy(x, LABELS)[0], LOGITS),
    ("top_p_entropy", lambda x: eo.top_p_entropy(x, top_p=0.9), LOGITS),
    ("min_p_logprobs", lambda x: eo.min_p_logprobs(x, LABELS, min_p=0.05), LOGITS),
    ("linear_logprobs_and_entropy",
     lambda w: eo.linear_logprobs_and_entropy(HIDDEN, w, LABELS)[1],
     torch.randn(V, 5, dtype=torch.float64)),
    ("window_entropy", lambda h: eo.window_entropy(h, window=2), LOGITS[..., 0]),
    ("top_p_entropy", lambda x: eo.selective_entropy_loss(x, MASK, 1.0), LOGITS),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(DIFFERENTIABLE)]


def _reverse(f, x, v):
    """The Jacobian-vector product ``J(x) v`` from reverse mode, one output entry at a time (small
    shapes)."""
    x = x.detach().requires_grad_(True)
    out = f(x)
    rows = [torch.autograd.grad(o, x, retain_graph=True)[0] for o in out.reshape(-1)]
    return torch.stack([(r * v).sum() for r in rows]).view(out.shape)


@pytest.mark.parametrize("name,f,x", DIFFERENTIABLE, ids=IDS)
def test_forward_mode_raises_instead_of_dropping_the_tangent(name, f, x):
    v = torch.randn_like(x)
    assert _reverse(f, x, v).abs().max() > 0  # the true derivative is not 0: a dropped tangent is wrong
    with pytest.raises(NotImplementedError, match=f"^{name}: forward-mode AD"):
        torch.func.jvp(f, (x,), (v,))
    with pytest.raises(NotImplementedError, match=f"^{name}: forward-mode AD"):
        torch.func.jacfwd(f)(x)
    with forward_ad.dual_level(), pytest.raises(NotImplementedError, match=f"^{name}: forward-mode AD"):
        f(forward_ad.make_dual(x, v))


@pytest.mark.parametrize("name,f,x", DIFFERENTIABLE, ids=IDS)
def test_reverse_transforms_raise_or_agree_with_autograd(name, f, x):
    x_ = x.detach().requires_grad_(True)
    want = torch.autograd.grad(f(x_).sum(), x_)[0]
    for transform in (lambda: torch.func.grad(lambda t: f(t).sum())(x),
                      lambda: torch.func.vjp(f, x)[1](torch.ones_like(f(x)))[0]):
        try:
            got = transform()
        except RuntimeError as e:
            assert "functorch" in str(e) or "torch.func" in str(e), e
        else:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_vmap_of_a_forward_is_the_batched_call():
    x, y = LOGITS, LABELS
    torch.testing.assert_close(torch.func.vmap(eo.entropy)(x), eo.entropy(x), rtol=0, atol=0)
    logp, h = torch.func.vmap(eo.logprobs_and_entropy)(x, y)
    want = eo.logprobs_and_entropy(x, y)
    torch.testing.assert_close((logp, h), want, rtol=0, atol=0)


@pytest.mark.parametrize("loss", ["kl_cov", "clip_cov"])
def test_policy_losses_support_forward_mode(loss):
    """Torch ops around a non-differentiable selection: jvp gives reverse mode's derivative."""
    gen = torch.Generator().manual_seed(2)
    logp = -torch.rand(4, 16, dtype=torch.float64, generator=gen) * 3
    old = logp + torch.randn(4, 16, dtype=torch.float64, generator=gen) * 0.1
    adv = torch.randn(4, 1, dtype=torch.float64, generator=gen).expand(4, 16)
    mask = torch.rand(4, 16, generator=gen) < 0.8
    keys = torch.randint(0, 2**62, (4, 16), generator=gen)
    if loss == "kl_cov":
        f = lambda lp: eo.kl_cov_policy_loss(lp, old, adv, mask, kl_cov_ratio=0.2).loss  # noqa: E731
    else:
        f = lambda lp: eo.clip_cov_policy_loss(lp, old, adv, mask, clip_cov_ratio=0.2, clip_cov_lb=-1.0,  # noqa: E731
                                               random_keys=keys).loss
    v = torch.randn_like(logp)
    _, tangent = torch.func.jvp(f, (logp,), (v,))
    want = _reverse(f, logp, v)
    assert want.abs() > 0
    torch.testing.assert_close(tangent, want, rtol=1e-12, atol=1e-14)
