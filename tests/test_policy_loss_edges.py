"""Edges of the policy losses (SPEC §3.2) that random batches never reach, found by mutation
testing: covariances exactly at Clip-Cov's window bounds, a non-finite importance weight on a chosen
token, and a sequence without valid tokens under ``torch.autograd.detect_anomaly``."""
import pytest
import torch

import entropy_ops as eo
from entropy_ops import reference as R
from entropy_ops.ops.agg_loss import MODES


def _boundary_batch():
    """One sequence whose covariances are exact: pairs ``(d, a)``, ``(-d, -a)`` around the means
    (logp -2, advantage 0) give ``cov = d a`` twice: 2, 3, 5 and 0.5. With ``old_logp = logp`` no
    token is PPO-clipped."""
    logp = torch.tensor([[-1.0, -3.0, -1.0, -3.0, -1.0, -3.0, -1.5, -2.5]])
    adv = torch.tensor([[2.0, -2.0, 3.0, -3.0, 5.0, -5.0, 1.0, -1.0]])
    mask = torch.ones(logp.shape, dtype=torch.bool)
    assert eo.token_covariance(logp, adv, mask).tolist() == [[2.0, 2.0, 3.0, 3.0, 5.0, 5.0, 0.5, 0.5]]
    return logp, adv, mask, torch.arange(8).view(1, 8)


WINDOW = dict(clip_cov_ratio=1.0, clip_cov_lb=2.0, clip_cov_ub=5.0)  # k = n_valid: every candidate


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_clip_cov_window_bounds_are_strict(dtype):
    """Candidates have ``lb < cov < ub``: of covariances 2, 3, 5 and 0.5 in ``(lb, ub) = (2, 5)`` only
    the two tokens of cov 3 are chosen. Loss and gradient vs the float64 reference."""
    logp, adv, mask, keys = _boundary_batch()
    logp, adv = logp.to(dtype), adv.to(dtype)
    x = logp.clone().requires_grad_(True)
    out = eo.clip_cov_policy_loss(x, logp, adv, mask, random_keys=keys, **WINDOW)
    xr = logp.clone().double().requires_grad_(True)
    ref = R.clip_cov_policy_loss_ref(xr, logp, adv, mask, keys, **WINDOW)
    assert out.selected.tolist() == [[False, False, True, True, False, False, False, False]]
    assert torch.equal(out.selected, ref[2])
    torch.testing.assert_close(out.loss.double(), ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(out.loss, x)[0].double(), torch.autograd.grad(ref[0], xr)[0],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_clip_cov_non_finite_weight_of_a_chosen_token_reaches_the_loss(bad):
    """``loss = agg(max(l1, l2) * keep * weights)``: a chosen (valid) token's term is ``0 * w``, as verl
    multiplies, so a NaN or infinite importance weight there gives a NaN loss, not a silent 0."""
    logp, adv, mask, keys = _boundary_batch()
    w = torch.ones(logp.shape)
    w[0, 2] = bad
    out = eo.clip_cov_policy_loss(logp, logp, adv, mask, weights=w, random_keys=keys, **WINDOW)
    ref = R.clip_cov_policy_loss_ref(logp, logp, adv, mask, keys, weights=w, **WINDOW)
    assert out.selected[0, 2] and ref[2][0, 2]
    assert out.loss.isnan() and ref[0].isnan()


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("loss", ["agg_loss", "clip_cov", "kl_cov"])
@pytest.mark.parametrize("mode", MODES)
def test_empty_sequence_backward_has_no_nan(mode, loss):
    """A sequence without valid tokens: seq-mean-token-mean divides its sum by ``n_b + 1e-8``, 0 / 1e-8
    and not 0 / 0, so no NaN appears even inside the backward (``detect_anomaly`` raises on one)."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, generator=gen).sub(2).requires_grad_(True)
    adv = torch.randn(3, 5, generator=gen)
    mask = torch.rand(3, 5, generator=gen) < 0.7
    mask[1] = False
    with torch.autograd.detect_anomaly():
        if loss == "agg_loss":
            out = eo.agg_loss(x, mask, mode)
        elif loss == "clip_cov":
            out = eo.clip_cov_policy_loss(x, x.detach() - 0.1, adv, mask, loss_agg_mode=mode).loss
        else:
            out = eo.kl_cov_policy_loss(x, x.detach() - 0.1, adv, mask, loss_agg_mode=mode).loss
        (g,) = torch.autograd.grad(out, x)
    assert torch.isfinite(out) and torch.isfinite(g).all() and (g[1] == 0).all()
