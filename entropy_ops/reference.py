"""One plain-torch reference per op, no cleverness: what every backend is tested against.

Everything is computed in float64 (tests compare in float64). Temperatures, masks and labels follow
the same conventions as the public ops (SPEC §2).
"""
import math

import torch

from .ops._types import TokenStats


def _z(logits, temperature):
    z = logits.double()
    t = temperature.double() if isinstance(temperature, torch.Tensor) else float(temperature)
    if isinstance(t, torch.Tensor) and t.dim() > 0:
        t = t.unsqueeze(-1)
    return z / t


def _masked(value, mask):
    return value if mask is None else torch.where(mask, value, torch.zeros_like(value))


def _lse_and_entropy(z):
    # In the frame of the row max (detached: H and the gradient of lse do not depend on the
    # shift), as SPEC §2 asks of the kernels: lse - sum p z unshifted loses 5e-5 at a 1e6 shift.
    m = z.detach().amax(-1, keepdim=True)
    d = z - torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    lse_d = torch.logsumexp(d, dim=-1)
    p = (d - lse_d.unsqueeze(-1)).exp()
    # H = lse - sum p z, with -inf logits (p = 0) taken as z = 0 so that autograd through the
    # reference gives 0, not 0 * -inf = NaN, for masked vocabulary entries.
    h = lse_d - (p * torch.where(torch.isneginf(d), torch.zeros_like(d), d)).sum(-1)
    lse = lse_d + m.squeeze(-1).where(torch.isfinite(m.squeeze(-1)), torch.zeros_like(lse_d))
    # SPEC §2: an all -inf row (lse = -inf) or one holding NaN/+inf gives NaN.
    bad = ~torch.isfinite(lse) | torch.isnan(z).any(-1) | torch.isposinf(z).any(-1)
    nan = torch.full_like(lse, float("nan"))
    return torch.where(bad, nan, lse), torch.where(bad, nan, h)


def entropy_ref(logits, temperature=1.0, mask=None):
    """``H = -sum_j p_j log p_j`` of ``softmax(logits / T)``, float64, 0 where ``mask`` is False."""
    _, h = _lse_and_entropy(_z(logits, temperature))
    return _masked(h, mask)


