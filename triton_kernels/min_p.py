"""Label log-probs under the min-p proxy distribution, in Triton (``MinPKernel`` of
``entropy_ops/backends/kernel.py``): tokens with ``e_j >= min_p`` (``p_j >= min_p * max p``) kept
and renormalized.

Forward: one program per row, two passes (the max, then the kept sum). Backward: one read and one
write per element, grid ``(N, n_splits)``. Both decide ``kept`` with ``selective_e``, the label's
too (one scalar load), so they agree bit for bit.
"""
import triton
import triton.language as tl

from .entropy import _row_setup, row_temperature
from .nucleus import row_max_and_bad, selective_e
from .online_softmax import LOG2E, label_log_prob


@triton.jit
def _label(row_ptr, labels_ptr, row, ignore_index, V, m, k, min_p, readable):
    """``(y, ignored, in range, label kept, x_y)``."""
    y = tl.load(labels_ptr + row).to(tl.int64)
    ignored = y == ignore_index
    in_range = (y >= 0) & (y < V)
    x_y = tl.load(row_ptr + y, mask=in_range & readable, other=float("-inf")).to(tl.float32)
    kept_y = selective_e(x_y, m, k) >= min_p
    return y, ignored, in_range, kept_y, x_y


@triton.jit
def min_p_logprobs_fwd_kernel(
    x_ptr, stride_row, V, temp_ptr, temp_scalar, temp_lo, labels_ptr, ignore_index, min_p, mask_ptr,
    logp_ptr, row_max_ptr, log_norm_ptr,
    HAS_TEMP: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    """``logp = (x_y - m) / T - log S`` (``S`` = kept sum of e) when ``y`` is kept, ``-inf`` when filtered, 0
    when ignored or masked, NaN for an out-of-range label or a bad row; ``log_norm = log S``."""
    row = tl.program_id(0).to(tl.int64)
    active, inv_t = _row_setup(row, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
    k = LOG2E * inv_t
    row_ptr = x_ptr + row * stride_row
    logp = tl.full([], 0.0, tl.float32)
    row_max = tl.full([], 0.0, tl.float32)
    log_norm = tl.full([], 0.0, tl.float32)
    if active:
        m, bad = row_max_and_bad(row_ptr, V, BLOCK)
        s = tl.zeros([BLOCK], tl.float32)
        for off in range(0, V, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            e = selective_e(x, m, k)
            s += tl.where((cols < V) & (e >= min_p), e, 0.0)
        log_norm = tl.where(bad, float("nan"), tl.log(tl.sum(s, axis=0)))
        _, ignored, in_range, kept_y, x_y = _label(row_ptr, labels_ptr, row, ignore_index, V, m, k, min_p, active)
        temperature = row_temperature(row, temp_ptr, temp_scalar, temp_lo, HAS_TEMP)
        logp = tl.where(kept_y, label_log_prob(x_y, m, temperature, log_norm), float("-inf"))
        logp = tl.where(in_range & (~bad), logp, float("nan"))
        logp = tl.where(ignored, 0.0, logp)
        row_max = m
    tl.store(logp_ptr + row, logp)
    tl.store(row_max_ptr + row, row_max)
    tl.store(log_norm_ptr + row, log_norm)


@triton.jit
def min_p_logprobs_bwd_kernel(
    x_ptr, stride_row, V, split_size, temp_ptr, temp_scalar, labels_ptr, ignore_index, min_p, mask_ptr,
    row_max_ptr, log_norm_ptr, grad_logp_ptr, out_ptr, out_stride_row,
    HAS_TEMP: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    """``g_j = glogp (1[j=y] - q_j) / T`` over kept ``j`` (``log q_j = s_j - log_norm``), 0 elsewhere;
    a zero row when the label is filtered or ignored (or the row masked), a NaN row where
    ``glogp != 0`` and the row is bad or the label out of range."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    active, inv_t = _row_setup(row, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
    k = LOG2E * inv_t
    row_ptr = x_ptr + row * stride_row
    out_row = out_ptr + row * out_stride_row
    m = tl.load(row_max_ptr + row)
    log_norm = tl.load(log_norm_ptr + row)
    g_l = tl.load(grad_logp_ptr + row)
    y, ignored, in_range, kept_y, _ = _label(row_ptr, labels_ptr, row, ignore_index, V, m, k, min_p, active)
    bad = (log_norm != log_norm) | (~in_range)
    live = active & (~ignored) & (g_l != 0.0)
    nan_row = live & bad
    start = split * split_size
    end = tl.minimum(start + split_size, V)
    read_end = tl.where(live & (~bad) & kept_y, end, start)  # rows written as 0 (or NaN) are never read
    for off in range(start, end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < read_end, other=float("-inf")).to(tl.float32)
        e = selective_e(x, m, k)
        log_q = (x - m) * inv_t - log_norm
        q = tl.where(cols < read_end, tl.exp(log_q), 0.0)
        g = tl.where(cols == y, 1.0, 0.0) - q
        g = tl.where((cols < read_end) & (e >= min_p), g_l * g * inv_t, 0.0)
        g = tl.where(nan_row, float("nan"), g)
        tl.store(out_row + cols, g.to(out_ptr.dtype.element_ty), mask=cols < end)
