"""``selective_entropy_loss``: SIREN's self-anchored selective entropy regularizer (SPEC §3.2).

    H_t  = top_p_entropy(logits_t, top_p)                        (the nucleus entropy per token)
    peak = peak_entropy_mask(H.detach(), mask, peak_q)          (per sequence: H above its quantile)
    loss = coef * (mean_{t in peak} H_t - anchor)^2,   0 with a zero gradient when peak is empty

Only the peak tokens' nucleus entropies carry gradient (through ``top_p_entropy``'s backward); the
anchor is detached (SIREN anchors it to the value at the start of training). Sync-free: the empty
case is a ``where``, not a branch.
"""
from typing import Optional

import torch
from torch import Tensor

from .. import _validate, _validate_losses, _validate_tokens
from .quantile import peak_entropy_mask
from .top_p import top_p_entropy


def selective_entropy_loss(logits: Tensor, mask: Tensor, anchor, *, top_p: float = 0.8,
                           peak_q: float = 0.8, coef: float = 0.005, temperature=1.0,
                           cu_seqlens: Optional[Tensor] = None) -> Tensor:
    """SIREN's regularizer: pull the mean top-p entropy of all peak tokens to ``anchor``.

    Args:
        logits: ``[B, T, V]`` (or packed ``[N, V]`` with ``cu_seqlens``), float32/bfloat16/float16/float64.
        mask: bool ``[B, T]`` (``[N]``) response mask; masked rows of ``logits`` are never read.
        anchor: a Python float or a 0-d tensor (detached): the target entropy.
        top_p: the nucleus of :func:`top_p_entropy`, in (0, 1].
        peak_q: the per-sequence quantile above which a token is a peak, in [0, 1].
        coef: the loss weight.
        temperature: as in :func:`top_p_entropy`.
        cu_seqlens: int32/int64 ``[S + 1]`` sequence offsets for packed ``[N, V]`` logits.

    Returns:
        0-d loss, float32 (float64 for float64 logits): ``coef * (mean of H over the peak tokens -
        anchor)^2``; 0 with a zero gradient when no token is a peak.
    """
    _validate.logits(logits)
    # Every argument checked before top_p_entropy runs, each error naming the caller's argument.
    if cu_seqlens is None and logits.dim() != 3:
        raise ValueError(f"logits: expected shape [B, T, V] (one row of tokens per sequence) without cu_seqlens, "
                         f"got {list(logits.shape)}; pass packed [N, V] logits with cu_seqlens for the "
                         f"padding-free layout")
    if cu_seqlens is not None and logits.dim() != 2:
        raise ValueError(f"logits: with cu_seqlens the tokens are packed and must be [N, V], got shape "
                         f"{list(logits.shape)}; pass [B, T, V] logits without cu_seqlens")
    _validate_tokens.cu_seqlens(cu_seqlens, "logits", logits)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask: expected a bool tensor of the leading shape of logits; use mask.bool()")
    _validate.not_dtensor("mask", mask)
    coef = _validate_losses.number("coef", coef)
    peak_q = _validate.probability("peak_q", peak_q, open_low=False)
    if isinstance(anchor, torch.Tensor):
        _validate.not_dtensor("anchor", anchor)
        if anchor.dim() != 0 or not anchor.is_floating_point():
            raise ValueError(f"anchor: expected a Python float or a 0-d float tensor, got shape {list(anchor.shape)}")
        anchor = anchor.detach()
    else:
        anchor = _validate_losses.number("anchor", anchor)
    h = top_p_entropy(logits, top_p, temperature, mask=mask)
    if isinstance(anchor, torch.Tensor):
        anchor = anchor.to(h.dtype)  # a float64 anchor must not promote a float32 loss
    peak = peak_entropy_mask(h.detach(), mask, peak_q, per_sequence=True, cu_seqlens=cu_seqlens)
    n_peak = peak.sum()
    mean_peak = torch.where(peak, h, 0).sum() / n_peak.clamp(min=1)
    return torch.where(n_peak > 0, coef * (mean_peak - anchor) ** 2, 0)
