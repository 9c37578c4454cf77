"""The calling convention of the token-level kernels (SPEC §3.2), one for every backend.

Kernels see packed tokens only: ``x`` a contiguous ``[N]`` tensor in its own dtype (float32,
bfloat16, float16 or float64), ``mask`` a bool ``[N]`` or None (every token valid), ``cu`` int64
``[S + 1]`` offsets (sequence ``s`` is ``x[cu[s]:cu[s+1]]``; a ``[B, T]`` batch arrives as
``cu = [0, T, ..., B T]``), already checked. No kernel may synchronize with the host.

**Window entropy** (``window >= 1``, ``offset >= 0``; ``end_t`` the end of ``t``'s sequence):
``lo_t = min(t + offset, end_t)``, ``hi_t = min(t + offset + window, end_t)``,
``out_t = sum_{j in [lo_t, hi_t), valid j} x_j / #valid`` in the accumulation dtype (float64 for
float64 ``x``, else float32), exactly 0 where no valid entry (never ``0 * NaN``: masked entries are
skipped, not multiplied). Backward: ``grad_j = [valid j] sum_{t : j in [lo_t, hi_t)} g_t / #valid_t``,
whose ``t`` are ``[max(s_j, j - offset - window + 1), max(s_j, j - offset + 1))`` with ``s_j`` the
start of ``j``'s sequence: the transposed window, in the accumulation dtype.

**Masked quantile** (``q`` float64 ``[Q]`` in [0, 1]): per sequence (or, with ``cu`` None, over all
tokens as one sequence), the ``n`` valid entries (``mask`` True and not NaN) have ranks
``r = max(q (n - 1), 0)`` in float64; with ``v_(k)`` the k-th smallest (0-based),
``out = lerp(v_(floor r), v_(ceil r), r - floor r)`` in float64 (``torch.quantile``'s 'linear'),
NaN where ``n = 0``; float64 ``[Q, S]`` (``[Q, 1]`` with ``cu`` None).

**Top-k** (the Clip-Cov / KL-Cov selection): ``scores`` a contiguous ``[N]`` tensor (float32,
bfloat16, float16, float64 with no NaN among the eligible entries, or int64), ``eligible`` bool
``[N]``, ``k`` int64 ``[1]`` on the device (never a host integer): a bool ``[N]`` holding the
``min(k, #eligible)`` eligible entries of largest score, ties to the lowest index (``-0.0`` and
``+0.0`` are equal); all False where ``k <= 0``.
"""
from typing import Callable, NamedTuple

import torch


class WindowKernel(NamedTuple):
    fwd: Callable  # (x, mask, cu, window: int, offset: int) -> out [N] in the accumulation dtype
    bwd: Callable  # (grad [N] accumulation dtype, mask, cu, window, offset) -> grad_x [N], same dtype


# masked_quantile kernels are one callable: (x, mask, cu or None, q float64 [Q]) -> float64 [Q, S].
# top_k kernels are one callable: (scores [N], eligible bool [N], k int64 [1]) -> bool [N].


def quantile_rank(q, count):
    """``torch.quantile``'s float64 rank ``r = max(q (n - 1), 0)`` (0 where ``n = 0``); ``q`` float64
    broadcast against the int64 counts ``n`` (``q[:, None]`` against ``[S]`` gives ``[Q, S]``)."""
    return (q * (count - 1)).clamp(min=0)


def quantile_lerp(v_lo, v_hi, rank, count):
    """``lerp(v_(floor r), v_(ceil r), r - floor r)`` in float64, NaN where ``n = 0``: the 'linear'
    rule of every backend's masked quantile, one arithmetic so that they agree to the bit."""
    return torch.where(count == 0, float("nan"), torch.lerp(v_lo, v_hi, rank - rank.floor()))
