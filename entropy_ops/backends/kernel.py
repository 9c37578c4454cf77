"""The calling convention every backend's row kernels follow.

All tensors reach a kernel validated and flattened (SPEC §2): ``x`` is ``[N, V]`` with
``x.stride(1) == 1``; per-row tensors (``labels``, ``temperature``, ``mask``, ``lse``, ``entropy``
and upstream gradients) are contiguous ``[N]``. Per-row float tensors are in the accumulation
dtype (float32, or float64 for float64 logits); ``temperature`` is None when the Python float
``temperature_scalar`` applies to every row. A row whose ``mask`` is False is never read: its
outputs are 0 (bool outputs False) and its gradient row is 0.

**Row state.** The entropy kernels save per row ``row_max = max_j x_j`` (raw logits, accumulation
dtype) and ``log_norm = log sum_j exp((x_j - row_max) / T)``, so ``lse = row_max / T + log_norm``
without ever rounding ``lse`` itself; the backward forms ``log p_j = (x_j - row_max) / T - log_norm``.
A rounded float32 ``lse`` would put half its ulp (1.9e-6 just below 64) into every ``log p_j``,
and the gradient multiplies that by ``1 / T``. Rows without a distribution (all ``-inf``, NaN,
``+inf``) have a NaN ``log_norm``; masked rows have 0s. A label's returned log-prob (``entropy``,
``min_p``, ``token_stats`` kernels) is ``(x_y - row_max) / T - log_norm`` formed in float64 with T
as given (the Python float itself, or the per-row value) and rounded once: at low temperatures it
is in the hundreds, where float32's ``(x_y - row_max) * (1/T)`` would be off by an ulp of it.

Selective ops (``top_p_*``, ``min_p_*``) decide which tokens a row keeps from the row's own values
of ``e_j = exp((x_j - max_k x_k) / T)`` in the accumulation dtype (the shift is taken in raw-logit
units; ``e`` of the max token is exactly 1, ``e = 0`` for ``-inf`` logits). A backend may compute
``e_j`` its own way (e.g. ``exp2`` with a pre-scaled ``log2(e)/T``), but its forward, backward and
mask kernels must compute the same ``e_j`` bit for bit, since backward re-derives the kept set from
them. Rows that are all ``-inf`` or hold NaN/+inf give NaN values (NaN gradient where the upstream
gradient is non-zero) and an all-False ``top_p`` mask.

**Top-p nucleus** (``top_p`` in (0, 1]). Order tokens by (``e`` descending, index ascending). With
``S = sum_j e_j`` and ``target = top_p * S``: the *crossing value* ``kappa`` is the largest value
among the ``e_j`` with ``sum_{e_j >= kappa} e_j >= target``; ``A = sum_{e_j > kappa} e_j`` (< target)
and ``c = #{j : e_j == kappa}``. The exclusive nucleus keeps every token with ``e_j > kappa`` and the
first ``r`` tokens (by index) with ``e_j == kappa``, ``r = #{i in 1..c : A + i * kappa < target}``,
computed as ``clamp(ceil((target - A) / kappa) - 1, 0, c)``; if that keeps no token at all, ``r = 1``.
The inclusive nucleus (``top_p_mask(inclusive=True)``, what samplers keep) has ``r_incl = min(c,
r + 1)`` with ``r`` taken before the at-least-one rule. ``top_p >= 1``, or a row whose summed mass
never reaches ``target`` (fp rounding), keeps every token. Masses are summed in any order the
backend likes (results near the cut may differ across backends by that rounding; ties and order
independence are exact). The kept set is stored per row as ``(cut_e, cut_index)``:
``kept_j = e_j > cut_e or (e_j == cut_e and j <= cut_index)`` (``cut_e = kappa``, ``cut_index`` the
index of the last kept ``kappa`` token or -1; keep-all is ``cut_e = 0, cut_index = V - 1``).
Over the kept set ``K``, with ``s_j = (x_j - max x) / T``: ``S_K = sum_K e_j``,
``log_norm = log S_K``, ``entropy = log S_K - (sum_K e_j s_j) / S_K``; the backward treats ``K`` as
fixed: ``g_j = -grad_entropy * q_j (log q_j + entropy) / T`` for ``j in K``, ``q_j = e_j / S_K``,
and exactly 0 outside ``K``.

**Min-p proxy** (``min_p`` in [0, 1]). ``kept_j = e_j >= min_p`` (i.e. ``p_j >= min_p * max p``);
``S = sum_kept e_j``, ``log_norm = log S``; ``logp = s_y - log_norm`` when ``y`` is kept, ``-inf``
when it is filtered, 0 when ``y == ignore_index`` (or the row is masked), NaN for an out-of-range
label or a bad row. Backward: ``g_j = grad_logp * (1[j=y] - q_j) / T`` over kept ``j``
(``q_j = e_j / S``), 0 elsewhere, and a zero row when the label is filtered or ignored.
"""
from typing import Callable, NamedTuple

import torch


class RowKernel(NamedTuple):
    fwd: Callable  # (x, labels, temperature, temperature_scalar, ignore_index, mask)
    #                -> (row_max, log_norm, entropy, logp|None), each [N]; see "Row state" above
    bwd: Callable  # (x, labels, temperature, temperature_scalar, ignore_index, mask, row_max,
    #                 log_norm, entropy, grad_entropy|None, grad_logp|None, out) -> None,
    #                 writes out [N, V] (may alias x)


class TopPKernel(NamedTuple):
    fwd: Callable  # (x, temperature, temperature_scalar, top_p: float, mask)
    #                -> (entropy, row_max, cut_e, cut_index int32, log_norm), each [N]; row_max is
    #                the raw max of the row (accumulation dtype), exclusive nucleus
    bwd: Callable  # (x, temperature, temperature_scalar, mask, entropy, row_max, cut_e, cut_index,
    #                 log_norm, grad_entropy, out) -> None, writes out [N, V] in x.dtype
    mask: Callable  # (x, temperature, temperature_scalar, top_p: float, inclusive: bool, mask, out)
    #                -> None, writes the bool nucleus into out [N, V] (contiguous)


class MinPKernel(NamedTuple):
    fwd: Callable  # (x, labels, temperature, temperature_scalar, ignore_index, min_p: float, mask)
    #                -> (logp, row_max, log_norm), each [N]
    bwd: Callable  # (x, labels, temperature, temperature_scalar, ignore_index, min_p, mask, row_max,
    #                 log_norm, grad_logp, out) -> None, writes out [N, V] in x.dtype


# token_stats kernels are one callable: (x, labels, temperature, temperature_scalar, ignore_index,
# mask) -> TokenStats of [N] tensors (logp None without labels); see ops/token_stats.py.


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and output dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
