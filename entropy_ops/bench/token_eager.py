"""The eager way the papers' and verl's code computes the token-level ops, fp32, ``[B, T]`` with a
bool response mask: the yardsticks of the token rows of ``python -m entropy_ops bench``.

Written here from the algorithms (SPEC §3.2), in the style of that code: per-row boolean indexing
and ``torch.quantile`` (SIREN, ARES), and for the covariance losses verl's ``clip_cov`` /
``kl_cov`` steps (``.item()``, ``nonzero``, a host ``randperm``, ``.cpu()`` + ``torch.topk``).
Every boolean index, ``nonzero`` and ``.item()`` waits for the device: these functions
synchronize with the host (``window_entropy`` excepted), which the package's ops never do.
"""
import torch
import torch.nn.functional as F

# The op parameters the benchmark uses: ARES's window, SIREN's quantile, verl's defaults.
WINDOW, OFFSET = 4, 1
Q = 0.8
CLIP_RATIO = 0.2
CLIP_COV_RATIO, CLIP_COV_LB, CLIP_COV_UB = 2e-4, 1.0, 5.0
KL_COV_RATIO, KL_COEF = 2e-4, 1.0


def _masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def eager_window_entropy(entropy, mask):
    """Sums of the masked entropy and of the mask over each window (``unfold`` of the right-padded
    row), then their ratio: no host sync."""
    t = entropy.shape[1]
    m = mask.to(entropy.dtype)
    pad = (0, OFFSET + WINDOW - 1)
    sums = F.pad(entropy * m, pad).unfold(1, WINDOW, 1)[:, OFFSET:OFFSET + t].sum(-1)
    counts = F.pad(m, pad).unfold(1, WINDOW, 1)[:, OFFSET:OFFSET + t].sum(-1)
    return torch.where(counts > 0, sums / counts.clamp(min=1), 0)


def _row_quantile(values, mask, b):
    v = values[b][mask[b]]  # boolean indexing: a host sync per row
    return torch.quantile(v, Q) if v.numel() else v.new_tensor(float("nan"))


def eager_masked_quantile(values, mask):
    """Per row: ``torch.quantile(values[b][mask[b]], q)``, a Python loop over the batch."""
    return torch.stack([_row_quantile(values, mask, b) for b in range(values.shape[0])])


def eager_masked_quantile_all(values, mask):
    """``torch.quantile(values[mask], q)`` (torch refuses more than 16M elements)."""
    return torch.quantile(values[mask], Q)


def eager_peak_entropy_mask(entropy, mask):
    """SIREN's peak mask: the per-row quantiles by the loop above, then one comparison."""
    threshold = eager_masked_quantile(entropy, mask)
    return (entropy > threshold[:, None]) & mask


def eager_clip_cov(logp, old_logp, advantages, mask, generator):
    """verl's ``clip_cov`` policy loss (token-mean): returns ``(loss, selected)``, ``selected``
    the tokens whose loss was multiplied by 0. ``generator``: a CPU generator (verl's
    ``randperm`` runs on the host)."""
    m = mask.to(logp.dtype)  # verl's response mask is float
    ratio = torch.exp(logp - old_logp)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1 - CLIP_RATIO, 1 + CLIP_RATIO)
    with torch.no_grad():
        cov = (advantages - _masked_mean(advantages, m)) * (logp - _masked_mean(logp, m))
        cov[~mask | (l2 > l1)] = -torch.inf
        k = max(int(CLIP_COV_RATIO * m.sum().item()), 1)
        candidates = torch.nonzero((cov > CLIP_COV_LB) & (cov < CLIP_COV_UB) & mask)
        if len(candidates) > 0:
            candidates = candidates[torch.randperm(len(candidates), generator=generator)[:k]]
    keep = torch.ones_like(advantages)
    keep[candidates[:, 0], candidates[:, 1]] = 0
    loss = _masked_mean(torch.maximum(l1, l2) * keep, m)
    return loss, keep == 0


def eager_kl_cov(logp, old_logp, advantages, mask):
    """verl's ``kl_cov`` policy loss (token-mean): the covariance of the valid tokens on the host,
    ``torch.topk`` there, the penalized loss written back by index. Returns ``(loss, selected)``."""
    m = mask.to(logp.dtype)
    log_ratio = logp - old_logp
    losses = -advantages * torch.exp(log_ratio)
    penalized = losses + KL_COEF * log_ratio.abs()
    valid = torch.nonzero(mask.reshape(-1), as_tuple=True)[0]
    a = advantages[mask].detach().cpu()
    x = logp[mask].detach().cpu()
    selected = torch.zeros_like(mask)
    if len(a) > 0:
        cov = (a - a.mean()) * (x - x.mean())
        top = torch.topk(cov, max(1, int(len(cov) * KL_COV_RATIO)), largest=True).indices
        flat = valid[top.to(valid.device)]
        rows, cols = flat // mask.shape[1], flat % mask.shape[1]
        losses[rows, cols] = penalized[rows, cols]
        selected[rows, cols] = True
    return _masked_mean(losses, m), selected
