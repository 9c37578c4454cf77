"""entropy_ops: exact, single-pass, sync-free token-entropy kernels for RL training of LLMs.

    import entropy_ops as eo
    logp, H = eo.logprobs_and_entropy(logits, labels, temperature=0.7)   # [B,T,V] -> [B,T], [B,T]
"""
from . import backends as _backends_impl  # noqa: F401  (registers the backends)
from . import reference
from ._backends import (
    BackendUnavailableError,
    NoKernelError,
    available_backends,
    get_backend,
    set_backend,
    use_backend,
)
from .ops._types import PolicyLossOutput, TokenStats
from .ops.agg_loss import agg_loss
from .ops.entropy import entropy, logprobs_and_entropy
from .ops.linear import linear_logprobs_and_entropy
from .ops.min_p import min_p_logprobs
from .ops.policy_loss import clip_cov_policy_loss, kl_cov_policy_loss, token_covariance
from .ops.quantile import EntropyThreshold, masked_quantile, peak_entropy_mask
from .ops.selective_entropy import selective_entropy_loss
from .ops.token_stats import token_stats
from .ops.top_p import top_p_entropy, top_p_mask
from .ops.window import window_entropy

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "EntropyThreshold",
    "NoKernelError",
    "PolicyLossOutput",
    "TokenStats",
    "agg_loss",
    "available_backends",
    "clip_cov_policy_loss",
    "entropy",
    "get_backend",
    "kl_cov_policy_loss",
    "linear_logprobs_and_entropy",
    "logprobs_and_entropy",
    "masked_quantile",
    "min_p_logprobs",
    "peak_entropy_mask",
    "reference",
    "selective_entropy_loss",
    "set_backend",
    "token_covariance",
    "token_stats",
    "top_p_entropy",
    "top_p_mask",
    "use_backend",
    "window_entropy",
]
