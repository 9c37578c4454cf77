"""The ``torch`` backend of the selective row ops (``top_p_*``, ``min_p_logprobs``): pure PyTorch,
chunked over rows like ``torch_backend``, following the rules of ``kernel.py``.

The top-p crossing value is found by radix selection on the bit pattern of ``e`` (monotone in
``e >= 0``): per round, a histogram of the mass over the next ``_DIGIT_BITS`` bits of the key,
restricted to the elements that share the key prefix chosen so far; never a sort of the row.
"""
import torch

from .._backends import register_kernel
from .kernel import MinPKernel, TopPKernel, acc_dtype
from .torch_backend import _chunk_label_log_prob, _chunks, _label_terms

_DIGIT_BITS = 10
# e <= 1, so the keys of fp32 e fit in 30 bits and those of fp64 e in 62.
_KEY_BITS = {torch.float32: 30, torch.float64: 62}
_KEY_INT = {torch.float32: torch.int32, torch.float64: torch.int64}


def _row_e(x, temperature, temperature_scalar, start, end):
    """``(row_max [n], s [n, V], e [n, V], bad [n])`` of a chunk of rows: ``s = (x - max) / T``,
    ``e = exp(s)``. Bad rows (NaN/+inf anywhere, or all ``-inf``) get ``e = 0`` so that selection
    never meets a NaN; their outputs are made NaN by the callers. Every kernel below computes ``e``
    here, so forward, backward and mask agree bit for bit."""
    raw = x[start:end].to(acc_dtype(x.dtype))
    row_max = raw.amax(dim=-1)
    bad = ~torch.isfinite(row_max)
    t = temperature_scalar if temperature is None else temperature[start:end, None]
    s = (raw - row_max[:, None]) / t
    e = torch.where(bad[:, None], 0, s.exp())
    return row_max, s, e, bad


def _crossing(e, target):
    """``(kappa, above, count, found)`` per row: the crossing value of the top-p rule, the mass
    strictly above it, how many tokens equal it, and whether the row's mass reaches ``target``."""
    key = e.view(_KEY_INT[e.dtype]).long()
    n_rows = e.shape[0]
    prefix = torch.zeros(n_rows, dtype=torch.long, device=e.device)
    above = torch.zeros(n_rows, dtype=e.dtype, device=e.device)
    active = torch.ones_like(e, dtype=torch.bool)
    found = torch.ones(n_rows, dtype=torch.bool, device=e.device)
    high = _KEY_BITS[e.dtype]
    while high > 0:  # digits of the key from the top: bits [low, high)
        low = max(high - _DIGIT_BITS, 0)
        n_bins = 1 << (high - low)
        digit = (key >> low) & (n_bins - 1)
        hist = torch.zeros(n_rows, n_bins, dtype=e.dtype, device=e.device)
        hist.scatter_add_(1, digit, torch.where(active, e, 0))
        # mass_from[d] = mass of the active elements with digit >= d (non-increasing in d).
        mass_from = hist.flip(-1).cumsum(-1).flip(-1)
        reaches = above[:, None] + mass_from >= target[:, None]
        best = reaches.sum(-1) - 1  # the largest digit whose upper mass reaches the target
        found &= best >= 0
        best = best.clamp(min=0)
        upper = mass_from.gather(1, (best + 1).clamp(max=n_bins - 1)[:, None]).squeeze(1)
        above = above + torch.where(best + 1 < n_bins, upper, 0)
        prefix = (prefix << (high - low)) | best
        active &= digit == best[:, None]
        high = low
    kappa = prefix.to(_KEY_INT[e.dtype]).view(e.dtype)
    return kappa, above, active.sum(-1), found


def nucleus_ties_kept(target, above, kappa, count, any_above, inclusive):
    """``csrc/include/entropy_ops/nucleus.h``'s rule, elementwise over rows."""
    q = (target - above) / kappa
    r = (torch.ceil(q) - 1).clamp(min=0)
    r = torch.where(q >= count + 1, count.to(q.dtype), r)
    r = torch.where(q > 0, r, 0).long().clamp(max=count)
    if inclusive:
        return torch.minimum(r + 1, count)
    return torch.where((r == 0) & ~any_above, 1, r)


def _nucleus(e, top_p, inclusive):
    """``(cut_e, cut_index)`` per row of ``kernel.py``'s top-p rule."""
    n_rows, vocab = e.shape
    keep_all = torch.full((n_rows,), top_p >= 1.0, device=e.device)
    target = top_p * e.sum(-1)
    kappa, above, count, found = _crossing(e, target)
    keep_all |= ~found
    any_above = (e > kappa[:, None]).any(-1)
    r = nucleus_ties_kept(target, above, kappa, count, any_above, inclusive)
    ties = e == kappa[:, None]
    rank = ties.long().cumsum(-1)  # 1-based rank of each kappa token in index order
    index = torch.arange(vocab, device=e.device)
    cut_index = torch.where(ties & (rank <= r[:, None]), index, -1).amax(-1)
    cut_e = torch.where(keep_all, 0, kappa)
    cut_index = torch.where(keep_all, vocab - 1, cut_index)
    return cut_e, cut_index


def _kept(e, cut_e, cut_index):
    index = torch.arange(e.shape[-1], device=e.device)
    return (e > cut_e[:, None]) | ((e == cut_e[:, None]) & (index <= cut_index[:, None]))


