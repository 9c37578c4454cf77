"""Vocab-parallel ``top_p_entropy`` and ``top_p_mask`` (SPEC §3.3), in torch ops on the local shard.

The nucleus rule is ``backends/kernel.py``'s, over the FULL row: ``e_j = exp((x_j - M)/T)`` with
the global max ``M``, order by (``e`` descending, GLOBAL index ascending). The crossing value
``kappa`` is found by a distributed radix search on the bit pattern of ``e`` (monotone for
``e >= 0``), as the torch backend does on one row: each round every rank builds the histogram of
its mass over the next ``_DIGIT_BITS`` bits of the key (among elements sharing the prefix chosen so
far), one all-reduce SUM makes it the histogram of the full row, and every rank picks the same
digit. Then the tie count of each rank (one SUM) tells each rank how many of the kept ``kappa``
ties are its own: ties are kept by global index, i.e. first those of the shards that start lower.
Exact: the result is the single-process nucleus (masses summed in another order than the
single-process backends, so only rows within rounding of the cut may differ; ties are exact).

Collectives per call: MAX (row max), SUM (total mass, bad rows), ``ceil(30 / _DIGIT_BITS)`` SUMs of
``[N, 2^_DIGIT_BITS]`` float64 histograms (62 key bits in float64), SUM of the per-rank tie counts,
SUM of the nucleus sums (entropy only). The shard is re-read once per pass (memory stays at one
chunk of ``[rows, V_r]`` temporaries, as the torch backend). Backward: no collective.
"""
import torch

from ..backends.kernel import acc_dtype
from ..backends.torch_backend import _chunks
from ..backends.torch_selective import _KEY_BITS, _KEY_INT, nucleus_ties_kept
from ..ops._rows import Rows
from .shard import F64, all_sum, eager, first_order_only, global_max, layout_of, make_shard

# 64-bin histograms: 5 rounds for float32 keys (30 bits), 512 bytes per row per round; wider
# digits mean fewer rounds (latency) but more bytes (2^bits per row per round).
_DIGIT_BITS = 6


def _passes(shard):
    """What every pass over the shard needs: ``(rows, t, t_scalar, present)``."""
    return shard.rows, shard.t, shard.t_scalar, shard.present


def _e_chunks(passes, m_glob):
    """Yield ``(start, end, s, e)`` per chunk of rows: ``s = (x - M)/T``, ``e = exp(s)`` (0 where the
    shard has no mass in the row), both in the accumulation dtype, the same bits on every pass."""
    rows, t, t_scalar, present = passes
    for start, end in _chunks(rows.n, rows.vocab):
        raw = rows.take(start, end).to(acc_dtype(rows.x.dtype))
        temperature = t_scalar if t is None else t[start:end, None]
        s = (raw - m_glob[start:end, None]) / temperature
        yield start, end, s, torch.where(present[start:end, None], s.exp(), 0)


def _histogram(shard, m_glob, prefix, high, low):
    """``[N, 2^(high-low)]`` float64: local mass per digit ``key[low:high]`` among keys with ``prefix``
    above bit ``high`` (summed in the accumulation dtype, as the torch backend does; keys stay in
    their own integer width, int32 for float32, so no pass converts the whole shard twice)."""
    acc = acc_dtype(shard.rows.x.dtype)
    hist = torch.zeros(shard.n, 1 << (high - low), dtype=acc, device=shard.m.device)
    for start, end, _, e in _e_chunks(_passes(shard), m_glob):
        key = e.view(_KEY_INT[acc])
        active = (key >> high) == prefix[start:end, None]
        digit = ((key >> low) & ((1 << (high - low)) - 1)).long()
        hist[start:end].scatter_add_(1, digit, torch.where(active, e, 0))
    return hist.to(F64)


