"""Covariance-based policy losses of the Entropy Mechanism paper, with verl's semantics (SPEC §3.2):
``token_covariance``, ``clip_cov_policy_loss`` (Clip-Cov) and ``kl_cov_policy_loss`` (KL-Cov).

    r = exp(logp - old_logp),  cov = (A - mean_valid A)(logp - mean_valid logp)  (detached)

Clip-Cov: among the valid tokens that PPO does not clip and whose ``lb < cov < ub``, ``k`` chosen
uniformly at random get no gradient; KL-Cov: the ``k`` valid tokens of largest ``cov`` get a
``kl_coef * |logp - old_logp|`` penalty; ``k = max(floor(ratio * n_valid), 1)``.

Everything stays on the device: the selections are the top ``k`` by selection of the k-th largest
(the ``entropy_ops::top_k_mask`` custom op on the resolved backend's ``top_k`` kernel, contract in
``backends/token_kernel.py``; ties by lowest flat index), with a ``k`` that is itself a tensor, so
there is no ``.item()``, ``nonzero`` or data-dependent shape, and the losses compile with
``fullgraph=True``. Clip-Cov's random choice uses int64 keys: the ``k`` candidates with the largest
keys are chosen, a uniform choice. The keys are a counter-based SplitMix64 stream
(``ops/random_keys.py``) whose seed is drawn with ``torch.randint(generator=...)``, so the choice is
reproducible with the generator, and a data-parallel rank computes its slice of the keys of the
whole batch without a host sync.

The per-token formulas (loss terms, candidates, weights) are in ``ops/_policy_terms.py``, shared
with the data-parallel paths (``parallel/data.py``); this module adds this batch's means, counts
and top ``k``.
"""
from typing import Optional

import torch
from torch import Tensor

from .. import _backends, _validate, _validate_losses as V
from ._policy_terms import (centred_product, clip_cov_loss_matrix, clip_cov_terms, count_k, kl_cov_loss_matrix,
                            masked_inputs, selected_frac)
from ._types import PolicyLossOutput
from .agg_loss import MODES, aggregate_masked, mask_count, masked_mean
from .random_keys import clip_cov_keys
from .select import top_k_mask


def _covariance(logp: Tensor, advantages: Tensor, mask: Tensor, n_valid: Tensor) -> Tensor:
    """``cov`` with this batch's masked means (any value at the masked tokens)."""
    return centred_product(logp, advantages, masked_mean(logp.detach(), mask, n_valid),
                           masked_mean(advantages.detach(), mask, n_valid))


def _outputs(loss: Tensor, ppo_kl: Tensor, selected: Tensor, n_valid: Tensor, dtype) -> PolicyLossOutput:
    # The selection lies inside the mask: selected_frac is its count over n_valid.
    return PolicyLossOutput(loss, ppo_kl, selected, selected_frac(mask_count(selected), n_valid, dtype))


def _data_parallel():
    # Imported on first use with a process group: ``parallel.data`` builds on torch.distributed.
    from ..parallel import data
    return data


def token_covariance(logp: Tensor, advantages: Tensor, mask: Tensor, process_group=None) -> Tensor:
    """Per-token ``(A - mean A)(logp - mean logp)``, means over the valid tokens, 0 at masked ones.

    Args:
        logp: ``[B, T]`` (any shape) log-probabilities under the current policy.
        advantages: same shape, floating point.
        mask: same shape, bool (or a 0/1 float mask).
        process_group: a ``torch.distributed`` data-parallel group: the means are over the valid
            tokens of all its ranks (one all-reduce), as on their batches concatenated.

    Returns:
        Detached tensor of ``logp``'s shape and dtype.
    """
    logp, mask = V.matrix_and_mask(logp, mask, "logp")
    V.like("advantages", advantages, logp, "logp")
    if process_group is not None:
        return _data_parallel().token_covariance(logp, advantages, V.binary_mask(mask), process_group)
    mask = V.binary_mask(mask)
    return torch.where(mask, _covariance(logp, advantages, mask, mask_count(mask)), 0)


def _losses_args(logp, old_logp, advantages, mask, loss_agg_mode, weights, dp_size, batch_num_tokens,
                 global_batch_size, loss_scale_factor, process_group):
    """The checked bool mask, and the keyword arguments of the aggregation (:func:`agg_loss`'s)."""
    logp, mask = V.matrix_and_mask(logp, mask, "logp")
    V.like("old_logp", old_logp, logp, "logp")
    V.like("advantages", advantages, logp, "logp")
    V.like("weights", weights, logp, "logp", optional=True)
    V.choice("loss_agg_mode", loss_agg_mode, MODES)
    if logp.dim() != 2:
        raise ValueError(f"logp: expected a [B, T] tensor, got shape {list(logp.shape)}")
    dp_size = V.global_counts(loss_agg_mode, dp_size, batch_num_tokens, global_batch_size, loss_scale_factor,
                              logp.device)
    if process_group is not None and (dp_size != 1 or batch_num_tokens is not None or global_batch_size is not None):
        raise ValueError("dp_size: with process_group the loss computes the global counts itself; leave dp_size, "
                         "batch_num_tokens and global_batch_size unset")
    return V.binary_mask(mask), dict(dp_size=dp_size, batch_num_tokens=batch_num_tokens,
                                     global_batch_size=global_batch_size, loss_scale_factor=loss_scale_factor)