def top_p_entropy_fwd_torch(x, temperature, temperature_scalar, top_p, mask):
    n_rows, vocab = x.shape
    acc = acc_dtype(x.dtype)
    out = {name: torch.empty(n_rows, dtype=acc, device=x.device)
           for name in ("entropy", "row_max", "cut_e", "log_norm")}
    out["cut_index"] = torch.empty(n_rows, dtype=torch.int32, device=x.device)
    for start, end in _chunks(n_rows, vocab):
        row_max, s, e, bad = _row_e(x, temperature, temperature_scalar, start, end)
        cut_e, cut_index = _nucleus(e, top_p, inclusive=False)
        kept = _kept(e, cut_e, cut_index)
        s_k = torch.where(kept, e, 0).sum(-1)
        # A p = 0 term contributes exactly 0 (never 0 * -inf).
        sz_k = torch.where(kept & (e > 0), e * s, 0).sum(-1)
        log_norm = s_k.log()
        nan = float("nan")
        out["entropy"][start:end] = torch.where(bad, nan, log_norm - sz_k / s_k)
        out["log_norm"][start:end] = torch.where(bad, nan, log_norm)
        out["row_max"][start:end] = row_max
        out["cut_e"][start:end] = cut_e
        out["cut_index"][start:end] = cut_index.int()
    if mask is not None:
        out = {name: torch.where(mask, v, 0) for name, v in out.items()}
    return out["entropy"], out["row_max"], out["cut_e"], out["cut_index"], out["log_norm"]


def top_p_entropy_bwd_torch(x, temperature, temperature_scalar, mask, entropy, row_max, cut_e,
                            cut_index, log_norm, grad_entropy, out):
    n_rows, vocab = x.shape
    for start, end in _chunks(n_rows, vocab):
        _, s, e, bad = _row_e(x, temperature, temperature_scalar, start, end)
        kept = _kept(e, cut_e[start:end], cut_index[start:end].long())
        log_q = s - log_norm[start:end, None]
        g_h = grad_entropy[start:end, None]
        g = -g_h * log_q.exp() * (log_q + entropy[start:end, None])
        g = torch.where(kept & (e > 0) & (g_h != 0), g, 0)
        g = torch.where(bad[:, None] & (g_h != 0), float("nan"), g)
        g = g / (temperature_scalar if temperature is None else temperature[start:end, None])
        if mask is not None:
            g = torch.where(mask[start:end, None], g, 0)
        out[start:end] = g


def top_p_mask_torch(x, temperature, temperature_scalar, top_p, inclusive, mask, out):
    n_rows, vocab = x.shape
    for start, end in _chunks(n_rows, vocab):
        _, _, e, bad = _row_e(x, temperature, temperature_scalar, start, end)
        cut_e, cut_index = _nucleus(e, top_p, inclusive)
        live = ~bad if mask is None else ~bad & mask[start:end]
        out[start:end] = _kept(e, cut_e, cut_index) & live[:, None]


def min_p_logprobs_fwd_torch(x, labels, temperature, temperature_scalar, ignore_index, min_p, mask):
    n_rows, vocab = x.shape
    acc = acc_dtype(x.dtype)
    logp = torch.empty(n_rows, dtype=acc, device=x.device)
    row_max_out = torch.empty_like(logp)
    log_norm_out = torch.empty_like(logp)
    for start, end in _chunks(n_rows, vocab):
        row_max, s, e, bad = _row_e(x, temperature, temperature_scalar, start, end)
        kept = e >= min_p
        log_norm = torch.where(kept, e, 0).sum(-1).log()
        y, ignored, in_range = _label_terms(labels, ignore_index, vocab, start, end)
        s_y = _chunk_label_log_prob(x, y, row_max, log_norm, temperature, temperature_scalar, start, end)
        kept_y = kept.gather(-1, y[:, None]).squeeze(-1)
        row = torch.where(kept_y, s_y, float("-inf"))
        row = torch.where(in_range & ~bad, row, float("nan"))
        logp[start:end] = torch.where(ignored, 0, row)
        row_max_out[start:end] = row_max
        log_norm_out[start:end] = torch.where(bad, float("nan"), log_norm)
    if mask is not None:
        logp, row_max_out, log_norm_out = (torch.where(mask, v, 0) for v in (logp, row_max_out, log_norm_out))
    return logp, row_max_out, log_norm_out


def min_p_logprobs_bwd_torch(x, labels, temperature, temperature_scalar, ignore_index, min_p, mask,
                             row_max, log_norm, grad_logp, out):
    n_rows, vocab = x.shape
    for start, end in _chunks(n_rows, vocab):
        _, s, e, bad = _row_e(x, temperature, temperature_scalar, start, end)
        kept = e >= min_p
        y, ignored, in_range = _label_terms(labels, ignore_index, vocab, start, end)
        kept_y = kept.gather(-1, y[:, None]).squeeze(-1)
        g_l = grad_logp[start:end, None]
        q = (s - log_norm[start:end, None]).exp()
        one_hot = (torch.arange(vocab, device=y.device) == y[:, None]).to(q.dtype)
        live = (g_l != 0) & (kept_y & ~ignored)[:, None]
        g = torch.where(live & kept, g_l * (one_hot - q), 0)
        # A bad row or an (unchecked) out-of-range label has a NaN logp: its gradient is NaN too,
        # as on the other backends, whether or not the NaN row's e "keeps" the label.
        poisoned = (g_l != 0) & ((bad | ~in_range) & ~ignored)[:, None]
        g = torch.where(poisoned, float("nan"), g)
        g = g / (temperature_scalar if temperature is None else temperature[start:end, None])
        if mask is not None:
            g = torch.where(mask[start:end, None], g, 0)
        out[start:end] = g


_TOP_P = TopPKernel(top_p_entropy_fwd_torch, top_p_entropy_bwd_torch, top_p_mask_torch)
register_kernel("torch", "top_p_entropy", _TOP_P)
register_kernel("torch", "top_p_mask", _TOP_P)
register_kernel("torch", "min_p_logprobs", MinPKernel(min_p_logprobs_fwd_torch, min_p_logprobs_bwd_torch))
