"""The ``torch`` backend of the token-level ops, following ``token_kernel.py``: pure PyTorch, exact,
and free of host synchronization (lengths, ranks and offsets stay on the device; no ``.item()``,
``nonzero``, boolean indexing or shape that depends on values), so it is also the CUDA fallback.

Window sums use a binary decomposition of each window's length, not a difference of prefix sums:
``block_k[i] = sum x[i : i + 2^k]`` is built by doubling, and a window of length ``L`` adds the
blocks of the set bits of ``L``. O(N log window) work, and every output is a pairwise sum of its own
<= ``window`` terms, so its rounding error is that of the window alone. A prefix-sum difference
``P[hi] - P[lo]`` would carry the rounding of ``P`` (about ``eps * sum of everything before t``),
which on long packed batches swamps a fp32 window and still costs digits in float64.

Quantiles need two order statistics per sequence, at ranks that live on the device (so
``torch.kthvalue`` / ``topk``, which take the rank as a host integer, are out: a sync each).
Per sequence, one sort groups the tokens by (sequence, value): for 16/32-bit values a single sort
of an int64 key (sequence id above an order-preserving key of the value), for float64 a sort by
value then a stable sort by sequence; the k-th smallest valid entry of sequence s then sits at
``cu[s] + k``. Over all tokens, one sequence of up to billions of entries, radix selection of the
two order statistics beats a full O(N log N) sort: per round, a histogram over the next 11-bit
digit of the order key, restricted to the entries sharing the digits chosen so far (3 rounds for
fp32). Measured on 20M fp32 entries on this 2-core CPU: sort ~2.5 s, selection ~1 s.
"""
import torch

from .._backends import register_kernel
from ..ops._tokens import segment_ids
from .kernel import acc_dtype
from .token_kernel import WindowKernel, quantile_lerp, quantile_rank
from .torch_select import order_keys as _order_keys, select as _select, top_k

# ---- window entropy ------------------------------------------------------------------------------


def _window_sums(v, lo, length, longest: int):
    """``sum v[lo_i : lo_i + length_i]`` for every ``i`` (every ``length_i <= longest``)."""
    n = v.shape[0]
    total = torch.zeros_like(v)
    # block[i] = sum v[i : i + width], padded so that the empty window at N reads a 0; entries
    # whose span passes N are never read (every window ends at or before N).
    block = torch.cat([v, v.new_zeros(1)])
    width = 1
    while width <= longest:
        # Low bits first: the block of this bit starts after those of the lower set bits.
        pos = lo + (length & (width - 1))
        total = total + torch.where((length & width) != 0, block.gather(0, pos), 0)
        if 2 * width <= longest:
            block = block + torch.cat([block[width:], block.new_zeros(min(width, n + 1))])
        width *= 2
    return total


# Up to this many terms a window is summed as that many shifted slices of the row (no gathers);
# longer windows take the doubling blocks above.
_SHIFTED_MAX = 32


def _shifted_sums(v, first, step: int, length, longest: int):
    """``sum_{d < length_i} v[i + first + step * d]`` for every ``i`` (``first`` an int, ``step``
    +-1, ``length_i <= longest``; out-of-range terms only occur beyond ``length_i``)."""
    n = v.shape[0]
    reach = abs(first) + longest
    padded = torch.cat([v.new_zeros(reach), v, v.new_zeros(reach)])
    total = torch.zeros_like(v)
    for d in range(longest):
        start = reach + first + step * d
        total = total + torch.where(length > d, padded[start:start + n], 0)
    return total


def _bounds(cu, n):
    """``(pos, start, end)`` int64 ``[N]``: each token's index and its sequence's bounds."""
    seg = segment_ids(cu, n)
    return torch.arange(n, device=cu.device), cu[seg], cu[seg + 1]


def _forward_windows(mask, pos, end, window, offset):
    """``(lo, length, count)``: the window ``[lo, lo + length)`` of every token and its valid count."""
    lo = pos + (end - pos).clamp(max=offset)  # min(t + offset, end) without int64 overflow
    length = (end - lo).clamp(max=window)
    if mask is None:
        return lo, length, length
    prefix = torch.nn.functional.pad(mask.long().cumsum(0), (1, 0))  # exact integer counts
    return lo, length, prefix[lo + length] - prefix[lo]


def window_entropy_fwd_torch(x, mask, cu, window, offset):
    n = x.shape[0]
    acc = acc_dtype(x.dtype)
    if n == 0:
        return x.new_zeros(0, dtype=acc)
    v = x.to(acc)
    if offset >= n:  # every window starts past the end of its sequence
        return torch.zeros_like(v)
    if mask is not None:
        v = torch.where(mask, v, 0)  # a masked NaN is skipped, not multiplied by 0
    pos, _, end = _bounds(cu, n)
    longest = min(window, n)
    if longest <= _SHIFTED_MAX:  # a non-empty window starts at t + offset exactly
        length = (end - pos - offset).clamp(min=0, max=window)
        total = _shifted_sums(v, offset, 1, length, longest)
        count = length if mask is None else _shifted_sums(mask.to(acc), offset, 1, length, longest)
    else:
        lo, length, count = _forward_windows(mask, pos, end, window, offset)
        total = _window_sums(v, lo, length, longest)
    return torch.where(count > 0, total / count.clamp(min=1).to(acc), 0)


