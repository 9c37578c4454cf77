"""Vocab-parallel ``entropy`` and ``logprobs_and_entropy`` (SPEC §3.3): the logits are this rank's
vocab shard, every rank gets the unsharded result.

Forward, per row, with shard ``r`` holding raw max ``m_r``, ``s_r = sum_{j in r} e^{(x_j - m_r)/T}``
and local entropy ``H_r`` (the row kernel on the shard: its ``log_norm`` is ``log s_r``):

    collective 1: M = max_r m_r                                  (all-reduce MAX, [N] floats)
    a_r = (m_r - M) / T,  S_r = e^{a_r} s_r,  u_r = S_r (H_r - log s_r - a_r)      (all >= 0)
    collective 2: S = sum S_r, U = sum u_r, #bad, D = sum d_r    (one all-reduce SUM, [N, 3 or 4])
    H = log S + U / S,  lse = M/T + log S,  logp = D - log S,  d_r = (x_y - M)/T on the owner
                                                                 (0 on the other ranks)

``H = log S + U/S`` is ``sum_r w_r (H_r - log w_r)`` with ``w_r = S_r / S``, written with
non-negative terms only: no cancellation, and no ``lse`` of size 1e4 is ever subtracted, so rows
shifted by 1e4 keep full precision (merging rounded fp32 ``lse_r`` would lose ~5e-4 there).

Backward needs no collective: the existing ``top_p_entropy_bwd`` kernel with a keep-all nucleus
computes ``-G q_j (log q_j + H') / T`` with ``log q_j = (x_j - row_max)/T - log_norm`` from the
saved state alone; given ``row_max = m_r`` and ``log_norm = log S + (M - m_r)/T``, ``q = p`` (the
global softmax). ``G = g_H, H' = H + g_logp / g_H`` gives the full gradient
``-p_j (g_H (log p_j + H) + g_logp)`` off the label; when ``|g_H|`` is below ``2^-36 |g_logp|``
(2^-60 in float64), e.g. 0, ``G = 2^-36 |g_logp|`` instead, whose ``log p`` term is under the
rounding of the result. The label's own entry (owner rank) is then overwritten with its exact value
``(g_logp (1 - p_y) - g_H p_y (log p_y + H)) / T``. With K candidate labels per row (the linear
op), ``g_logp = sum_k g_k`` in the fold and each owned label's entry gets the ``g_k`` of the labels
equal to it. (One fold serves both cases; the ``entropy_bwd`` kernels take one label per row.)
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import _backends
from ..backends.kernel import acc_dtype
from ..ops._rows import Rows
from .shard import F64, all_max, all_sum, eager, first_order_only, gather_raw, layout_of, localize, make_shard


def _col(v, like):
    """A per-row ``[N]`` tensor as a column when ``like`` is ``[N, K]`` (a float stays a float)."""
    return v[:, None] if isinstance(v, Tensor) and v.dim() == 1 and like.dim() == 2 else v


def _tiny(dtype) -> float:
    return 2.0 ** -60 if dtype == torch.float64 else 2.0 ** -36


class LocalState(NamedTuple):
    """What one rank contributes per row: its shard's raw max and mass, local entropy, label logit."""
    m: Tensor  # [N] acc dtype, raw max of the shard row
    present: Tensor  # [N] bool: live row where the shard has mass
    bad: Tensor  # [N] bool: live row holding NaN/+inf in this shard
    live: Tensor  # [N] bool: not masked
    temperature: object  # Python float or [N] float64
    log_s: Tensor  # [N] float64, log sum_j e^{(x_j - m)/T} over the shard (exact)
    h: Tensor  # [N] float64, the shard's own entropy
    x_y: Optional[Tensor]  # [N] or [N, K] float64 raw label logits (meaningful where owned), or None


def local_state(shard, labels, backend) -> LocalState:
    """The row kernel on the shard: its entropy and ``log_norm = log s_r``."""
    x, t, mask = shard.kernel_args()
    h_r, _, log_s = (shard.rows.out(v).view(-1) for v in
                     torch.ops.entropy_ops.entropy(x, t, shard.t_scalar, mask, False, backend))
    x_y = None if labels is None else gather_raw(shard, labels.local)
    return LocalState(shard.m, shard.present, shard.bad, shard.live, shard.temperature64,
                      log_s.to(F64), h_r.to(F64), x_y)