def logprobs_and_entropy_ref(logits, labels, temperature=1.0, ignore_index=-100, mask=None):
    """``(log p_y, H)`` in float64; ``logp = 0`` where ``labels == ignore_index``, NaN where the
    label is out of range, both 0 where ``mask`` is False."""
    z = _z(logits, temperature)
    lse, h = _lse_and_entropy(z)
    vocab = z.shape[-1]
    y = labels.long()
    in_range = (y >= 0) & (y < vocab)
    z_y = z.gather(-1, y.clamp(0, vocab - 1).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(in_range, z_y - lse, torch.full_like(lse, float("nan")))
    logp = torch.where(y == ignore_index, torch.zeros_like(logp), logp)
    return _masked(logp, mask), _masked(h, mask)


def token_stats_ref(logits, labels=None, temperature=1.0, ignore_index=-100, mask=None):
    """:class:`TokenStats` in float64, straight from the definitions of SPEC §3.1 (``varentropy`` as
    ``sum p (log p)^2 - H^2``, ``self_certainty`` with the mean over all V entries, so ``+inf`` on
    rows with ``-inf`` logits); NaN in rows that are all ``-inf`` or hold NaN/+inf; ``logp`` as in
    :func:`logprobs_and_entropy_ref` (None without labels); all 0 where ``mask`` is False."""
    z = _z(logits, temperature)
    lse, h = _lse_and_entropy(z)
    log_p = z - lse.unsqueeze(-1)
    p = log_p.exp()
    live = p > 0
    zero = torch.zeros_like(p)
    stats = {
        "lse": lse,
        "entropy": h,
        "max_logp": z.amax(-1) - lse,
        "collision": (p * p).sum(-1),
        "varentropy": torch.where(live, p * log_p ** 2, zero).sum(-1) - h ** 2,
        "self_certainty": lse - z.mean(-1) - math.log(z.shape[-1]),
        "entropy_drift": torch.where(live, p * p * (log_p + h.unsqueeze(-1)), zero).sum(-1),
    }
    nan = torch.isnan(h)
    stats = {k: _masked(torch.where(nan, torch.full_like(v, float("nan")), v), mask) for k, v in stats.items()}
    logp = None if labels is None else logprobs_and_entropy_ref(logits, labels, temperature, ignore_index, mask)[0]
    return TokenStats(logp=logp, **stats)


def _nucleus_ref(z, top_p, inclusive):
    """Bool ``[..., V]``: sort by (p descending, index ascending), keep the prefix whose cumulative
    mass is ``< top_p`` (exclusive, at least one token) or whose mass *before* the token is
    ``< top_p`` (inclusive: the crossing token too); ``top_p >= 1`` keeps everything.
    The cumulative sums round in float64: where a cut falls exactly on a mass that is not dyadic
    (a uniform 6-token row at ``top_p = 5/6``) they may move it by one token, where the backends'
    tie rule (``backends/kernel.py``) is exact. Tests keep random rows clear of the cut and build
    tied rows with dyadic masses."""
    p = torch.softmax(z, dim=-1)
    order = torch.sort(p, dim=-1, descending=True, stable=True).indices
    sorted_p = p.gather(-1, order)
    cum = sorted_p.cumsum(-1)
    keep_sorted = (cum - sorted_p < top_p) if inclusive else (cum < top_p)
    keep_sorted[..., 0] = True
    if top_p >= 1:
        keep_sorted[:] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def _bad_rows(z):
    return torch.isnan(z).any(-1) | torch.isposinf(z).any(-1) | torch.isneginf(z).all(-1)


def top_p_entropy_ref(logits, top_p=0.8, temperature=1.0, mask=None):
    """Entropy of the exclusive nucleus renormalized, float64, by a full sort (SPEC §3.1); the kept
    set is fixed (found without gradient), so autograd gives gradient to kept logits only."""
    z = _z(logits, temperature)
    with torch.no_grad():
        kept = _nucleus_ref(z, top_p, inclusive=False)
        bad = _bad_rows(z)
    _, h = _lse_and_entropy(torch.where(kept, z, torch.full_like(z, float("-inf"))))
    h = torch.where(bad, torch.full_like(h, float("nan")), h)
    return _masked(h, mask)


def top_p_mask_ref(logits, top_p, temperature=1.0, inclusive=True, mask=None):
    """Bool nucleus ``[..., V]`` by a full sort; all False in rows that are bad or masked."""
    z = _z(logits, temperature)
    kept = _nucleus_ref(z, top_p, inclusive)
    live = ~_bad_rows(z)
    if mask is not None:
        live = live & mask
    return kept & live.unsqueeze(-1)


def min_p_logprobs_ref(logits, labels, min_p=0.02, temperature=1.0, ignore_index=-100, mask=None):
    """``log q_y`` for ``q = softmax`` over the tokens with ``p_j >= min_p * max p``, float64;
    ``-inf`` where the label is filtered, 0 where it is ``ignore_index``, NaN where it is out of
    range or the row is bad, 0 where ``mask`` is False. Gradient flows to kept logits only."""
    z = _z(logits, temperature)
    with torch.no_grad():
        p = torch.softmax(z, dim=-1)
        kept = p >= min_p * p.amax(-1, keepdim=True)
        bad = _bad_rows(z)
    lse = torch.logsumexp(torch.where(kept, z, torch.full_like(z, float("-inf"))), dim=-1)
    vocab = z.shape[-1]
    y = labels.long()
    in_range = (y >= 0) & (y < vocab)
    y_c = y.clamp(0, vocab - 1).unsqueeze(-1)
    z_y = z.gather(-1, y_c).squeeze(-1)
    kept_y = kept.gather(-1, y_c).squeeze(-1)
    nan = torch.full_like(lse, float("nan"))
    logp = torch.where(kept_y, z_y - lse, torch.full_like(lse, float("-inf")))
    logp = torch.where(in_range & ~bad, logp, nan)
    logp = torch.where(y == ignore_index, torch.zeros_like(logp), logp)
    return _masked(logp, mask)


# ---- policy losses (SPEC §3.2), written from the formulas with Python loops over tokens ----

def agg_loss_ref(loss_mat, mask, mode, dp_size=1, batch_num_tokens=None, global_batch_size=None,
                 loss_scale_factor=None):
    """verl 0.9.1's ``agg_loss`` in float64; 0 for an empty mask."""
    m = mask.bool()
    L = loss_mat.double()
    B, T = L.shape
    seq_sums = [sum((L[b, t] for t in range(T) if m[b, t]), L.new_zeros(())) for b in range(B)]
    seq_counts = [int(m[b].sum()) for b in range(B)]
    if mode == "token-sum":
        return sum(seq_sums, L.new_zeros(())) * dp_size
    if mode == "token-mean":
        count = sum(seq_counts) if batch_num_tokens is None else int(batch_num_tokens)
        return sum(seq_sums, L.new_zeros(())) / max(count, 1) * dp_size
    live = [b for b in range(B) if seq_counts[b] > 0]
    n_seqs = len(live) if global_batch_size is None else int(global_batch_size)
    if mode == "seq-mean-token-mean":
        total = sum((seq_sums[b] / (seq_counts[b] + 1e-8) for b in live), L.new_zeros(()))
    else:
        total = sum((seq_sums[b] for b in live), L.new_zeros(()))
    loss = total / max(n_seqs, 1) * dp_size
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (max(T, 1) if loss_scale_factor is None else loss_scale_factor)  # T = 0: 0 / 1
    return loss


def token_covariance_ref(logp, advantages, mask):
    m = mask.bool()
    x, a = logp.detach().double(), advantages.detach().double()
    n = int(m.sum())
    if n == 0:
        return torch.zeros_like(x)
    return torch.where(m, (a - a[m].mean()) * (x - x[m].mean()), torch.zeros_like(x))


def _top_k_tokens(scores, eligible, k):
    """Flat indices of the k eligible tokens of largest score, ties to the lowest index."""
    values, ok = scores.reshape(-1).tolist(), eligible.reshape(-1).tolist()  # exact ints for int64 keys
    flat = [(-values[i], i) for i in range(len(values)) if ok[i]]
    return {i for _, i in sorted(flat)[:k]}


def random_keys_ref(seed, first, n):
    """Clip-Cov's keys ``[first, first + n)`` of the stream seeded with ``seed`` (Python ints):
    ``splitmix64(seed, j) >> 2`` in arbitrary-precision integers reduced modulo ``2**64``, written
    from SplitMix64's definition (Steele, Lea, Flood 2014); int64 ``[n]``."""
    m64 = (1 << 64) - 1
    out = []
    for j in range(first, first + n):
        z = (seed + (j + 1) * 0x9E3779B97F4A7C15) & m64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
        out.append((z ^ (z >> 31)) >> 2)
    return torch.tensor(out, dtype=torch.int64)


def clip_cov_policy_loss_ref(logp, old_logp, advantages, mask, random_keys, clip_ratio=0.2,
                             clip_ratio_low=None, clip_ratio_high=None, clip_cov_ratio=2e-4,
                             clip_cov_lb=1.0, clip_cov_ub=5.0, loss_agg_mode="token-mean", weights=None, **agg):
    """Clip-Cov with the random choice given as ``random_keys`` (the candidates with the largest
    keys are chosen); float64, differentiable wrt ``logp``. ``agg``: :func:`agg_loss_ref`'s
    ``dp_size``, ``batch_num_tokens``, ``global_batch_size``, ``loss_scale_factor``."""
    m = mask.bool()
    x, old, a = logp.double(), old_logp.double(), advantages.double()
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    r = torch.exp(x - old)
    l1, l2 = -a * r, -a * torch.clamp(r, 1 - low, 1 + high)
    cov = token_covariance_ref(x, a, m)
    candidate = m & ~(l2 > l1) & (cov > clip_cov_lb) & (cov < clip_cov_ub)
    n_valid = int(m.sum())
    k = max(int(clip_cov_ratio * n_valid), 1)
    chosen = _top_k_tokens(random_keys, candidate, k)
    selected = torch.zeros(m.numel(), dtype=torch.bool)
    selected[list(chosen)] = True
    selected = selected.view(m.shape).to(m.device)
    losses = torch.where(selected, torch.zeros_like(l1), torch.maximum(l1, l2))
    if weights is not None:
        losses = losses * weights.double()
    ppo_kl = (old - x.detach())[m].mean() if n_valid else x.new_zeros(())
    frac = selected.sum().double() / n_valid if n_valid else x.new_zeros(())
    return agg_loss_ref(losses, m, loss_agg_mode, **agg), ppo_kl, selected, frac


def kl_cov_policy_loss_ref(logp, old_logp, advantages, mask, kl_cov_ratio=2e-4, kl_coef=1.0,
                           loss_agg_mode="token-mean", weights=None, **agg):
    """KL-Cov in float64, differentiable wrt ``logp`` (``agg`` as in :func:`clip_cov_policy_loss_ref`)."""
    m = mask.bool()
    x, old, a = logp.double(), old_logp.double(), advantages.double()
    abs_kl = (x - old).abs()
    l = -a * torch.exp(x - old)
    n_valid = int(m.sum())
    k = max(int(kl_cov_ratio * n_valid), 1) if n_valid else 0
    chosen = _top_k_tokens(token_covariance_ref(x, a, m), m, k)
    selected = torch.zeros(m.numel(), dtype=torch.bool)
    selected[list(chosen)] = True
    selected = selected.view(m.shape).to(m.device)
    losses = torch.where(selected, l + kl_coef * abs_kl, l)
    if weights is not None:
        losses = losses * weights.double()
    ppo_kl = abs_kl.detach()[m].mean() if n_valid else x.new_zeros(())
    frac = selected.sum().double() / n_valid if n_valid else x.new_zeros(())
    return agg_loss_ref(losses, m, loss_agg_mode, **agg), ppo_kl, selected, frac


# ---- token-level ops ----

def _sequences_ref(values, cu_seqlens):
    """``[(start, end)]`` of each sequence in the flattened tokens: rows of ``[B, T]``, or the
    ``cu_seqlens`` segments of packed ``[N]``."""
    if cu_seqlens is None:
        n_rows, row_len = values.shape
        return [(b * row_len, (b + 1) * row_len) for b in range(n_rows)]
    cu = [int(c) for c in cu_seqlens.tolist()]
    return list(zip(cu[:-1], cu[1:]))


def window_entropy_ref(entropy, mask=None, window=4, offset=1, cu_seqlens=None):
    """``out_t`` = mean of the valid ``entropy_j``, ``j in [t + offset, min(t + offset + window,
    end_t))``, 0 where none: each ``t``'s valid ``j`` listed by loops, gathered and averaged in
    float64 (autograd gives the reference gradient). A NaN entry reaches only the windows that
    hold it (a dense ``A @ entropy`` would spread it to every output through ``0 * NaN``)."""
    x = entropy.double().reshape(-1)
    valid = [True] * x.numel() if mask is None else mask.reshape(-1).tolist()
    windows = [[] for _ in range(x.numel())]
    for start, end in _sequences_ref(entropy, cu_seqlens):
        for t in range(start, end):
            windows[t] = [j for j in range(t + offset, min(t + offset + window, end)) if valid[j]]
    width = max(1, max((len(js) for js in windows), default=0))
    index = torch.zeros(x.numel(), width, dtype=torch.long)
    weights = torch.zeros(x.numel(), width, dtype=torch.float64)
    for t, js in enumerate(windows):
        index[t, :len(js)] = torch.tensor(js, dtype=torch.long)
        weights[t, :len(js)] = 1.0 / max(len(js), 1)
    x = torch.where(torch.tensor(valid, dtype=torch.bool), x, 0)  # a masked NaN is not read
    terms = torch.where(weights > 0, x[index], torch.zeros_like(weights))  # padding slots read nothing
    return (terms * weights).sum(-1).reshape(entropy.shape)


def _quantile_ref(v, q):
    """``torch.quantile`` ('linear') of a 1-d float64 tensor; numpy past torch's 16M-element cap."""
    if v.numel() == 0:
        return torch.full(q.shape, float("nan"), dtype=torch.float64)
    if v.numel() <= 1 << 24:
        return torch.quantile(v, q)
    import numpy as np
    return torch.from_numpy(np.quantile(v.numpy(), q.numpy(), method="linear"))


def masked_quantile_ref(values, mask, q, per_sequence=True, cu_seqlens=None):
    """float64 q-quantile (linear interpolation) of the valid, non-NaN entries, per sequence
    (``[S]``) or over all (``[]``), a 1-d ``q`` leading; NaN where a sequence has no valid entry."""
    v = values.double().reshape(-1)
    keep = ~torch.isnan(v) if mask is None else mask.reshape(-1) & ~torch.isnan(v)
    qs = torch.as_tensor(q, dtype=torch.float64).reshape(-1)
    spans = _sequences_ref(values, cu_seqlens) if per_sequence else [(0, v.numel())]
    per_span = [_quantile_ref(v[s:e][keep[s:e]], qs) for s, e in spans]
    out = torch.stack(per_span, dim=-1) if per_span else qs.new_empty(qs.shape[0], 0)  # no sequence: [Q, 0]
    out = out if per_sequence else out[:, 0]
    return out if torch.as_tensor(q).dim() == 1 else out[0]


def peak_entropy_mask_ref(entropy, mask, q=0.8, per_sequence=True, cu_seqlens=None):
    """``entropy > masked_quantile_ref(...)`` (in float64, per token's sequence) and ``mask``."""
    threshold = masked_quantile_ref(entropy, mask, q, per_sequence, cu_seqlens)
    per_token = torch.full((entropy.numel(),), float(threshold) if not per_sequence else 0.0,
                           dtype=torch.float64)
    if per_sequence:
        for i, (s, e) in enumerate(_sequences_ref(entropy, cu_seqlens)):
            per_token[s:e] = threshold[i]
    peak = (entropy.double().reshape(-1) > per_token).reshape(entropy.shape)
    return peak if mask is None else peak & mask


def entropy_threshold_ref(batches, q=0.95, momentum=0.99, cu_seqlens=None):
    """:class:`EntropyThreshold`'s value after each training step of ``batches`` (``(entropy,
    mask)`` pairs), in float64 from its definition: per-sequence q-quantile, median over the
    sequences that have one (linear interpolation: the mean of the two middle values), then
    ``value = new`` on the first update and ``momentum * value + (1 - momentum) * new`` after;
    unchanged by a step whose ``new`` is NaN (no valid tokens, or +-inf entropies whose median is
    NaN); NaN before any update."""
    value, initialized, values = float("nan"), False, []
    for entropy, mask in batches:
        per_sequence = masked_quantile_ref(entropy, mask, q, True, cu_seqlens).reshape(-1)
        live = per_sequence[~torch.isnan(per_sequence)]
        new = float(torch.quantile(live, 0.5)) if live.numel() else float("nan")
        if not math.isnan(new):
            value = new if not initialized else momentum * value + (1 - momentum) * new
            initialized = True
        values.append(value)
    return values


def selective_entropy_loss_ref(logits, mask, anchor, top_p=0.8, peak_q=0.8, coef=0.005, temperature=1.0,
                               cu_seqlens=None):
    """SIREN's regularizer in float64 from its formula: ``coef * (mean of the nucleus entropy over
    all peak tokens - anchor)^2`` (peaks chosen per sequence), 0 when there is no peak token; packed ``[N, V]``
    logits with ``cu_seqlens`` take each sequence's own quantile."""
    h = top_p_entropy_ref(logits, top_p, temperature, mask)
    peak = peak_entropy_mask_ref(h.detach(), mask, peak_q, True, cu_seqlens)
    if not bool(peak.any()):
        return (h * 0).sum()
    return coef * (h[peak].mean() - float(anchor)) ** 2


def linear_logprobs_and_entropy_ref(hidden, weight, labels, bias=None, temperature=1.0, ignore_index=-100,
                                    mask=None, logit_scale=1.0, softcap=None):
    """``(logp, H)`` in float64 of the logits ``z = softcap * tanh(logit_scale * (hidden @ weight^T +
    bias) / softcap)`` (no tanh without softcap), then as :func:`logprobs_and_entropy_ref`;
    ``labels`` ``[...]`` or ``[..., K]`` (``logp`` then ``[..., K]``). Differentiable wrt hidden,
    weight and bias."""
    pre = hidden.double() @ weight.double().T
    if bias is not None:
        pre = pre + bias.double()
    z = logit_scale * pre
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = _z(z, temperature)
    lse, h = _lse_and_entropy(z)
    y = labels.long()
    k_labels = y.dim() == z.dim()
    y = y if k_labels else y.unsqueeze(-1)
    vocab = z.shape[-1]
    z_y = z.gather(-1, y.clamp(0, vocab - 1))
    logp = z_y - lse.unsqueeze(-1)
    logp = torch.where((y >= 0) & (y < vocab), logp, torch.full_like(logp, float("nan")))
    logp = torch.where(y == ignore_index, torch.zeros_like(logp), logp)
    if mask is not None:
        logp = torch.where(mask.unsqueeze(-1), logp, torch.zeros_like(logp))
    return (logp if k_labels else logp.squeeze(-1)), _masked(h, mask)
