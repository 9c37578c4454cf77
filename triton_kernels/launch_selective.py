"""Launchers of the selective row ops (top-p, min-p) and token_stats: choose sizes (functions of V
alone, SPEC §2 batch invariance), allocate, launch. Calling conventions: ``TopPKernel``,
``MinPKernel`` and the token_stats callable of ``entropy_ops/backends/kernel.py``.
"""
import math

import torch
import triton

from . import FP_FUSION
from .launch import _num_warps, _on_device, _sizes, scalar_parts
from .min_p import min_p_logprobs_bwd_kernel, min_p_logprobs_fwd_kernel
from .token_stats import token_stats_kernel
from .top_p import top_p_entropy_bwd_kernel, top_p_entropy_fwd_kernel, top_p_mask_kernel

_ROW_BLOCK = 4096  # min-p forward: one program streams a whole row, twice
_STREAM_BLOCK = 2048  # top-p streaming passes (max, compaction, cut and sums, mask); token_stats
_NARROW_BLOCK = 256  # top-p bucket passes hold [NARROW_BLOCK, BUCKETS] tensors
_BUCKETS = 16
_CAP = 2048  # top-p candidates resolved in registers (a bisection over their keys)


def _row_block(vocab: int) -> int:
    return min(_ROW_BLOCK, triton.next_power_of_2(vocab))


def _stats_block(vocab: int) -> int:
    # token_stats keeps seven per-lane accumulators: 4096 lanes cost 128-192 registers per thread.
    return min(_STREAM_BLOCK, triton.next_power_of_2(vocab))


def _search_sizes(vocab: int) -> dict:
    block = min(_STREAM_BLOCK, triton.next_power_of_2(vocab))
    return dict(BLOCK=block, NARROW_BLOCK=min(_NARROW_BLOCK, block), K=_BUCKETS,
                CAP=min(_CAP, triton.next_power_of_2(vocab)))


def _top_p_arg(top_p: float) -> float:
    """top_p as the kernels' fp32 scalar: a value below 1 must stay below 1 (0.99999999 would round
    to 1.0 and keep everything)."""
    return float(top_p) if top_p >= 1 else min(float(top_p), 1.0 - 2.0 ** -24)


def _programs(x, n_rows: int) -> int:
    """Persistent top-p programs: each walks rows ``pid, pid + P, ...`` and owns CAP workspace
    slots, so the workspace is O(P * CAP) whatever N is. Every pass after the first re-reads the row
    from L2, so the rows in flight (one per program) should fit in L2: two programs per SM only
    when their rows fit in half of it (~100 registers x 256 threads: two is all an SM holds)."""
    if not x.is_cuda:
        return min(n_rows, 4)
    props = torch.cuda.get_device_properties(x.device)
    l2_bytes = getattr(props, "L2_cache_size", 0) or 50 * 2**20
    row_bytes = x.shape[1] * x.element_size()
    per_sm = 2 if 2 * props.multi_processor_count * row_bytes <= l2_bytes // 2 else 1
    return min(n_rows, props.multi_processor_count * per_sm)


def _flags(temperature, mask):
    return dict(HAS_TEMP=temperature is not None, HAS_MASK=mask is not None)


def top_p_entropy_fwd_triton(x, temperature, temperature_scalar, top_p, mask):
    n_rows, vocab = x.shape
    entropy = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    row_max, cut_e, log_norm = (torch.empty_like(entropy) for _ in range(3))
    cut_index = torch.empty(n_rows, dtype=torch.int32, device=x.device)
    if n_rows == 0:
        return entropy, row_max, cut_e, cut_index, log_norm
    sizes = _search_sizes(vocab)
    programs = _programs(x, n_rows)
    ws = torch.empty(programs * sizes["CAP"], dtype=torch.int32, device=x.device)
    with _on_device(x):
        top_p_entropy_fwd_kernel[(programs,)](
            x, x.stride(0), n_rows, vocab, temperature, float(temperature_scalar), _top_p_arg(top_p), mask, ws,
            entropy, row_max, cut_e, cut_index, log_norm,
            num_warps=_num_warps(sizes["BLOCK"]), **_flags(temperature, mask), **sizes,
            enable_fp_fusion=FP_FUSION,
        )
    return entropy, row_max, cut_e, cut_index, log_norm