def _nucleus(shard, layout, m_glob, top_p: float, inclusive: bool, group):
    """``(cut_e, cut_index, bad)``: the cut of this shard (local indices) by ``kernel.py``'s rule on
    the full row, and the live rows that are bad on some rank (NaN/+inf) or all ``-inf``."""
    n = shard.n
    device = shard.m.device
    total = torch.zeros(n, dtype=F64, device=device)
    for start, end, _, e in _e_chunks(_passes(shard), m_glob):
        total[start:end] = e.sum(-1).to(F64)
    sums = all_sum([total, shard.bad], group)
    target = top_p * sums[:, 0]
    bad = ((sums[:, 1] > 0) | ~(m_glob > float("-inf"))) & shard.live
    acc = acc_dtype(shard.rows.x.dtype)
    prefix = torch.zeros(n, dtype=_KEY_INT[acc], device=device)
    above = torch.zeros(n, dtype=F64, device=device)
    found = torch.ones(n, dtype=torch.bool, device=device)
    high = _KEY_BITS[acc]
    while high > 0:  # the digits of the key from the top, bits [low, high)
        low = max(high - _DIGIT_BITS, 0)
        hist = _histogram(shard, m_glob, prefix, high, low)
        hist = all_sum(hist.unbind(-1), group)
        n_bins = hist.shape[-1]
        mass_from = hist.flip(-1).cumsum(-1).flip(-1)  # mass of the digits >= d
        best = (above[:, None] + mass_from >= target[:, None]).sum(-1) - 1
        found &= best >= 0
        best = best.clamp(min=0)
        upper = mass_from.gather(1, (best + 1).clamp(max=n_bins - 1)[:, None]).squeeze(1)
        above = above + torch.where(best + 1 < n_bins, upper, 0)
        prefix = (prefix << (high - low)) | best.to(prefix.dtype)
        high = low
    kappa = prefix.view(acc)
    ties_here = torch.zeros(n, dtype=torch.long, device=device)
    above_here = torch.zeros(n, dtype=torch.bool, device=device)
    for start, end, _, e in _e_chunks(_passes(shard), m_glob):
        ties_here[start:end] = (e == kappa[start:end, None]).sum(-1)
        above_here[start:end] = (e > kappa[start:end, None]).any(-1)
    per_rank = [ties_here if r == layout.rank else torch.zeros_like(ties_here) for r in range(layout.world)]
    sums = all_sum(per_rank + [above_here], group)
    counts = sums[:, :layout.world].round().long()
    before = sum(counts[:, r] for r in range(layout.world) if layout.starts[r] < layout.start)
    kept_ties = nucleus_ties_kept(target, above, kappa.to(F64), counts.sum(-1), sums[:, -1] > 0, inclusive)
    mine = (kept_ties - before).clamp(min=0).minimum(ties_here)
    keep_all = ~found | (top_p >= 1.0)
    cut_index = torch.empty(n, dtype=torch.long, device=device)
    for start, end, _, e in _e_chunks(_passes(shard), m_glob):
        ties = e == kappa[start:end, None]
        rank = ties.long().cumsum(-1)
        index = torch.arange(e.shape[-1], device=device)
        cut_index[start:end] = torch.where(ties & (rank <= mine[start:end, None]), index, -1).amax(-1)
    cut_e = torch.where(keep_all, 0, kappa)
    cut_index = torch.where(keep_all, shard.rows.vocab - 1, cut_index)
    return cut_e, cut_index, bad


def _kept(e, cut_e, cut_index):
    index = torch.arange(e.shape[-1], device=e.device)
    return (e > cut_e[:, None]) | ((e == cut_e[:, None]) & (index <= cut_index[:, None]))


def _prepare(call, logits, temperature, t_scalar, mask, group, vocab_start):
    """``call``: ``(op, its scalars)`` that every rank must agree on."""
    layout = layout_of(call[0], logits, temperature, t_scalar, mask, group, vocab_start, *call[1])
    shard = make_shard(logits, temperature, t_scalar, mask)
    return shard, layout, global_max(shard, group)


