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

import torch
from torch import Tensor

from .. import _validate_losses as V

MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, values, 0).sum()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over ``mask``; 0 (with a zero gradient) when the mask is empty."""
    return masked_sum(values, mask) / mask.sum().clamp(min=1)


def agg_loss(loss_mat: Tensor, mask: Tensor, mode: str = "token-mean", dp_size: int = 1,
             batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None) -> Tensor:
    """Aggregate ``loss_mat`` over the valid tokens, as verl's ``agg_loss``.

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
        0-d tensor in ``loss_mat``'s dtype.
    """
    loss_mat, mask = V.matrix_and_mask(loss_mat, mask, "loss_mat")
    V.choice("mode", mode, MODES)
    dp_size = V.positive_int("dp_size", dp_size)
    if dp_size > 1 and mode == "token-mean" and batch_num_tokens is None:
        raise ValueError("batch_num_tokens: token-mean with dp_size > 1 needs the global token count")
    if dp_size > 1 and mode.startswith("seq-mean") and global_batch_size is None:
        raise ValueError(f"global_batch_size: {mode} with dp_size > 1 needs the global sequence count")
    mask = V.binary_mask(mask)
    if mode == "token-sum":
        return masked_sum(loss_mat, mask) * dp_size
    if mode == "token-mean":
        count = mask.sum() if batch_num_tokens is None else torch.as_tensor(batch_num_tokens, device=loss_mat.device)
        return masked_sum(loss_mat, mask) / count.clamp(min=1) * dp_size
    if loss_mat.dim() != 2:
        raise ValueError(f"loss_mat: {mode} needs a [B, T] loss matrix, got shape {list(loss_mat.shape)}")
    seq_sums = torch.where(mask, loss_mat, 0).sum(-1)
    seq_counts = mask.sum(-1)
    if mode == "seq-mean-token-mean":
        seq_sums = seq_sums / (seq_counts + 1e-8)
    has_tokens = seq_counts > 0
    n_seqs = has_tokens.sum() if global_batch_size is None else torch.as_tensor(global_batch_size, device=loss_mat.device)
    loss = torch.where(has_tokens, seq_sums, 0).sum() / n_seqs.clamp(min=1) * dp_size
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (loss_mat.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    return loss


__all__ = ["MODES", "agg_loss", "masked_mean", "masked_sum"]