def clip_cov_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                         clip_ratio: float = 0.2, clip_ratio_low: Optional[float] = None,
                         clip_ratio_high: Optional[float] = None, clip_cov_ratio: float = 2e-4,
                         clip_cov_lb: float = 1.0, clip_cov_ub: float = 5.0,
                         loss_agg_mode: str = "token-mean", weights: Optional[Tensor] = None,
                         generator: Optional[torch.Generator] = None,
                         random_keys: Optional[Tensor] = None, process_group=None, dp_size: int = 1,
                         batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None) -> PolicyLossOutput:
    """Clip-Cov policy loss (verl's ``clip_cov``).

    ``l1 = -A r``, ``l2 = -A clamp(r, 1 - low, 1 + high)``; candidates are the valid tokens with
    ``l2 <= l1`` (not clipped by PPO) and ``clip_cov_lb < cov < clip_cov_ub``; ``min(k, candidates)``
    of them, ``k = max(floor(clip_cov_ratio * n_valid), 1)``, chosen uniformly at random (``generator``
    makes it reproducible), get their loss multiplied by 0. ``loss = agg(max(l1, l2) * keep * weights)``.

    Args:
        logp, old_logp, advantages: ``[B, T]`` floating point (``old_logp``, ``advantages`` detached
            in effect: no gradient is taken through them by the loss's selection).
        mask: ``[B, T]`` bool (or 0/1 float) response mask.
        clip_ratio, clip_ratio_low, clip_ratio_high: PPO's clip range (low/high default to clip_ratio).
        clip_cov_ratio: the fraction ``(0, 1]`` of valid tokens to detach; clip_cov_lb, clip_cov_ub:
            the covariance window of candidates.
        loss_agg_mode: see :func:`agg_loss`. weights: optional ``[B, T]`` rollout importance weights.
        dp_size, batch_num_tokens, global_batch_size, loss_scale_factor: passed to :func:`agg_loss`
            (verl's ``global_batch_info``: the loss of this rank's batch with the global counts).
            With ``process_group`` the group's counts are used: leave the first three unset.
        generator: a ``torch.Generator`` on ``logp``'s device for the random choice: one seed
            ``torch.randint(0, 2**62, (1,), generator=generator)`` is drawn, and the key of the
            token of flat index ``i`` is ``splitmix64(seed, i) >> 2`` (``backends/token_kernel.py``).
            Not under activation checkpointing: the recompute would draw again and choose other
            tokens (checkpoint restores the global RNG only); use the global RNG or ``random_keys``.
        random_keys: instead of ``generator``, the keys themselves: int64 ``[B, T]`` in
            ``[0, 2**62)``, e.g. ``torch.randint(0, 2**62, logp.shape, generator=g)``; the
            candidates with the largest keys are chosen. ``torch.compile`` cannot trace a
            ``torch.Generator``: under ``fullgraph=True`` draw the keys outside and pass them here
            (without either, the global RNG draws the seed, which compiles).
        process_group: a ``torch.distributed`` data-parallel group: the means, ``n_valid``, ``k``,
            the choice and the scalars are over all its ranks, exactly as one process computes them
            on the batches concatenated in rank order; ``selected`` is this rank's part. ``loss``
            holds the global loss on every rank, and its gradient is ``world_size x`` that of
            this rank's share, so that DDP / FSDP's gradient average is the single-process
            gradient. Keys: ``random_keys`` are this rank's own; else every rank draws the seed
            from ``generator`` (or the global RNG) and computes the keys of its tokens at their
            flat index in the concatenated batch, an offset summed on the device: the same
            generator state on every rank reproduces the single-process choice, with no host
            sync. See ``entropy_ops.parallel.data``.

    Returns:
        :class:`PolicyLossOutput`: ``loss``; ``ppo_kl`` = masked mean of ``old_logp - logp``;
        ``selected`` the detached tokens; ``selected_frac`` = selected / n_valid. An empty mask gives
        0 for the scalars, with a zero gradient. ``loss``, ``ppo_kl``, ``selected_frac`` are 0-d in
        ``logp``'s dtype (``loss`` at least float32 for the ``seq-mean-*`` modes, as in
        :func:`agg_loss`); ``selected`` is bool of ``logp``'s shape.
    """
    mask, agg = _losses_args(logp, old_logp, advantages, mask, loss_agg_mode, weights, dp_size, batch_num_tokens,
                             global_batch_size, loss_scale_factor, process_group)
    clip_ratio = V.number("clip_ratio", clip_ratio)
    low = clip_ratio if clip_ratio_low is None else V.number("clip_ratio_low", clip_ratio_low)
    high = clip_ratio if clip_ratio_high is None else V.number("clip_ratio_high", clip_ratio_high)
    clip_cov_ratio = V.ratio("clip_cov_ratio", clip_cov_ratio)
    lb, ub = V.number("clip_cov_lb", clip_cov_lb), V.number("clip_cov_ub", clip_cov_ub)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    if random_keys is not None:
        if generator is not None:
            raise ValueError("random_keys: pass either random_keys or generator, not both")
        if not isinstance(random_keys, torch.Tensor) or random_keys.dtype != torch.int64:
            raise TypeError("random_keys: expected an int64 tensor from torch.randint(0, 2**62, logp.shape)")
        _validate.not_dtensor("random_keys", random_keys)
        if tuple(random_keys.shape) != tuple(logp.shape) or random_keys.device != logp.device:
            raise ValueError(f"random_keys: expected shape {list(logp.shape)} on {logp.device}, "
                             f"got {list(random_keys.shape)} on {random_keys.device}")
    if process_group is not None:
        return _data_parallel().clip_cov_policy_loss(
            logp, old_logp, advantages, mask, low=low, high=high, clip_cov_ratio=clip_cov_ratio, lb=lb, ub=ub,
            loss_agg_mode=loss_agg_mode, weights=weights, generator=generator, random_keys=random_keys,
            process_group=process_group, loss_scale_factor=loss_scale_factor)

    n_valid = mask_count(mask)
    log_ratio, advantages, weights = masked_inputs(logp, old_logp, advantages, weights, mask)
    cov = _covariance(logp, advantages, mask, n_valid)
    pg, candidate = clip_cov_terms(log_ratio, advantages, cov, mask, low, high, lb, ub)
    # Uniform choice of k candidates: the k largest of independent random keys.
    keys = random_keys
    if keys is None:
        keys = clip_cov_keys(generator, torch.zeros(1, dtype=torch.int64, device=logp.device), logp)
    backend = _backends.resolve("top_k", logp.device, logp.dtype)
    selected = top_k_mask(keys, candidate, count_k(clip_cov_ratio, n_valid), backend)
    masked = clip_cov_loss_matrix(pg, selected, mask, weights)
    loss = aggregate_masked(masked, mask, loss_agg_mode, **agg, count=n_valid)
    return _outputs(loss, masked_mean(-log_ratio.detach(), mask, n_valid), selected, n_valid, logp.dtype)


