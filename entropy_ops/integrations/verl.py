"""verl adapter: ``clip_cov`` / ``kl_cov`` policy losses and the ``entropy_from_logits`` family,
backed by entropy_ops, with verl's exact signatures (recorded from verl 0.9.1:
``verl/trainer/ppo/core_algos.py`` and ``verl/utils/torch_functional.py``).

    import entropy_ops.integrations.verl as eo_verl
    eo_verl.register()   # policy_loss.loss_mode=clip_cov / kl_cov now run entropy_ops' losses
    eo_verl.patch()      # verl_F.entropy_from_logits & co. now run entropy_ops' single-pass kernels

Call both in every process that trains (verl's Ray workers too, e.g. at the top of a custom
worker module or via ``actor_rollout_ref.model.external_lib``): a patch lives in one interpreter.

What changes against verl's own code: no host synchronization while the loss is built (verl's
Clip-Cov calls ``.item()``, ``nonzero`` and ``randperm``; KL-Cov copies the batch to the CPU for
``topk``); entropies in float32 whatever the logits' dtype, in one pass, with no ``[N, V]`` float32
temporary. The metrics are Python floats as in verl (read with ``.item()`` once the loss exists).
Clip-Cov picks its tokens at random like verl, from a different random stream: the same
distribution, not the same draw.
"""
from __future__ import annotations  # `torch.Tensor | None` below; Python 3.9 has no `|` on types

from typing import Any, Optional

import torch

import entropy_ops as eo

from . import replace_everywhere, require

_LOSS_NAMES = ("clip_cov", "kl_cov")
_FUNCTIONS = ("entropy_from_logits", "entropy_from_logits_with_chunking", "logprobs_from_logits")


# ---- verl.utils.torch_functional ---------------------------------------------------------------

def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """verl's ``entropy_from_logits``: ``logits [..., V]`` -> float32 ``H [...]``, ``lse - sum p z``."""
    return eo.entropy(logits)


def entropy_from_logits_with_chunking(logits: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
    """verl's chunked variant. ``chunk_size`` is accepted and has no effect: the kernel never holds
    more than a row, so there is nothing to chunk."""
    return eo.entropy(logits)


def logprobs_from_logits(logits, labels, inplace_backward=True):
    """verl's ``logprobs_from_logits``: ``logits [..., V]``, ``labels [...]`` -> float32 ``logp [...]``.
    ``inplace_backward=True`` writes the gradient into ``logits``' buffer, as verl's flash-attn path
    does (verl turns it off when the same logits also feed the entropy)."""
    logp, _ = eo.logprobs_and_entropy(logits, labels, inplace_backward=inplace_backward)
    return logp


# ---- verl.trainer.ppo.core_algos ---------------------------------------------------------------

def agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, loss_agg_mode: str, dp_size: int = 1,
             batch_num_tokens: Optional[int] = None, global_batch_size: Optional[int] = None,
             loss_scale_factor: Optional[int] = None):
    """verl's ``agg_loss`` (all five modes, verl 0.9.1 semantics): :func:`entropy_ops.agg_loss`.
    An integer 0/1 ``loss_mask`` (sliced from an attention mask) is accepted, as verl accepts it."""
    if not loss_mask.is_floating_point() and loss_mask.dtype != torch.bool:
        loss_mask = loss_mask.to(loss_mat.dtype)
    return eo.agg_loss(loss_mat, loss_mask, loss_agg_mode, dp_size=dp_size, batch_num_tokens=batch_num_tokens,
                       global_batch_size=global_batch_size, loss_scale_factor=loss_scale_factor)


def _policy_config(config, name):
    if config is None or getattr(config, "policy_loss", None) is None:
        raise ValueError(f"config: {name} needs verl's actor config (with .policy_loss); got {config!r}")
    return config.policy_loss


def _or(value, default):
    return default if value is None else value


