"""The four training objectives the demo compares, each a function
``loss(logp, old_logp, adv, mask, logits, anchor, cfg, gen) -> 0-d loss`` on ``[B, T]`` tensors
(``logits [B, T, V]`` for SIREN). All of them are ``entropy_ops`` calls:

- ``pg``: plain policy gradient with the importance ratio, ``agg(-A r)``: no entropy control.
- ``clip_cov``: Clip-Cov (the Entropy Mechanism paper): the gradient of a random few tokens of
  high covariance ``cov(logp, A)`` is detached (``eo.clip_cov_policy_loss``).
- ``kl_cov``: KL-Cov: the top tokens by covariance get a ``|logp - old_logp|`` penalty
  (``eo.kl_cov_policy_loss``).
- ``siren``: ``pg`` plus SIREN's selective entropy regularizer, anchored to the starting top-p
  entropy of the peak tokens (``eo.selective_entropy_loss``).

The ratios are larger than the papers' (2e-4 of a batch of ~10^6 tokens): this batch has ~10^3,
so 2e-4 of it would act on one token.
"""
from dataclasses import dataclass

import entropy_ops as eo

METHODS = ("pg", "clip_cov", "kl_cov", "siren")


@dataclass(frozen=True)
class MethodConfig:
    clip_cov_ratio: float = 0.2
    clip_cov_lb: float = 0.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 0.2
    kl_coef: float = 1.0
    siren_top_p: float = 0.95  # 0.8 keeps only 1-2 tokens of this peaked policy: too little to act on
    siren_peak_q: float = 0.8
    siren_coef: float = 0.5


def _pg(logp, old_logp, adv, mask, logits, anchor, cfg, gen):
    return eo.agg_loss(-adv * (logp - old_logp).exp(), mask, "token-mean")


def _clip_cov(logp, old_logp, adv, mask, logits, anchor, cfg, gen):
    return eo.clip_cov_policy_loss(logp, old_logp, adv, mask, clip_cov_ratio=cfg.clip_cov_ratio,
                                   clip_cov_lb=cfg.clip_cov_lb, clip_cov_ub=cfg.clip_cov_ub,
                                   generator=gen).loss


def _kl_cov(logp, old_logp, adv, mask, logits, anchor, cfg, gen):
    return eo.kl_cov_policy_loss(logp, old_logp, adv, mask, kl_cov_ratio=cfg.kl_cov_ratio,
                                 kl_coef=cfg.kl_coef).loss


def _siren(logp, old_logp, adv, mask, logits, anchor, cfg, gen):
    reg = eo.selective_entropy_loss(logits, mask, anchor, top_p=cfg.siren_top_p, peak_q=cfg.siren_peak_q,
                                    coef=cfg.siren_coef)
    return _pg(logp, old_logp, adv, mask, logits, anchor, cfg, gen) + reg


LOSSES = {"pg": _pg, "clip_cov": _clip_cov, "kl_cov": _kl_cov, "siren": _siren}


def siren_anchor(logits, mask, cfg):
    """SIREN's anchor: the mean top-p entropy of the peak tokens of the starting policy (0-d)."""
    h = eo.top_p_entropy(logits.detach(), cfg.siren_top_p, mask=mask)
    peak = eo.peak_entropy_mask(h, mask, cfg.siren_peak_q)
    return (h * peak).sum() / peak.sum().clamp(min=1)
