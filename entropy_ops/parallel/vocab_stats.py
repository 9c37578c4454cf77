"""Vocab-parallel ``token_stats`` (SPEC §3.3): the ``token_stats`` kernel on the local shard, then
the exact merge of its eight statistics in two collectives (all-reduce MAX of the raw row max, one
all-reduce SUM of ``[N, 10]`` float64 columns).

Shard ``r`` holds ``q = softmax`` over its own entries, with log-sum ``l_r = -max_logp_r`` relative
to its raw max ``m_r``. With ``M = max_r m_r``, ``a_r = (m_r - M)/T``, ``S_r = e^{a_r + l_r}``,
``w_r = S_r / S`` (the shard's share of the mass, ``p_j = w_r q_j``) and
``u_r = H_r - l_r - a_r >= 0`` (so ``H_r - log w_r = u_r + log S``):

    lse = M/T + log S                      max_logp = -log S
    H = log S + u,  u = sum_r w_r u_r      logp = (x_y - M)/T - log S   (owner rank)
    collision = sum_r w_r^2 c_r
    varentropy = sum_r w_r (var_r + (u_r - u)^2)          (log p + H = (log q + H_r) + (u - u_r))
    entropy_drift = sum_r w_r^2 (drift_r + (u - u_r) c_r)
    self_certainty = log S - (1/V) sum_r sum_{j in r} (x_j - M)/T - log V
                     (the shard sums from the local ``self_certainty``: V_r (l_r - sc_r - log V_r + a_r))

No term of size ``lse`` is subtracted, so rows shifted by 1e4 keep their digits; the moments that
subtract ``u^2`` are summed in float64.
"""
import math

import torch

from .. import _backends
from ..backends.kernel import acc_dtype
from ..ops._types import TokenStats
from .shard import F64, all_sum, eager, gather_raw, global_max, layout_of, localize, make_shard, shifted_max


@eager
def token_stats(logits, labels, temperature, t_scalar: float, ignore_index: int, mask, group,
                vocab_start) -> TokenStats:
    """:func:`entropy_ops.token_stats` over the vocab shards of ``group`` (arguments validated)."""
    backend = _backends.resolve("token_stats", logits.device, logits.dtype)
    layout = layout_of("token_stats", logits, temperature, t_scalar, mask, group, vocab_start,
                       float("nan") if labels is None else ignore_index)
    shard = make_shard(logits, temperature, t_scalar, mask, ignore_index)
    y = None if labels is None else localize(labels, shard, layout, ignore_index)
    x, t, kernel_mask = shard.kernel_args()
    local = TokenStats(*(shard.rows.out(v).view(-1).to(F64) for v in torch.ops.entropy_ops.token_stats(
        x, None, t, t_scalar, ignore_index, kernel_mask, backend)))
    m_glob = global_max(shard, group)
    a = shifted_max(shard, m_glob)
    log_s = -local.max_logp
    s_r = torch.where(shard.present, torch.exp(a + log_s), 0)
    # A shard whose mass underflows next to the global max (a finfo.min-masked shard at T < 1:
    # a = -inf in float64 logits) adds exactly 0, never 0 * inf, as in vocab.merge.
    present = s_r > 0
    s2 = s_r * s_r
    u_r = torch.where(present, local.entropy - log_s - a, 0)
    c_r = torch.where(present, local.collision, 0)

    def on_shard(v):  # p = 0 outside present shards: their terms are exactly 0
        return torch.where(present, v, 0)

    mean_shifted = log_s - math.log(layout.local) - local.self_certainty
    sum_z = torch.where(shard.present, layout.local * (mean_shifted + a), 0)
    # A live shard that is all -inf still counts its V_r entries in mean_j z_j (-> +inf).
    sum_z = torch.where(shard.live & ~shard.bad & ~shard.present, float("-inf"), sum_z)
    columns = [s_r, on_shard(s_r * u_r), on_shard(s_r * local.varentropy), on_shard(s_r * u_r * u_r),
               on_shard(s2 * c_r), on_shard(s2 * local.entropy_drift), on_shard(s2 * u_r * c_r),
               sum_z, shard.bad]
    if y is not None:
        d_r = (gather_raw(shard, y.local) - m_glob.to(F64)) / shard.temperature64
        columns.append(torch.where(y.owned, d_r, 0))
    sums = all_sum(columns, group)
    total, su, svar, su2, sc2, sdrift2, suc2, zsum, nbad = sums[:, :9].unbind(-1)
    log_total = total.log()
    u = su / total
    stats = {
        "lse": m_glob.to(F64) / shard.temperature64 + log_total,
        "entropy": log_total + u,
        "max_logp": -log_total,
        "collision": sc2 / (total * total),
        "varentropy": ((svar + su2) / total - u * u).clamp(min=0),
        "self_certainty": log_total - zsum / layout.total - math.log(layout.total),
        "entropy_drift": (sdrift2 + u * sc2 - suc2) / (total * total),
    }
    bad = (nbad > 0) | ~(m_glob > float("-inf"))
    acc = acc_dtype(logits.dtype)
    leading = logits.shape[:-1]

    def finish(v):
        v = torch.where(bad, float("nan"), v)
        return torch.where(shard.live, v, 0).to(acc).view(leading)

    out = {name: finish(v) for name, v in stats.items()}
    out["logp"] = None
    if y is not None:
        logp = torch.where(y.valid, sums[:, 9] - log_total, float("nan"))
        logp = torch.where(y.ignored, 0, torch.where(bad, float("nan"), logp))
        out["logp"] = torch.where(shard.live, logp, 0).to(acc).view(leading)
    return TokenStats(**out)