def kl_cov_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                       kl_cov_ratio: float = 2e-4, kl_coef: float = 1.0,
                       loss_agg_mode: str = "token-mean", weights: Optional[Tensor] = None,
                       process_group=None, dp_size: int = 1, batch_num_tokens=None, global_batch_size=None,
                       loss_scale_factor=None) -> PolicyLossOutput:
    """KL-Cov policy loss (verl's ``kl_cov``).

    ``l = -A r``; the ``k = max(floor(kl_cov_ratio * n_valid), 1)`` valid tokens of largest ``cov``
    (ties by lowest flat index; ``k = 0`` without valid tokens) get ``l + kl_coef * |logp - old_logp|``.
    No clipping. ``loss = agg(l * weights)``.

    Args:
        logp, old_logp, advantages, mask, loss_agg_mode, weights, dp_size, batch_num_tokens,
            global_batch_size, loss_scale_factor: as in :func:`clip_cov_policy_loss`.
        kl_cov_ratio: the fraction ``(0, 1]`` of valid tokens penalized. kl_coef: the penalty weight.
        process_group: a data-parallel group, as in :func:`clip_cov_policy_loss` (the top ``k``
            over all ranks, ties to the lowest flat index of the concatenated batch).

    Returns:
        :class:`PolicyLossOutput`: ``loss``; ``ppo_kl`` = masked mean of ``|logp - old_logp|``;
        ``selected`` the penalized tokens; ``selected_frac`` = selected / n_valid. Shapes and dtypes
        as in :func:`clip_cov_policy_loss`.
    """
    mask, agg = _losses_args(logp, old_logp, advantages, mask, loss_agg_mode, weights, dp_size, batch_num_tokens,
                             global_batch_size, loss_scale_factor, process_group)
    kl_cov_ratio = V.ratio("kl_cov_ratio", kl_cov_ratio)
    kl_coef = V.number("kl_coef", kl_coef)
    if process_group is not None:
        return _data_parallel().kl_cov_policy_loss(
            logp, old_logp, advantages, mask, kl_cov_ratio=kl_cov_ratio, kl_coef=kl_coef,
            loss_agg_mode=loss_agg_mode, weights=weights, process_group=process_group,
            loss_scale_factor=loss_scale_factor)

    n_valid = mask_count(mask)
    log_ratio, advantages, weights = masked_inputs(logp, old_logp, advantages, weights, mask)
    abs_kl = log_ratio.abs()
    cov = _covariance(logp, advantages, mask, n_valid)
    backend = _backends.resolve("top_k", logp.device, logp.dtype)
    selected = top_k_mask(cov, mask, count_k(kl_cov_ratio, n_valid), backend)
    masked = kl_cov_loss_matrix(log_ratio, abs_kl, advantages, selected, kl_coef, mask, weights)
    loss = aggregate_masked(masked, mask, loss_agg_mode, **agg, count=n_valid)
    return _outputs(loss, masked_mean(abs_kl.detach(), mask, n_valid), selected, n_valid, logp.dtype)
