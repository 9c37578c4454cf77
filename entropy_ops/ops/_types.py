"""Result types shared by the ops and ``reference.py`` (kept apart so neither imports the other)."""
from typing import NamedTuple, Optional

from torch import Tensor


class TokenStats(NamedTuple):
    """Per-row statistics of ``p = softmax(logits / T)``, each ``[...]``; see :func:`token_stats`."""
    lse: Tensor
    entropy: Tensor
    logp: Optional[Tensor]
    max_logp: Tensor
    collision: Tensor
    varentropy: Tensor
    self_certainty: Tensor
    entropy_drift: Tensor


class PolicyLossOutput(NamedTuple):
    """What :func:`clip_cov_policy_loss` and :func:`kl_cov_policy_loss` return."""
    loss: Tensor  # 0-d, the aggregated policy loss
    ppo_kl: Tensor  # 0-d, the KL statistic verl reports for the loss
    selected: Tensor  # bool [B, T]: the tokens the method treats specially
    selected_frac: Tensor  # 0-d, selected / valid tokens (Clip-Cov's clipfrac)