class _VocabParallelTopP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, temperature, t_scalar, top_p, mask, group, vocab_start):
        shard, layout, m_glob = _prepare(("top_p_entropy", (top_p,)), logits, temperature, t_scalar, mask, group,
                                         vocab_start)
        cut_e, cut_index, bad = _nucleus(shard, layout, m_glob, top_p, False, group)
        n = shard.n
        kept_sum = torch.zeros(n, dtype=F64, device=logits.device)
        kept_sz = torch.zeros_like(kept_sum)
        for start, end, s, e in _e_chunks(_passes(shard), m_glob):
            kept = _kept(e, cut_e[start:end], cut_index[start:end])
            kept_sum[start:end] = torch.where(kept, e, 0).sum(-1).to(F64)
            # A p = 0 term contributes exactly 0 (never 0 * -inf).
            kept_sz[start:end] = torch.where(kept & (e > 0), e * s, 0).sum(-1).to(F64)
        sums = all_sum([kept_sum, kept_sz], group)
        log_norm = sums[:, 0].log()
        h = torch.where(bad, float("nan"), log_norm - sums[:, 1] / sums[:, 0])
        acc = acc_dtype(logits.dtype)
        h = torch.where(shard.live, h, 0).to(acc)
        ctx.save_for_backward(logits, shard.t, shard.present, m_glob, cut_e, cut_index,
                              log_norm.to(acc), h, bad)
        ctx.t_scalar = t_scalar
        return h.view(logits.shape[:-1])

    @staticmethod
    @first_order_only("top_p_entropy")
    def backward(ctx, grad_h):
        logits, t, present, m_glob, cut_e, cut_index, log_norm, h, bad = ctx.saved_tensors
        rows = Rows(logits)
        g_h = grad_h.reshape(-1).to(h.dtype)
        grad = torch.empty((rows.n, rows.vocab), dtype=logits.dtype, device=logits.device)
        for start, end, s, e in _e_chunks((rows, t, ctx.t_scalar, present), m_glob):
            kept = _kept(e, cut_e[start:end], cut_index[start:end])
            log_q = s - log_norm[start:end, None]
            g_row = g_h[start:end, None]
            g = -g_row * log_q.exp() * (log_q + h[start:end, None])
            g = torch.where(kept & (e > 0) & (g_row != 0), g, 0)
            g = torch.where(bad[start:end, None] & (g_row != 0), float("nan"), g)
            g = g / (ctx.t_scalar if t is None else t[start:end, None])
            # present: live rows where this shard has mass; bad rows are live rows too.
            grad[start:end] = torch.where((present | bad)[start:end, None], g, 0)
        return grad.view(logits.shape), None, None, None, None, None, None


@eager
def top_p_entropy(logits, top_p: float, temperature, t_scalar: float, mask, group, vocab_start):
    """:func:`entropy_ops.top_p_entropy` over the vocab shards of ``group`` (arguments validated)."""
    return _VocabParallelTopP.apply(logits, temperature, t_scalar, top_p, mask, group, vocab_start)


@eager
def top_p_mask(logits, top_p: float, temperature, t_scalar: float, inclusive: bool, mask, group, vocab_start):
    """:func:`entropy_ops.top_p_mask` over the vocab shards of ``group``: this shard's part of the mask."""
    shard, layout, m_glob = _prepare(("top_p_mask", (top_p, inclusive)), logits, temperature, t_scalar, mask,
                                     group, vocab_start)
    cut_e, cut_index, bad = _nucleus(shard, layout, m_glob, top_p, inclusive, group)
    out = torch.empty((shard.n, shard.rows.vocab), dtype=torch.bool, device=logits.device)
    for start, end, _, e in _e_chunks(_passes(shard), m_glob):
        row_live = shard.live[start:end] & ~bad[start:end]
        out[start:end] = _kept(e, cut_e[start:end], cut_index[start:end]) & row_live[:, None]
    return out.view(logits.shape)
