"""The per-token formulas of Clip-Cov and KL-Cov (SPEC §3.2), written once for the single-process
losses (``ops/policy_loss.py``) and their data-parallel paths (``parallel/data.py``). Those differ
only in where the means, ``n_valid`` and the top ``k`` come from (this batch, or all ranks); what a
token's loss is, which tokens are candidates and how the weights enter is decided here."""
from typing import Optional, Tuple

import torch
from torch import Tensor


def masked_inputs(logp: Tensor, old_logp: Tensor, advantages: Tensor, weights: Optional[Tensor], mask: Tensor):
    """``(logp - old_logp, advantages, weights)``, made 0 at the masked tokens before any ``exp`` or
    product: the loss matrix's final ``where`` sends a 0 gradient there, and ``0 * d(exp(nan))``
    would still be NaN (padded ``old_logp`` of -inf or NaN, NaN advantages or weights). SPEC §2:
    masked entries contribute exactly 0 to every value and gradient."""
    log_ratio = torch.where(mask, logp - old_logp, 0)
    advantages = torch.where(mask, advantages, 0)
    return log_ratio, advantages, None if weights is None else torch.where(mask, weights, 0)


def centred_product(logp: Tensor, advantages: Tensor, mean_logp: Tensor, mean_advantages: Tensor) -> Tensor:
    """``cov = (A - mean A)(logp - mean logp)``, detached; any value at the masked tokens (the losses
    read it only where the mask is True, and ``token_covariance`` zeroes it there)."""
    return (advantages.detach() - mean_advantages) * (logp.detach() - mean_logp)


def count_k(ratio: float, n_valid: Tensor) -> Tensor:
    """``k = max(floor(ratio * n_valid), 1)``: Python's ``int(ratio * n)`` on a float64 product, as
    verl computes it, then at least 1 (int64 0-d)."""
    return torch.floor(n_valid.double() * ratio).clamp(min=1).long()


def clip_cov_terms(log_ratio: Tensor, advantages: Tensor, cov: Tensor, mask: Tensor, low: float, high: float,
                   lb: float, ub: float) -> Tuple[Tensor, Tensor]:
    """``(pg, candidate)``: PPO's per-token loss ``max(l1, l2)``, ``l1 = -A r``,
    ``l2 = -A clamp(r, 1 - low, 1 + high)``, and the Clip-Cov candidates: valid tokens PPO does not
    clip (``l2 <= l1``) with ``lb < cov < ub``."""
    ratio = torch.exp(log_ratio)
    neg_advantages = -advantages
    l1 = neg_advantages * ratio
    l2 = neg_advantages * torch.clamp(ratio, 1 - low, 1 + high)
    candidate = mask & ~(l2 > l1).detach() & (cov > lb) & (cov < ub)
    return torch.maximum(l1, l2), candidate


def clip_cov_loss_matrix(pg: Tensor, selected: Tensor, mask: Tensor, weights: Optional[Tensor]) -> Tensor:
    """``pg * keep * weights`` at the valid tokens, 0 elsewhere (``selected`` lies inside ``mask``)."""
    if weights is None:  # one where for both masks: the same values
        return torch.where(mask & ~selected, pg, 0)
    # 0 * weight at the selected tokens, as verl multiplies (a NaN weight stays NaN).
    return torch.where(mask, torch.where(selected, 0, pg) * weights, 0)


def kl_cov_loss_matrix(log_ratio: Tensor, abs_kl: Tensor, advantages: Tensor, selected: Tensor, kl_coef: float,
                       mask: Tensor, weights: Optional[Tensor]) -> Tensor:
    """``l * weights`` at the valid tokens, 0 elsewhere: ``l = -A r``, plus ``kl_coef * abs_kl``
    (``abs_kl = |logp - old_logp|``, which the caller also averages for ``ppo_kl``) at the selected
    tokens."""
    l = -advantages * torch.exp(log_ratio)
    losses = torch.where(selected, l + kl_coef * abs_kl, l)
    if weights is not None:
        losses = losses * weights
    return torch.where(mask, losses, 0)


def selected_frac(n_selected: Tensor, n_valid: Tensor, dtype) -> Tensor:
    """selected / n_valid (0 without valid tokens), the count converted to ``dtype`` as a sum of 0/1
    values in ``dtype`` rounds it (the masked mean of ``selected``)."""
    return n_selected.to(dtype) / n_valid.clamp(min=1)
