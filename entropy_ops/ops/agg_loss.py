"""``agg_loss``: reduce a ``[B, T]`` loss matrix to the scalar loss, with verl's five modes (SPEC
§3.2, verl 0.9.1 semantics). With ``M`` the mask, ``L`` the loss matrix, ``S_b = sum_t M L``,
``n_b = sum_t M`` and ``s_b = [n_b > 0]``:

    token-mean               sum M L / (batch_num_tokens or sum M) * dp_size
    token-sum                sum M L * dp_size
    seq-mean-token-sum       sum_b s_b S_b / (global_batch_size or sum_b s_b) * dp_size
    seq-mean-token-sum-norm  seq-mean-token-sum / (loss_scale_factor or T)
    seq-mean-token-mean      sum_b s_b S_b / (n_b + 1e-8) / (global_batch_size or sum_b s_b) * dp_size

Masked entries enter through ``where`` (a NaN in a padded position never reaches the loss); an
empty mask gives 0 with a zero gradient (the counts in denominators are clamped to >= 1, which
changes nothing when they are >= 1). No host synchronisation.
"""

from typing import Optional

import torch
from torch import Tensor

from .. import _validate_losses as V

MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, values, 0).sum()


def mask_count(mask: Tensor) -> Tensor:
    """``mask.sum()`` of a bool mask (int64, 0-d) without its cast of every entry to int64 (on CPU
    ``count_nonzero`` reads the bytes: several times faster at [512, 8192])."""
    return torch.count_nonzero(mask)


def masked_mean(values: Tensor, mask: Tensor, count: Optional[Tensor] = None) -> Tensor:
    """Mean over ``mask``; 0 (with a zero gradient) when the mask is empty. ``count``: the
    caller's ``mask_count(mask)``, when it has one."""
    count = mask_count(mask) if count is None else count
    return masked_sum(values, mask) / count.clamp(min=1)


def agg_loss(loss_mat: Tensor, mask: Tensor, mode: str = "token-mean", dp_size: int = 1,
             batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None) -> Tensor:
    """Aggregate ``loss_mat`` over the valid tokens, as verl's ``agg_loss``. With ``M`` the mask, ``L``
    ``loss_mat``, ``S_b = sum_t M L``, ``n_b = sum_t M``, ``s_b = [n_b > 0]``, ``N`` =
    ``batch_num_tokens or sum M``, ``G`` = ``global_batch_size or sum_b s_b``:
    ``token-mean`` = ``dp_size * sum M L / N``; ``token-sum`` = ``dp_size * sum M L``;
    ``seq-mean-token-sum`` = ``dp_size * sum_b s_b S_b / G``; ``seq-mean-token-mean`` =
    ``dp_size * sum_b s_b S_b / (n_b + 1e-8) / G``; ``seq-mean-token-sum-norm`` =
    ``seq-mean-token-sum / (loss_scale_factor or T)``. A count of 0 divides as 1 (an empty mask gives 0).

    Args:
        loss_mat: ``[B, T]`` floating point.
        mask: ``[B, T]`` bool, or floating point holding only 0 and 1 (verl's response mask).
        mode: one of ``token-mean``, ``token-sum``, ``seq-mean-token-sum``, ``seq-mean-token-mean``,
            ``seq-mean-token-sum-norm``.
        dp_size: data-parallel world size the loss is scaled by (gradients are averaged over ranks).
        batch_num_tokens: valid tokens of the global batch (int or 0-d tensor); required by
            ``token-mean`` when ``dp_size > 1``.
        global_batch_size: sequences of the global batch (int or 0-d tensor); required by the
            ``seq-mean-*`` modes when ``dp_size > 1``.
        loss_scale_factor: the divisor of ``seq-mean-token-sum-norm`` (default ``T``).

    Returns:
        0-d tensor: in ``loss_mat``'s dtype for the ``token-*`` modes; at least float32 for the
        ``seq-mean-*`` modes (their per-sequence sums accumulate in float32, as verl's float
        sequence mask promotes them).
    """
    loss_mat, mask = V.matrix_and_mask(loss_mat, mask, "loss_mat")
    V.choice("mode", mode, MODES)
    dp_size = V.global_counts(mode, dp_size, batch_num_tokens, global_batch_size, loss_scale_factor, loss_mat.device)
    mask = V.binary_mask(mask)
    if mode.startswith("seq-mean") and loss_mat.dim() != 2:
        raise ValueError(f"loss_mat: {mode} needs a [B, T] loss matrix, got shape {list(loss_mat.shape)}")
    return aggregate_masked(torch.where(mask, loss_mat, 0), mask, mode, dp_size, batch_num_tokens,
                            global_batch_size, loss_scale_factor)


def _at_least_one(count):
    """A count as a divisor, clamped to >= 1 where it is: a Python number stays one (verl divides by
    it so; a tensor made of it on a GPU would be a blocking host-to-device copy: a sync), a tensor
    stays on its device (a 0-d CPU tensor is a scalar operand on any device)."""
    return count.clamp(min=1) if isinstance(count, torch.Tensor) else max(count, 1)


def aggregate_masked(masked: Tensor, mask: Tensor, mode: str, dp_size: int = 1, batch_num_tokens=None,
                     global_batch_size=None, loss_scale_factor=None, count: Optional[Tensor] = None) -> Tensor:
    """:func:`agg_loss` on checked arguments whose ``masked`` loss matrix is already 0 wherever the
    bool ``mask`` is False (the policy losses build it so, and skip a second ``where`` over
    ``[B, T]``); ``count``: ``mask_count(mask)`` when the caller has it."""
    if mode == "token-sum":
        return masked.sum() * dp_size
    if mode == "token-mean":
        if batch_num_tokens is None:
            batch_num_tokens = mask_count(mask) if count is None else count
        # A 0-d float count tensor (float32 against a bf16 loss, float64 against a float32 one)
        # would promote the 0-d result: the documented dtype is loss_mat's.
        return (masked.sum() / _at_least_one(batch_num_tokens) * dp_size).to(masked.dtype)
    seq_dtype = torch.promote_types(masked.dtype, torch.float32)
    seq_sums = masked.sum(-1, dtype=seq_dtype)
    seq_counts = torch.count_nonzero(mask, dim=-1)
    if mode == "seq-mean-token-mean":
        seq_sums = seq_sums / (seq_counts.to(seq_dtype) + 1e-8)  # int64 + 1e-8 would be float32: n_b + 1e-8 == n_b
    has_tokens = seq_counts > 0
    n_seqs = has_tokens.sum() if global_batch_size is None else global_batch_size
    loss = torch.where(has_tokens, seq_sums, 0).sum() / _at_least_one(n_seqs) * dp_size
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (max(masked.shape[-1], 1) if loss_scale_factor is None else loss_scale_factor)  # T = 0: 0 / 1
    return loss.to(seq_dtype)  # a float64 0-d count or scale tensor must not promote a float32 loss


__all__ = ["MODES", "agg_loss", "aggregate_masked", "mask_count", "masked_mean", "masked_sum"]
