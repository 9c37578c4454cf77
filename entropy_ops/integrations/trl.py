"""TRL adapter: drop-ins for the log-prob and entropy helpers of ``trl.trainer.utils`` that GRPO
and the other trainers call, backed by entropy_ops, with TRL's signatures (recorded from
TRL 1.16.0; the older GRPO trainers (0.x) call the same names with fewer arguments).

    import entropy_ops.integrations.trl as eo_trl
    eo_trl.patch()   # before the trainer is built

TRL 1.16's GRPOTrainer scores completions through its own fused LM head (``add_fused_lm_head``)
and does not call these helpers any more; the experimental trainers (SDPO, SDFT, A2PO, TPO) and
GRPO before it do. ``entropy_ops.linear_logprobs_and_entropy`` is the analogue of the fused head.

Differences from TRL's torch path: one pass over the logits for log-prob and entropy together;
outputs are float32 whatever the logits' dtype (TRL's fallback returns the logits' dtype);
``chunk_size`` has no effect (there is nothing to chunk).
"""
from __future__ import annotations  # `torch.Tensor | None` below; Python 3.9 has no `|` on types

import torch

import entropy_ops as eo

from . import replace_everywhere, require

_FUNCTIONS = ("selective_log_softmax", "entropy_from_logits", "selective_log_softmax_and_entropy")


def _row_mask(row_mask):
    return None if row_mask is None else row_mask != 0


def _logprobs_and_entropy(logits, index, temperature, row_mask):
    """``index [...]``: one pass. ``index [..., K]``: one pass per candidate column (K log-probs per row)."""
    mask = _row_mask(row_mask)
    leading = logits.shape[:-1]
    if index.shape == leading:
        return eo.logprobs_and_entropy(logits, index, temperature, mask=mask)
    if index.dim() != logits.dim() or index.shape[:-1] != leading:
        raise ValueError(f"index: expected shape {list(leading)} or {list(leading)} + [K], got {list(index.shape)}")
    if index.shape[-1] == 0:  # no candidate column: TRL's gather gives [..., 0]
        entropy = eo.entropy(logits, temperature)
        return entropy.new_zeros(index.shape), entropy
    columns = [eo.logprobs_and_entropy(logits, index[..., k], temperature,
                                       mask=None if mask is None else mask[..., k])
               for k in range(index.shape[-1])]
    return torch.stack([logp for logp, _ in columns], dim=-1), columns[0][1]


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, temperature: float = 1.0,
                          row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """TRL's ``selective_log_softmax``: ``log_softmax(logits / temperature)`` gathered at ``index``
    (``[...]`` or ``[..., K]``); 0 where ``row_mask`` (``index``'s shape) is 0. float32 out."""
    logp, _ = _logprobs_and_entropy(logits, index, temperature, row_mask)
    return logp


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """TRL's ``entropy_from_logits``: ``logits [..., V]`` -> float32 ``H [...]``; ``chunk_size`` unused."""
    return eo.entropy(logits)


def selective_log_softmax_and_entropy(logits: torch.Tensor, index: torch.Tensor, entropy_requires_grad: bool = True,
                                      temperature: float = 1.0,
                                      row_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's one-pass ``(logp [...], H [...])`` at ``logits / temperature``; rows where ``row_mask``
    is 0 give 0 for both; ``entropy_requires_grad=False`` detaches the entropy."""
    if index.shape != logits.shape[:-1]:
        raise ValueError(f"index: expected shape {list(logits.shape[:-1])} (one label per row), "
                         f"got {list(index.shape)}")
    logp, entropy = _logprobs_and_entropy(logits, index, temperature, row_mask)
    return logp, entropy if entropy_requires_grad else entropy.detach()


def patch() -> list:
    """Replace these helpers in ``trl.trainer.utils`` and in every loaded ``trl`` module that
    imported them by name. Call it before building the trainer. Returns the ``module.name``
    entries replaced. Needs TRL (ImportError saying so otherwise)."""
    utils = require("trl.trainer.utils", "trl")
    return replace_everywhere(utils, {name: globals()[name] for name in _FUNCTIONS}, "trl")
