"""The calling convention of the token-level kernels (SPEC §3.2), one for every backend.

Kernels see packed tokens only, ``x``, ``mask`` and ``cu`` contiguous (``ops/_tokens.flat_tokens``):
``x`` an ``[N]`` tensor in its own dtype (float32, bfloat16, float16 or float64), ``mask`` a bool
``[N]`` or None (every token valid), ``cu`` int64 ``[S + 1]`` offsets (sequence ``s`` is
``x[cu[s]:cu[s+1]]``; a ``[B, T]`` batch arrives as ``cu = [0, T, ..., B T]``), already checked,
or, where unchecked, at least non-decreasing within ``[0, N]``. No kernel may synchronize with
the host.

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

**Random keys** (Clip-Cov's uniform choice): ``seed`` int64 ``[1]`` and ``first`` int64 ``[1]``, both
on the device (never host integers), ``n`` a host integer: int64 ``[n]`` with
``key_i = splitmix64(seed, first + i) >> 2`` in ``[0, 2**62)``, where ``splitmix64(s, j)`` is output
number ``j`` (0-based) of Steele, Lea and Flood's SplitMix64 generator seeded with ``s``, all in
unsigned 64-bit arithmetic modulo ``2**64``::

    z = s + (j + 1) * 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    splitmix64(s, j) = z ^ (z >> 31)

A counter-based stream: key ``i`` depends on ``(seed, first + i)`` alone, so a rank holding tokens
``[first, first + n)`` of a batch draws exactly its slice of the keys of the whole batch, with the
offset ``first`` a device value (``csrc/include/entropy_ops/random_keys.h`` holds the C++/CUDA
function; ``reference.random_keys_ref`` the arbitrary-precision one).
"""
from typing import Callable, NamedTuple

import torch


class WindowKernel(NamedTuple):
    fwd: Callable  # (x, mask, cu, window: int, offset: int) -> out [N] in the accumulation dtype
    bwd: Callable  # (grad [N] accumulation dtype, mask, cu, window, offset) -> grad_x [N], same dtype


# masked_quantile kernels are one callable: (x, mask, cu or None, q float64 [Q]) -> float64 [Q, S].
# top_k kernels are one callable: (scores [N], eligible bool [N], k int64 [1]) -> bool [N].
# random_keys kernels are one callable: (seed int64 [1], first int64 [1], n: int) -> int64 [n].


def quantile_rank(q, count):
    """``torch.quantile``'s float64 rank ``r = max(q (n - 1), 0)`` (0 where ``n = 0``); ``q`` float64
    broadcast against the int64 counts ``n`` (``q[:, None]`` against ``[S]`` gives ``[Q, S]``)."""
    return (q * (count - 1)).clamp(min=0)


def quantile_lerp(v_lo, v_hi, rank, count):
    """``lerp(v_(floor r), v_(ceil r), r - floor r)`` in float64, NaN where ``n = 0``: the 'linear'
    rule of every backend's masked quantile, one arithmetic so that they agree to the bit."""
    return torch.where(count == 0, float("nan"), torch.lerp(v_lo, v_hi, rank - rank.floor()))
