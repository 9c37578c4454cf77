"""``selective_entropy_loss`` (SIREN's self-anchored regularizer, SPEC §3.2) vs the float64
reference written from its formula: value and gradient, the empty-peak case, a tensor anchor,
packed layout, ``torch.compile(fullgraph=True)`` and bad arguments."""
import pytest
import torch

import entropy_ops as eo
from entropy_ops import reference as R
from selective_common import clear_of_top_p_cut, with_clear_cuts


def _batch(B=3, T=16, V=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B * T, V, generator=gen) * 2
    x = with_clear_cuts(x, ["normal"] * (B * T), seed=seed).view(B, T, V)
    mask = torch.rand(B, T, generator=gen) < 0.8
    return x, mask


@pytest.mark.parametrize("anchor", [0.5, "tensor"])
def test_matches_reference(backend, anchor):
    x, mask = _batch()
    assert clear_of_top_p_cut(x, 0.8).all(), "rows chosen clear of the nucleus cut"
    a = torch.tensor(0.5) if anchor == "tensor" else anchor
    xg = x.clone().requires_grad_(True)
    loss = eo.selective_entropy_loss(xg, mask, a, top_p=0.8, peak_q=0.7, coef=0.1)
    xr = x.double().requires_grad_(True)
    ref = R.selective_entropy_loss_ref(xr, mask, 0.5, 0.8, 0.7, 0.1)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-7)
    (g,) = torch.autograd.grad(loss, xg)
    (gr,) = torch.autograd.grad(ref, xr)
    torch.testing.assert_close(g.double(), gr, rtol=1e-4, atol=1e-7)
    peak = R.peak_entropy_mask_ref(R.top_p_entropy_ref(x, 0.8, mask=mask), mask, 0.7)
    assert (g[~peak] == 0).all(), "only peak tokens get gradient"


def test_no_peak_token_gives_zero_with_zero_gradient(backend):
    x, _ = _batch()
    x = x.clone().requires_grad_(True)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[:, 0] = True  # one valid token per sequence: nothing exceeds its own quantile
    loss = eo.selective_entropy_loss(x, mask, 2.0)
    assert loss.item() == 0
    assert (torch.autograd.grad(loss, x)[0] == 0).all()


def test_every_kernel_runs_on_the_backend_in_force(backend, monkeypatch):
    import entropy_ops._backends as backends

    calls, get_kernel = [], backends.get_kernel
    monkeypatch.setattr(backends, "get_kernel", lambda name, op: (calls.append((name, op)), get_kernel(name, op))[1])
    x, mask = _batch()
    eo.selective_entropy_loss(x, mask, 0.3)
    assert {op for _, op in calls} >= {"top_p_entropy", "masked_quantile"}
    assert {name for name, _ in calls} == {backend}, calls


def test_packed_layout_equals_rows(backend):
    x, mask = _batch()
    rows = eo.selective_entropy_loss(x, mask, 0.3)
    cu = torch.tensor([0, 16, 32, 48])
    packed = eo.selective_entropy_loss(x.reshape(48, -1), mask.reshape(48), 0.3, cu_seqlens=cu)
    torch.testing.assert_close(packed, rows, rtol=0, atol=0)
    # Uneven packed sequences (5, 0, 27, 16 tokens) against the reference's own packed path.
    cu = torch.tensor([0, 5, 5, 32, 48])
    packed = eo.selective_entropy_loss(x.reshape(48, -1), mask.reshape(48), 0.3, cu_seqlens=cu)
    ref = R.selective_entropy_loss_ref(x.reshape(48, -1).double(), mask.reshape(48), 0.3, cu_seqlens=cu)
    torch.testing.assert_close(packed.double(), ref, rtol=1e-5, atol=1e-7)


def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    x, mask = _batch()
    x = x.requires_grad_(True)

    def fn(x, mask, anchor):
        return eo.selective_entropy_loss(x, mask, anchor, peak_q=0.6)

    anchor = torch.tensor(0.4)
    compiled, eager = torch.compile(fn, fullgraph=True)(x, mask, anchor), fn(x, mask, anchor)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(torch.autograd.grad(compiled, x)[0], torch.autograd.grad(eager, x)[0])


@pytest.mark.parametrize("call, error, name", [
    (lambda x, m: eo.selective_entropy_loss(x, m.float(), 0.5), TypeError, "mask"),
    (lambda x, m: eo.selective_entropy_loss(x, m[:, :3], 0.5), ValueError, "mask"),
    (lambda x, m: eo.selective_entropy_loss(x, m, torch.ones(2)), ValueError, "anchor"),
    (lambda x, m: eo.selective_entropy_loss(x, m, "a"), TypeError, "anchor"),
    (lambda x, m: eo.selective_entropy_loss(x, m, 0.5, top_p=0.0), ValueError, "top_p"),
    (lambda x, m: eo.selective_entropy_loss(x, m, 0.5, peak_q=1.5), ValueError, "peak_q"),
    (lambda x, m: eo.selective_entropy_loss(x.long(), m, 0.5), TypeError, "logits"),
    (lambda x, m: eo.selective_entropy_loss(x[0], m[0], 0.5), ValueError, "logits"),  # [T, V], no cu_seqlens
    (lambda x, m: eo.selective_entropy_loss(x, m, 0.5, cu_seqlens=torch.tensor([0, 8])), ValueError, "logits"),
    (lambda x, m: eo.selective_entropy_loss(x.flatten(0, 1), m.flatten(), 0.5, cu_seqlens=torch.tensor([0.0, 8.0])),
     TypeError, "cu_seqlens"),
])
def test_bad_arguments_name_themselves(call, error, name):
    x, mask = _batch(B=2, T=4, V=10)
    with pytest.raises(error, match=f"^{name}:"):
        call(x, mask)


def test_float64_anchor_keeps_a_float32_loss(backend):
    logits = torch.randn(2, 6, 40, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 6, dtype=torch.bool)
    loss = eo.selective_entropy_loss(logits, mask, torch.tensor(0.5, dtype=torch.float64))
    assert loss.dtype == torch.float32
    assert torch.equal(loss, eo.selective_entropy_loss(logits, mask, 0.5))