def window_entropy_bwd_torch(grad, mask, cu, window, offset):
    n = grad.shape[0]
    if n == 0:
        return torch.zeros_like(grad)
    pos, start, end = _bounds(cu, n)
    _, _, count = _forward_windows(mask, pos, end, window, offset)
    share = torch.where(count > 0, grad / count.clamp(min=1).to(grad.dtype), 0)
    # Token j is read by the t in [max(start, j - offset - window + 1), max(start, j - offset + 1)).
    hi = start + (pos - start + 1 - offset).clamp(min=0)
    length = (hi - start).clamp(max=window)
    longest = min(window, n)
    if offset >= n:
        g = torch.zeros_like(share)
    elif longest <= _SHIFTED_MAX:  # a non-empty range is t = j - offset - d, d < length
        g = _shifted_sums(share, -offset, -1, length, longest)
    else:
        g = _window_sums(share, hi - length, length, longest)
    return g if mask is None else torch.where(mask, g, 0)


# ---- masked quantile -----------------------------------------------------------------------------

def _sequence_order(x, valid, cu):
    """Token indices sorted by (sequence, value), each sequence's invalid tokens after its valid
    ones: the k-th smallest valid value of sequence ``s`` is at ``order[cu[s] + k]``."""
    seg = segment_ids(cu, x.shape[0])
    bits = 8 * x.element_size()
    if bits <= 32:
        # Invalid tokens get the largest value key, a NaN bit pattern that no valid value has.
        value_key = torch.where(valid, _order_keys(x).long() + (1 << (bits - 1)), (1 << bits) - 1)
        return ((seg << bits) | value_key).sort().indices
    by_value = torch.where(valid, x, float("inf")).argsort()
    return by_value[seg[by_value].argsort(stable=True)]


def _order_statistics(x, key, valid, lo, hi):
    """``(v_(lo), v_(hi))`` over all valid entries, ``hi in {lo, lo + 1}`` (``[1]`` tensors):
    ``lo`` by selection, ``hi`` from it (the same value if ties reach rank ``hi``, else the smallest
    value above it)."""
    alive, residual, equal = _select(key, 8 * x.element_size(), valid, lo)
    v_lo = torch.where(alive, x, float("-inf")).amax().view(1)
    v_next = torch.where(valid & (x > v_lo), x, float("inf")).amin().view(1)
    at_most_lo = lo - residual + equal  # entries <= v_(lo)
    return v_lo, torch.where(hi < at_most_lo, v_lo, v_next)


def masked_quantile_torch(x, mask, cu, q):
    n = x.shape[0]
    n_seq = 1 if cu is None else cu.shape[0] - 1
    if n == 0:
        return torch.full((q.shape[0], n_seq), float("nan"), dtype=torch.float64, device=x.device)
    x = x + 0.0  # -0.0 + 0.0 = +0.0 (IEEE): value order and key order then agree
    valid = ~torch.isnan(x) if mask is None else mask & ~torch.isnan(x)
    if cu is None:
        count = valid.sum().view(1)
    else:
        prefix = torch.nn.functional.pad(valid.long().cumsum(0), (1, 0))
        count = prefix[cu[1:]] - prefix[cu[:-1]]
    # torch.quantile's ranks, in float64: q (n - 1), clamped at 0 for empty sequences.
    rank = quantile_rank(q[:, None], count)
    lo, hi = rank.long(), rank.ceil().long()
    if cu is None:
        key = _order_keys(x)
        pairs = [_order_statistics(x, key, valid, lo[i], hi[i]) for i in range(q.shape[0])]
        v_lo, v_hi = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    else:
        keyed = torch.where(valid, x, float("inf"))  # a valid +inf may tie with an invalid token
        order = _sequence_order(x, valid, cu)
        v_lo = keyed[order[(cu[:-1] + lo).clamp(max=n - 1)]]
        v_hi = keyed[order[(cu[:-1] + hi).clamp(max=n - 1)]]
    return quantile_lerp(v_lo.double(), v_hi.double(), rank, count)


# ---- random keys ---------------------------------------------------------------------------------

def _signed(u: int) -> int:
    """The int64 of the same bits as the uint64 ``u`` (torch has int64 arithmetic, which wraps)."""
    return u - (1 << 64) if u >= 1 << 63 else u


_GAMMA, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _logical_shift(z, s: int):
    """Logical ``z >> s`` of int64 bits (torch's ``>>`` on int64 is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def random_keys_torch(seed, first, n: int):
    """SplitMix64 in int64 tensor arithmetic, whose wrap-around is the uint64 modular arithmetic.
    In place, about a dozen elementwise passes: the reference path (and the fallback on GPU); the
    ``cpu`` kernel is one pass, and Inductor fuses this one into one loop."""
    z = torch.arange(1, n + 1, device=seed.device).add_(first.reshape(1)).mul_(_GAMMA).add_(seed.reshape(1))
    for shift, multiplier in ((30, _MIX1), (27, _MIX2)):
        z ^= _logical_shift(z, shift)
        z *= multiplier
    z ^= _logical_shift(z, 31)
    return z.bitwise_right_shift_(2).bitwise_and_((1 << 62) - 1)  # logical >> 2, in place


register_kernel("torch", "window_entropy", WindowKernel(window_entropy_fwd_torch, window_entropy_bwd_torch))
register_kernel("torch", "masked_quantile", masked_quantile_torch)
register_kernel("torch", "top_k", top_k)
register_kernel("torch", "random_keys", random_keys_torch)