def top_p_entropy_bwd_triton(x, temperature, temperature_scalar, mask, entropy, row_max, cut_e, cut_index,
                             log_norm, grad_entropy, out):
    n_rows, vocab = x.shape
    if n_rows == 0:
        return
    split_size, n_splits, block = _sizes(vocab)
    with _on_device(x):
        top_p_entropy_bwd_kernel[(n_rows, n_splits)](
            x, x.stride(0), vocab, split_size, temperature, float(temperature_scalar), mask,
            entropy, row_max, cut_e, cut_index, log_norm, grad_entropy, out, out.stride(0),
            HAS_GRAD=grad_entropy is not None, BLOCK=block, num_warps=_num_warps(block),
            **_flags(temperature, mask),
            enable_fp_fusion=FP_FUSION,
        )


def top_p_mask_triton(x, temperature, temperature_scalar, top_p, inclusive, mask, out):
    n_rows, vocab = x.shape
    if n_rows == 0:
        return
    sizes = _search_sizes(vocab)
    programs = _programs(x, n_rows)
    ws = torch.empty(programs * sizes["CAP"], dtype=torch.int32, device=x.device)
    out_bytes = out.view(torch.int8)  # bool storage is one byte of 0/1
    with _on_device(x):
        top_p_mask_kernel[(programs,)](
            x, x.stride(0), n_rows, vocab, temperature, float(temperature_scalar), _top_p_arg(top_p), mask, ws,
            out_bytes, out_bytes.stride(0), INCLUSIVE=bool(inclusive),
            num_warps=_num_warps(sizes["BLOCK"]), **_flags(temperature, mask), **sizes,
            enable_fp_fusion=FP_FUSION,
        )


def min_p_logprobs_fwd_triton(x, labels, temperature, temperature_scalar, ignore_index, min_p, mask):
    n_rows, vocab = x.shape
    logp = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    row_max, log_norm = torch.empty_like(logp), torch.empty_like(logp)
    if n_rows == 0:
        return logp, row_max, log_norm
    block = _row_block(vocab)
    with _on_device(x):
        min_p_logprobs_fwd_kernel[(n_rows,)](
            x, x.stride(0), vocab, temperature, *scalar_parts(float(temperature_scalar)), labels,
            int(ignore_index), float(min_p), mask, logp, row_max, log_norm,
            BLOCK=block, num_warps=_num_warps(block), **_flags(temperature, mask),
            enable_fp_fusion=FP_FUSION,
        )
    return logp, row_max, log_norm


def min_p_logprobs_bwd_triton(x, labels, temperature, temperature_scalar, ignore_index, min_p, mask, row_max,
                              log_norm, grad_logp, out):
    n_rows, vocab = x.shape
    if n_rows == 0:
        return
    split_size, n_splits, block = _sizes(vocab)
    with _on_device(x):
        min_p_logprobs_bwd_kernel[(n_rows, n_splits)](
            x, x.stride(0), vocab, split_size, temperature, float(temperature_scalar), labels, int(ignore_index),
            float(min_p), mask, row_max, log_norm, grad_logp, out, out.stride(0),
            BLOCK=block, num_warps=_num_warps(block), **_flags(temperature, mask),
            enable_fp_fusion=FP_FUSION,
        )


def token_stats_triton(x, labels, temperature, temperature_scalar, ignore_index, mask):
    """The fields of ``TokenStats`` in order, each ``[N]`` float32; ``logp`` None without labels."""
    n_rows, vocab = x.shape
    stats = [torch.empty(n_rows, dtype=torch.float32, device=x.device) for _ in range(8)]
    if labels is None:
        stats[2] = None
    if n_rows == 0:
        return tuple(stats)
    block = _stats_block(vocab)
    with _on_device(x):
        token_stats_kernel[(n_rows,)](
            x, x.stride(0), vocab, math.log(vocab), temperature, *scalar_parts(float(temperature_scalar)),
            labels, int(ignore_index), mask, *stats,
            HAS_LABELS=labels is not None, BLOCK=block, num_warps=_num_warps(block), **_flags(temperature, mask),
            enable_fp_fusion=FP_FUSION,
        )
    return tuple(stats)
