"""Vocab-parallel ``min_p_logprobs`` (SPEC §3.3), in torch ops on the local shard.

The kept set ``e_j >= min_p`` is defined by the GLOBAL row max (``e_j = exp((x_j - M)/T)``), so a
shard cannot decide it alone and the row kernels (which use their own row's max) do not apply;
this path computes ``e`` with the torch backend's formula (``backends/torch_selective.py``), so the
kept set is bit for bit the one the single-process ``torch`` backend keeps. Collectives: all-reduce
MAX of the raw row max, then one all-reduce SUM of ``[N, 4]`` float64 (kept mass, the owner's
``(x_y - M)/T``, whether the label is kept, bad rows). Backward: no collective,
``g_j = g (1[j=y] - q_j) / T`` over kept ``j`` with ``q_j = e_j / S`` from the saved ``M`` and ``log S``.
Memory: one chunk of ``[rows, V_r]`` float32 temporaries at a time (as the torch backend).
"""
import torch

from ..backends.kernel import acc_dtype
from ..backends.torch_backend import _chunks
from ..ops._rows import Rows
from .shard import F64, all_sum, eager, first_order_only, gather_raw, global_max, layout_of, localize, make_shard


def _shifted(rows, m_glob, t, t_scalar, start, end):
    """``s = (x - M) / T`` of a chunk of rows in the accumulation dtype (the torch backend's ``s``)."""
    raw = rows.take(start, end).to(acc_dtype(rows.x.dtype))
    temperature = t_scalar if t is None else t[start:end, None]
    return (raw - m_glob[start:end, None]) / temperature


class _VocabParallelMinP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, temperature, t_scalar, ignore_index, min_p, mask, group, vocab_start):
        layout = layout_of("min_p_logprobs", logits, temperature, t_scalar, mask, group, vocab_start, min_p,
                           ignore_index)
        shard = make_shard(logits, temperature, t_scalar, mask, ignore_index)
        y = localize(labels, shard, layout, ignore_index)
        acc = acc_dtype(logits.dtype)
        m_glob = global_max(shard, group)
        n, vocab = shard.n, shard.rows.vocab
        kept_mass = torch.zeros(n, dtype=F64, device=logits.device)
        kept_y = torch.zeros(n, dtype=torch.bool, device=logits.device)
        for start, end in _chunks(n, vocab):
            e = _shifted(shard.rows, m_glob, shard.t, t_scalar, start, end).exp()
            e = torch.where(shard.present[start:end, None], e, 0)
            kept = e >= min_p
            kept_mass[start:end] = torch.where(kept, e, 0).sum(-1).to(F64)
            kept_y[start:end] = kept.gather(1, y.local[start:end, None]).squeeze(1)
        s_y = (gather_raw(shard, y.local) - m_glob.to(F64)) / shard.temperature64
        sums = all_sum([kept_mass, torch.where(y.owned, s_y, 0), y.owned & kept_y, shard.bad], group)
        log_norm = sums[:, 0].log()
        bad = (sums[:, 3] > 0) | ~(m_glob > float("-inf"))
        kept_y = sums[:, 2] > 0
        logp = torch.where(kept_y, sums[:, 1] - log_norm, float("-inf"))
        logp = torch.where(y.valid & ~bad, logp, float("nan"))
        logp = torch.where(y.ignored | ~shard.live, 0, logp).to(acc)
        # A bad row's valid label takes its upstream gradient (kept or not): NaN over the row (SPEC §2).
        ctx.save_for_backward(logits, shard.t, shard.mask, m_glob, log_norm.to(acc), y.local, y.owned,
                              y.valid & (kept_y | bad), bad)
        ctx.t_scalar, ctx.min_p = t_scalar, min_p
        return logp.view(logits.shape[:-1])

    @staticmethod
    @first_order_only("min_p_logprobs")
    def backward(ctx, grad_logp):
        logits, t, mask, m_glob, log_norm, local, owned, live_label, bad = ctx.saved_tensors
        rows = Rows(logits)
        n, vocab = rows.n, rows.vocab
        g_l = torch.where(live_label, grad_logp.reshape(-1).to(log_norm.dtype), 0)
        grad = torch.empty((n, vocab), dtype=logits.dtype, device=logits.device)
        index = torch.arange(vocab, device=logits.device)
        for start, end in _chunks(n, vocab):
            s = _shifted(rows, m_glob, t, ctx.t_scalar, start, end)
            kept = s.exp() >= ctx.min_p
            q = (s - log_norm[start:end, None]).exp()
            one_hot = ((index == local[start:end, None]) & owned[start:end, None]).to(q.dtype)
            g_row = g_l[start:end, None]
            live = (g_row != 0)
            g = torch.where(live & kept, g_row * (one_hot - q), 0)
            g = torch.where(bad[start:end, None] & live, float("nan"), g)
            g = g / (ctx.t_scalar if t is None else t[start:end, None])
            if mask is not None:
                g = torch.where(mask[start:end, None], g, 0)
            grad[start:end] = g
        return grad.view(logits.shape), None, None, None, None, None, None, None, None


@eager
def min_p_logprobs(logits, labels, min_p: float, temperature, t_scalar: float, ignore_index: int, mask,
                   group, vocab_start):
    """:func:`entropy_ops.min_p_logprobs` over the vocab shards of ``group`` (arguments validated)."""
    return _VocabParallelMinP.apply(logits, labels, temperature, t_scalar, ignore_index, min_p, mask,
                                    group, vocab_start)
