"""The eager formulas trainers and papers' code run today, one per op, fp32 upcast (fp64 kept); all with the
calling convention ``fn(logits [N, V], labels [N]) -> (logp | None, H | None, *other outputs)``.

``top_p_entropy`` is the sort-based way (softmax, a full sort of ``[N, V]``, cumsum, scatter the
nucleus back, masked entropy), and SIREN's shortcut (``eager_top_p_entropy_topk``: the top
``TOP_K`` probabilities, sorted by ``topk``, then the cumsum inside them; inexact when the nucleus
holds more than ``TOP_K`` tokens); ``min_p_logprobs`` builds Lp-Reg's proxy with a ``[N, V]`` mask and a
masked log-softmax; ``token_stats`` computes each statistic by its definition.
"""
import math

import torch

# The op parameters the benchmark uses (the ops' defaults).
TOP_P = 0.8
MIN_P = 0.02
TOP_K = 10000  # SIREN's top-k before its nucleus cumsum


def _upcast(logits):
    """fp32 for 16-bit logits (what trainers do); fp64 stays fp64, as SPEC §2 computes it."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _entropy(z):
    return torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)


def eager_entropy(logits, labels=None):
    return None, _entropy(_upcast(logits))


def eager_logprobs_and_entropy(logits, labels):
    z = _upcast(logits)
    return torch.log_softmax(z, -1).gather(-1, labels[:, None]).squeeze(-1), _entropy(z)


def eager_top_p_entropy(logits, labels=None):
    z = _upcast(logits)
    sorted_p, order = torch.softmax(z, -1).sort(-1, descending=True)
    keep_sorted = sorted_p.cumsum(-1) < TOP_P
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    kept = z.masked_fill(~keep, float("-inf"))
    p = torch.softmax(kept, -1)
    return None, torch.logsumexp(kept, -1) - (p * torch.where(keep, z, 0)).sum(-1)


def eager_top_p_entropy_topk(logits, labels=None):
    z = _upcast(logits)
    top_p, index = torch.softmax(z, -1).topk(min(TOP_K, z.shape[-1]), dim=-1)  # sorted, descending
    keep = top_p.cumsum(-1) < TOP_P
    keep[:, 0] = True
    z_top = z.gather(-1, index)
    kept = z_top.masked_fill(~keep, float("-inf"))
    p = torch.softmax(kept, -1)
    return None, torch.logsumexp(kept, -1) - (p * torch.where(keep, z_top, 0)).sum(-1)


def eager_min_p_logprobs(logits, labels):
    z = _upcast(logits)
    p = torch.softmax(z, -1)
    keep = p >= MIN_P * p.amax(-1, keepdim=True)
    logp = torch.log_softmax(z.masked_fill(~keep, float("-inf")), -1)
    return logp.gather(-1, labels[:, None]).squeeze(-1), None


def eager_token_stats(logits, labels):
    """``(logp, entropy, the other six statistics)``: all are outputs, so ``torch.compile`` cannot
    drop any of them; the error columns check logp and entropy."""
    z = _upcast(logits)
    lse = torch.logsumexp(z, -1)
    log_p = torch.log_softmax(z, -1)
    p = log_p.exp()
    h = lse - (p * z).sum(-1)
    logp = log_p.gather(-1, labels[:, None]).squeeze(-1)
    return (
        logp, h, lse,
        z.amax(-1) - lse,                                          # max_logp
        (p * p).sum(-1),                                           # collision
        (p * log_p ** 2).sum(-1) - h ** 2,                         # varentropy
        lse - z.mean(-1) - math.log(z.shape[-1]),                  # self_certainty
        (p * p * (log_p + h[:, None])).sum(-1),                    # entropy_drift
    )


EAGER = {
    "entropy": eager_entropy,
    "logprobs_and_entropy": eager_logprobs_and_entropy,
    "top_p_entropy": eager_top_p_entropy,
    "min_p_logprobs": eager_min_p_logprobs,
    "token_stats": eager_token_stats,
}
