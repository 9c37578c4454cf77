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
