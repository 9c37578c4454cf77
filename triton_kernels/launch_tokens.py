"""Launchers of the token-level kernels (window entropy, masked quantile, top-k, random keys):
choose sizes, allocate, launch. Calling conventions: ``entropy_ops/backends/token_kernel.py``.
Nothing here reads a tensor's values on the host: ranks, ``k``, the seed and offset of the random
keys and every threshold stay on the device, and the number of launches depends on shapes and
dtypes only."""
import torch
import triton

from ..backends.token_kernel import quantile_lerp, quantile_rank
from . import FP_FUSION
from .launch import _on_device
from .masked_quantile import masked_quantile_seq_kernel, radix_hist_kernel, radix_pick_kernel
from .random_keys import random_keys_kernel
from .top_k import top_k_mark_kernel
from .window_entropy import window_entropy_bwd_kernel, window_entropy_fwd_kernel, window_share_kernel

_WINDOW_BLOCK = 256  # tokens per program (one output each); 512 spills float64 windows on sm80
# A per-sequence quantile program. Left to itself, ptxas sizes its registers for occupancy from the
# thread count (as low as 32-64) and the loop state of the selection spills on sm80-sm120;
# SEQ_MAXNREG lets it take what it needs (measured: no spills anywhere, ptxas -v).
_SEQ_BLOCK = 512
_SEQ_WARPS = 4
_SEQ_MAXNREG = 128
_SCAN_BLOCK = 1024  # tokens per step of a global histogram program ...
_SCAN_ITERS = 8  # ... which takes this many steps: one atomic per bin per 8192 tokens
_MARK_BLOCK = 1024
_KEYS_BLOCK = 1024  # keys per program (int64 arithmetic only: no reduction, no shared memory)
_DIGIT = 8

# (KEY_BITS, LOW_BITS) of the order keys: float64 and int64 use 64 bits; the others their float32
# bits, the low LOW_BITS of which are equal for every value of the dtype.
_KEY_BITS = {torch.float32: (32, 0), torch.bfloat16: (32, 16), torch.float16: (32, 13),
             torch.float64: (64, 0), torch.int64: (64, 0)}


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _search_steps(cu) -> int:
    """Halvings of a bisection over ``S = len(cu) - 1`` sequences: ``ceil(log2 S)``."""
    return max(cu.shape[0] - 2, 0).bit_length()


def _window_launch(kernel, src, mask, cu, dst, window, offset):
    n = src.shape[0]
    with _on_device(src):
        kernel[(triton.cdiv(n, _WINDOW_BLOCK),)](
            src, mask, cu, dst, n, cu.shape[0] - 1, _search_steps(cu), min(window, n), min(offset, n),
            HAS_MASK=mask is not None, BLOCK=_WINDOW_BLOCK, num_warps=4,
            enable_fp_fusion=FP_FUSION,
        )


def window_entropy_fwd_triton(x, mask, cu, window, offset):
    n = x.shape[0]
    out = torch.zeros(n, dtype=_acc(x.dtype), device=x.device)
    if n == 0 or offset >= n:  # every window starts past the end of its sequence
        return out
    _window_launch(window_entropy_fwd_kernel, x, mask, cu, out, window, offset)
    return out


def window_entropy_bwd_triton(grad, mask, cu, window, offset):
    n = grad.shape[0]
    out = torch.zeros_like(grad)
    if n == 0 or offset >= n:
        return out
    share = torch.empty_like(grad)
    _window_launch(window_share_kernel, grad, mask, cu, share, window, offset)
    _window_launch(window_entropy_bwd_kernel, share, mask, cu, out, window, offset)
    return out


def _programs(x, n_items: int, per_sm: int) -> int:
    if not x.is_cuda:
        return min(n_items, 4)
    return min(n_items, torch.cuda.get_device_properties(x.device).multi_processor_count * per_sm)