def merge(st: LocalState, labels, group, acc):
    """The two collectives and the merge: ``(H, logp|None)`` in ``acc``, and ``(M, log S, bad)``."""
    m_glob = all_max(torch.where(st.present, st.m, float("-inf")), group)
    a = torch.where(st.present, (st.m.to(F64) - m_glob.to(F64)) / st.temperature, float("-inf"))
    s_r = torch.where(st.present, torch.exp(a + st.log_s), 0)
    # A shard whose mass underflows next to the global max (a finfo.min-masked shard at T < 1:
    # a = -inf in float64 logits) adds exactly 0, never 0 * inf.
    u_r = torch.where(s_r > 0, s_r * (st.h - st.log_s - a), 0)
    columns = [s_r, u_r, st.bad]
    if labels is not None:
        d_r = torch.where(labels.owned, (st.x_y - _col(m_glob.to(F64), st.x_y)) / _col(st.temperature, st.x_y), 0)
        columns += list(d_r.unbind(-1)) if d_r.dim() == 2 else [d_r]
    sums = all_sum(columns, group)
    log_total = sums[:, 0].log()
    h = log_total + sums[:, 1] / sums[:, 0]
    bad = (sums[:, 2] > 0) | ~(m_glob > float("-inf"))
    h = torch.where(st.live, torch.where(bad, float("nan"), h), 0).to(acc)
    logp = None
    if labels is not None:
        d = sums[:, 3:] if labels.local.dim() == 2 else sums[:, 3]
        logp = torch.where(labels.valid, d - _col(log_total, d), float("nan"))
        # An ignored label gives 0 even in a bad row, as in the single-process op.
        logp = torch.where(labels.ignored, 0, torch.where(_col(bad, d), float("nan"), logp))
        logp = torch.where(_col(st.live, d), logp, 0).to(acc)
    return h, logp, m_glob, log_total, bad


def saved_log_norm(st: LocalState, m_glob, log_total, bad, acc) -> Tensor:
    """``log S + (M - m_r)/T``: the log-normalizer relative to this shard's own max, so that the
    top_p_entropy_bwd kernel's ``log q_j = (x_j - m_r)/T - log_norm`` is the global ``log p_j``."""
    log_norm = log_total + (m_glob.to(F64) - st.m.to(F64)) / st.temperature
    return torch.where(bad, float("nan"), log_norm).to(acc)


def grad_from_state(x, t, t_scalar, mask, row_max, log_norm, h, label_state, grad_h, grad_logp, backend):
    """``dL/dx`` of the shard ``x [N, V_r]`` from the saved global state (see the module docstring);
    ``label_state`` is ``(logp, local, owned, valid)``, each ``[N]`` or ``[N, K]``, or None."""
    n, vocab = x.shape
    acc = acc_dtype(x.dtype)
    g_h = torch.zeros(n, dtype=F64, device=x.device) if grad_h is None else grad_h.reshape(-1).to(F64)
    g_l = torch.zeros_like(g_h)
    g_k = None
    if label_state is not None and grad_logp is not None:
        k = label_state[0].shape[-1] if label_state[0].dim() == 2 else 1  # not -1: N may be 0
        logp, local, owned, valid = (v.reshape(n, k) for v in label_state)
        g_k = torch.where(valid, grad_logp.reshape(n, k).to(F64), 0)
        g_l = g_k.sum(-1)  # every label's logp pulls -g_k p_j from every entry
    tiny = g_l.abs() * _tiny(x.dtype)
    g = torch.where(g_h.abs() < tiny, tiny, g_h)
    h_fold = torch.where(g != 0, h.to(F64) + g_l / g, h.to(F64))
    # A shard with no mass in a row gets a zero gradient row: all -inf, or a mass that underflows
    # next to the global max (log_norm = +inf: a finfo.min-masked shard at T < 1).
    live = (row_max != float("-inf")) & (log_norm != float("inf"))
    live = live if mask is None else live & mask
    grad = torch.ops.entropy_ops.top_p_entropy_bwd(
        x, t, t_scalar, live, h_fold.to(acc), row_max, torch.zeros_like(row_max),
        torch.full((n,), vocab - 1, dtype=torch.int32, device=x.device), log_norm, g.to(acc), backend)
    if label_state is not None and grad_logp is not None:
        _write_label_entries(grad, t, t_scalar, h, g_h, g_l, g_k, logp.to(F64), local, owned)
    # SPEC §2: a bad row (NaN/+inf on some rank, or all -inf: its saved log_norm is NaN) has a NaN
    # gradient wherever its upstream gradient is nonzero, on every shard: also where this shard holds
    # no mass (not read by the kernel) and at the label entries (written above from a NaN logp).
    bad = torch.isnan(log_norm) if mask is None else torch.isnan(log_norm) & mask
    upstream = g_h != 0 if g_k is None else (g_h != 0) | (g_k != 0).any(-1)
    return grad.masked_fill_((bad & upstream)[:, None], float("nan"))