def _global_batch_info(config) -> dict:
    # verl 0.9.1 puts dp_size, batch_num_tokens, global_batch_size and loss_scale_factor here: the
    # aggregation arguments the entropy_ops losses take as they are.
    return dict(getattr(config, "global_batch_info", None) or {})


def compute_policy_loss_clip_cov(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Optional[Any] = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's ``clip_cov`` policy loss on ``[B, T]`` tensors; returns ``(loss, {"actor/pg_clipfrac",
    "actor/ppo_kl"})``. Reads ``config.clip_ratio{,_low,_high}``, ``config.policy_loss.clip_cov_{ratio,
    lb,ub}`` (verl's defaults 2e-4, 1, 5 where None) and ``config.global_batch_info``."""
    pl = _policy_config(config, "clip_cov")
    clip = config.clip_ratio
    low = _or(getattr(config, "clip_ratio_low", None), clip)
    high = _or(getattr(config, "clip_ratio_high", None), clip)
    out = eo.clip_cov_policy_loss(log_prob, old_log_prob, advantages, response_mask > 0, clip_ratio=clip,
                                  clip_ratio_low=low, clip_ratio_high=high,
                                  clip_cov_ratio=_or(pl.clip_cov_ratio, 2e-4), clip_cov_lb=_or(pl.clip_cov_lb, 1.0),
                                  clip_cov_ub=_or(pl.clip_cov_ub, 5.0), loss_agg_mode=loss_agg_mode,
                                  weights=rollout_is_weights, **_global_batch_info(config))
    return out.loss, {"actor/pg_clipfrac": out.selected_frac.detach().item(),
                      "actor/ppo_kl": out.ppo_kl.detach().item()}


def compute_policy_loss_kl_cov(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Optional[Any] = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's ``kl_cov`` policy loss on ``[B, T]`` tensors; returns ``(loss, {"actor/ppo_kl"})``.
    Reads ``config.policy_loss.kl_cov_ratio`` (2e-4 where None), ``.ppo_kl_coef`` (1.0 where None)
    and ``config.global_batch_info``."""
    pl = _policy_config(config, "kl_cov")
    out = eo.kl_cov_policy_loss(log_prob, old_log_prob, advantages, response_mask > 0,
                                kl_cov_ratio=_or(pl.kl_cov_ratio, 2e-4), kl_coef=_or(pl.ppo_kl_coef, 1.0),
                                loss_agg_mode=loss_agg_mode, weights=rollout_is_weights,
                                **_global_batch_info(config))
    return out.loss, {"actor/ppo_kl": out.ppo_kl.detach().item()}


# ---- installing into verl ----------------------------------------------------------------------

def register(names=_LOSS_NAMES) -> list:
    """Register entropy_ops' losses in verl's policy-loss registry under verl's own names (replacing
    verl's ``clip_cov`` / ``kl_cov``), so ``actor.policy_loss.loss_mode=clip_cov`` uses them.
    Returns the names registered. Needs verl (ImportError saying so otherwise)."""
    core_algos = require("verl.trainer.ppo.core_algos", "verl")
    losses = {"clip_cov": compute_policy_loss_clip_cov, "kl_cov": compute_policy_loss_kl_cov}
    unknown = [n for n in names if n not in losses]
    if unknown:
        raise ValueError(f"names: unknown {unknown}; choose from {list(losses)}")
    for name in names:
        core_algos.register_policy_loss(name)(losses[name])
    return list(names)


def patch() -> list:
    """Replace verl's ``entropy_from_logits``, ``entropy_from_logits_with_chunking`` and
    ``logprobs_from_logits`` in ``verl.utils.torch_functional`` and in every loaded ``verl`` module
    that imported them by name. Call it before verl builds its engines (they bind the function at
    construction). Returns the ``module.name`` entries replaced."""
    torch_functional = require("verl.utils.torch_functional", "verl")
    return replace_everywhere(torch_functional, {name: globals()[name] for name in _FUNCTIONS}, "verl")