def radix_select_triton(x, valid, ranks, descending=False):
    """Over all of ``x`` ``[N]`` (float or int64; ``valid`` bool ``[N]`` or None for all
    non-NaN entries), the entry of 0-based ``ranks[t]`` (int64 ``[T]`` on the device) in ascending
    (or descending) key order: ``(prefix, residual, value)``, the key bits above LOW_BITS, the
    rank among the entries of that key, and (ascending floats) the float64 value. Two launches
    per digit round."""
    n, targets = x.shape[0], ranks.shape[0]
    key_bits, low_bits = _KEY_BITS[x.dtype]
    prefix = torch.zeros(targets, dtype=torch.int64, device=x.device)
    rank = ranks.clone()
    value = torch.empty(targets, dtype=torch.float64, device=x.device)
    hist = torch.zeros(targets, 256, dtype=torch.int64, device=x.device)
    programs = triton.cdiv(n, _SCAN_BLOCK * _SCAN_ITERS)
    flags = dict(KEY_BITS=key_bits, LOW_BITS=low_bits)
    high = key_bits
    with _on_device(x):
        while high > low_bits:
            low = max(high - _DIGIT, low_bits)
            radix_hist_kernel[(programs,)](
                x, valid, n, prefix, hist, targets, high, low, HAS_MASK=valid is not None,
                KEY_BITS=key_bits, IS_INT=not x.is_floating_point(), DESCENDING=descending,
                BLOCK=_SCAN_BLOCK, ITERS=_SCAN_ITERS, num_warps=4,
                enable_fp_fusion=FP_FUSION,
            )
            radix_pick_kernel[(1,)](hist, rank, prefix, value, targets, high - low,
                                    LAST=low == low_bits and x.is_floating_point() and not descending, num_warps=4, **flags,
                                    enable_fp_fusion=FP_FUSION)
            high = low
    return prefix, rank, value


def _lerp(v_lo, v_hi, q, count):
    """torch.quantile's 'linear' rule on the selected pairs, NaN where ``count = 0``."""
    return quantile_lerp(v_lo, v_hi, quantile_rank(q[:, None], count), count)


def masked_quantile_triton(x, mask, cu, q):
    n_seq = 1 if cu is None else cu.shape[0] - 1
    n_q = q.shape[0]
    if x.shape[0] == 0 or n_seq == 0:
        return torch.full((n_q, n_seq), float("nan"), dtype=torch.float64, device=x.device)
    if cu is None:
        valid = ~torch.isnan(x) if mask is None else mask & ~torch.isnan(x)
        count = valid.sum().view(1)
        rank = (q * (count - 1)).clamp(min=0)
        lo = rank.long()
        _, _, value = radix_select_triton(x, valid, torch.cat([lo, lo + (rank > lo)]))
        return _lerp(value[:n_q, None], value[n_q:, None], q, count)
    key_bits, low_bits = _KEY_BITS[x.dtype]
    v_lo = torch.empty(n_q, n_seq, dtype=torch.float64, device=x.device)
    v_hi = torch.empty_like(v_lo)
    count = torch.empty(n_seq, dtype=torch.int64, device=x.device)
    with _on_device(x):
        masked_quantile_seq_kernel[(_programs(x, n_seq, 4),)](
            x, mask, cu, q.contiguous(), v_lo, v_hi, count, n_seq, n_q, HAS_MASK=mask is not None,
            KEY_BITS=key_bits, LOW_BITS=low_bits, BLOCK=_SEQ_BLOCK, num_warps=_SEQ_WARPS, maxnreg=_SEQ_MAXNREG,
            enable_fp_fusion=FP_FUSION,
        )
    return _lerp(v_lo, v_hi, q, count)


def top_k_triton(scores, eligible, k):
    n = scores.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=scores.device)
    kk = torch.minimum(k.reshape(1), eligible.sum().reshape(1))
    prefix, residual, _ = radix_select_triton(scores, eligible, (kk - 1).clamp(min=0), descending=True)
    key_bits, low_bits = _KEY_BITS[scores.dtype]
    above = torch.empty(n, dtype=torch.int8, device=scores.device)
    tie = torch.empty_like(above)
    with _on_device(scores):
        top_k_mark_kernel[(triton.cdiv(n, _MARK_BLOCK),)](
            scores, eligible, n, prefix, above, tie, KEY_BITS=key_bits, LOW_BITS=low_bits,
            IS_INT=not scores.is_floating_point(), BLOCK=_MARK_BLOCK, num_warps=4,
            enable_fp_fusion=FP_FUSION,
        )
    # The first residual + 1 ties in index order: a prefix count of the tie flags.
    first_ties = (tie != 0) & (tie.cumsum(0, dtype=torch.int64) <= residual + 1)
    return ((above != 0) | first_ties) & (kk > 0)


def random_keys_triton(seed, first, n):
    """int64 ``[n]`` keys ``[first, first + n)`` of the stream of ``seed`` (both int64 ``[1]`` on the
    device, read by the kernel); ``n = 0`` launches nothing."""
    out = torch.empty(n, dtype=torch.int64, device=seed.device)
    if n == 0:
        return out
    with _on_device(seed):
        random_keys_kernel[(triton.cdiv(n, _KEYS_BLOCK),)](seed, first, out, n, BLOCK=_KEYS_BLOCK, num_warps=4,
                                                           enable_fp_fusion=FP_FUSION)
    return out