def _write_label_entries(grad, t, t_scalar, h, g_h, g_l, g_k, logp, local, owned):
    """Overwrite the owned label entries with their exact value
    ``(sum_{k: y_k = j} g_k - p_j (g_H (log p_j + H) + sum_k g_k)) / T`` (``[N, K]`` state)."""
    n = grad.shape[0]
    temperature = t_scalar if t is None else t.to(F64)[:, None]
    p = logp.exp()
    same = (local[:, :, None] == local[:, None, :]) & owned[:, None, :]
    own_g = (same * g_k[:, None, :]).sum(-1)  # the one-hot terms landing on each label's entry
    pull = torch.where(p > 0, p * (g_h[:, None] * (logp + h.to(F64)[:, None]) + g_l[:, None]), 0)
    exact = ((own_g - pull) / temperature).to(grad.dtype)
    # Writes must not collide with different values: a label not owned here writes the first owned
    # label's entry of its row (same value), or its own entry's current value when none is owned.
    first = owned.long().argmax(-1, keepdim=True)
    any_owned = owned.any(-1, keepdim=True)
    index = torch.where(owned | ~any_owned, local, local.gather(1, first))
    rows = torch.arange(n, device=grad.device)[:, None].expand_as(index)
    value = torch.where(owned, exact, torch.where(any_owned, exact.gather(1, first), grad[rows, index]))
    # index_put_ rather than scatter_: the same writes, but scatter_ on a bf16 [N, V_r] took
    # 4.4 ms for 256 rows on CPU (it walks the whole tensor), index_put_ only the N K entries.
    grad.index_put_((rows, index), value)


class _VocabParallelEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, temperature, t_scalar, ignore_index, mask, group, vocab_start, backends):
        op, args = ("entropy", ()) if labels is None else ("logprobs_and_entropy", (ignore_index,))
        layout = layout_of(op, logits, temperature, t_scalar, mask, group, vocab_start, *args)
        shard = make_shard(logits, temperature, t_scalar, mask, ignore_index)
        y = None if labels is None else localize(labels, shard, layout, ignore_index)
        acc = acc_dtype(logits.dtype)
        st = local_state(shard, y, backends[0])
        h, logp, m_glob, log_total, bad = merge(st, y, group, acc)
        saved = [logits, shard.t, shard.mask, shard.m, saved_log_norm(st, m_glob, log_total, bad, acc), h]
        if y is not None:
            saved += [logp, y.local, y.owned, y.valid]
        ctx.save_for_backward(*saved)
        ctx.t_scalar, ctx.backend, ctx.has_labels = t_scalar, backends[1], y is not None
        return (h,) if logp is None else (h, logp)

    @staticmethod
    @first_order_only("entropy ops")
    def backward(ctx, grad_h, grad_logp=None):
        logits, t, mask, row_max, log_norm, h, *label_state = ctx.saved_tensors
        # The kernel's rows of the shard as it lies (a grid for a logits[:, :-1]: the per-row state
        # goes onto the grid, the rows between masked out), the gradient a view of its [M, V_r] output.
        r = Rows(logits)
        on_rows = r.per_row
        labels = [on_rows(v) for v in label_state] if ctx.has_labels else None
        grad = grad_from_state(r.x, on_rows(t, fill=1), ctx.t_scalar, r.mask(mask),
                               on_rows(row_max, fill=float("-inf")), on_rows(log_norm), on_rows(h), labels,
                               on_rows(grad_h), on_rows(grad_logp), ctx.backend)
        return r.as_logits(grad), None, None, None, None, None, None, None, None


@eager
def entropy(logits: Tensor, temperature, t_scalar: float, mask, group, vocab_start) -> Tensor:
    """:func:`entropy_ops.entropy` over the vocab shards of ``group`` (arguments validated)."""
    backends = (_backends.resolve("entropy", logits.device, logits.dtype),
                _backends.resolve("top_p_entropy", logits.device, logits.dtype))
    (h,) = _VocabParallelEntropy.apply(logits, None, temperature, t_scalar, -100, mask, group,
                                       vocab_start, backends)
    return h.view(logits.shape[:-1])


@eager
def logprobs_and_entropy(logits: Tensor, labels: Tensor, temperature, t_scalar: float,
                         ignore_index: int, mask, group, vocab_start):
    """:func:`entropy_ops.logprobs_and_entropy` over the vocab shards of ``group``."""
    backends = (_backends.resolve("logprobs_and_entropy", logits.device, logits.dtype),
                _backends.resolve("top_p_entropy", logits.device, logits.dtype))
    h, logp = _VocabParallelEntropy.apply(logits, labels, temperature, t_scalar, ignore_index, mask,
                                          group, vocab_start, backends)
    leading = logits.shape[:-1]
    return logp.view(leading), h.view(leading)
