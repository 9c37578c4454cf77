"""One plain-torch reference per op, no cleverness: what every backend is tested against.

Everything is computed in float64 (tests compare in float64). Temperatures, masks and labels follow
the same conventions as the public ops (SPEC §2).
"""
import torch


def _z(logits, temperature):
    z = logits.double()
    t = temperature.double() if isinstance(temperature, torch.Tensor) else float(temperature)
    if isinstance(t, torch.Tensor) and t.dim() > 0:
        t = t.unsqueeze(-1)
    return z / t


def _masked(value, mask):
    return value if mask is None else torch.where(mask, value, torch.zeros_like(value))


def _lse_and_entropy(z):
    lse = torch.logsumexp(z, dim=-1)
    p = (z - lse.unsqueeze(-1)).exp()
    # H = lse - sum p z, with -inf logits (p = 0) taken as z = 0 so that autograd through the
    # reference gives 0, not 0 * -inf = NaN, for masked vocabulary entries.
    h = lse - (p * torch.where(torch.isneginf(z), torch.zeros_like(z), z)).sum(-1)
    # SPEC §2: an all -inf row (lse = -inf) or one holding NaN/+inf gives NaN.
    bad = ~torch.isfinite(lse) | torch.isnan(z).any(-1) | torch.isposinf(z).any(-1)
    nan = torch.full_like(lse, float("nan"))
    return torch.where(bad, nan, lse), torch.where(bad, nan, h)


def entropy_ref(logits, temperature=1.0, mask=None):
    """``H = -sum_j p_j log p_j`` of ``softmax(logits / T)``, float64, 0 where ``mask`` is False."""
    _, h = _lse_and_entropy(_z(logits, temperature))
    return _masked(h, mask)


def logprobs_and_entropy_ref(logits, labels, temperature=1.0, ignore_index=-100, mask=None):
    """``(log p_y, H)`` in float64; ``logp = 0`` where ``labels == ignore_index``, NaN where the
    label is out of range, both 0 where ``mask`` is False."""
    z = _z(logits, temperature)
    lse, h = _lse_and_entropy(z)
    vocab = z.shape[-1]
    y = labels.long()
    in_range = (y >= 0) & (y < vocab)
    z_y = z.gather(-1, y.clamp(0, vocab - 1).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(in_range, z_y - lse, torch.full_like(lse, float("nan")))
    logp = torch.where(y == ignore_index, torch.zeros_like(logp), logp)
    return _masked(logp, mask), _masked(h, mask)
