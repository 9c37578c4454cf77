"""Top-p (nucleus) entropy and mask over vocabulary rows, in Triton (``TopPKernel`` of
``entropy_ops/backends/kernel.py``; the search lives in ``nucleus.py``).

Forward and mask: persistent programs, each walks rows ``pid, pid + P, ...`` and owns ``CAP``
workspace slots; every block size is a function of V alone, so a row's bits never depend on the
batch. Passes over a row (it stays in L2 on a GPU): the max, one or more bucket passes, one
compaction pass, then one pass that finds the cut index and sums (forward) or writes the mask.
Backward: one read and one write per element, grid ``(N, n_splits)`` like the entropy backward.
"""
import triton
import triton.language as tl

from .entropy import _row_setup
from .nucleus import nucleus_cut, nucleus_kept_block, row_max_and_bad, selective_e
from .online_softmax import LOG2E


@triton.jit
def _kept_sums(row_ptr, V, m, k, inv_t, cut_key, r, BLOCK: tl.constexpr):
    """``(S_K, sum_K e s, cut_index)`` over the kept set, ``s = (x - m) / T``."""
    s_k = tl.zeros([BLOCK], tl.float32)
    es_k = tl.zeros([BLOCK], tl.float32)
    seen = tl.full([], 0, tl.int32)
    cut_index = tl.full([], -1, tl.int32)
    for off in range(0, V, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        live = cols < V
        x = tl.load(row_ptr + cols, mask=live, other=float("-inf")).to(tl.float32)
        e = selective_e(x, m, k)
        kept, last, seen = nucleus_kept_block(e.to(tl.int32, bitcast=True), cols, live, cut_key, r, seen)
        cut_index = tl.maximum(cut_index, last)
        s_k += tl.where(kept, e, 0.0)
        # e = 0 terms contribute exactly 0 (never 0 * -inf).
        es_k += tl.where(kept & (e > 0.0), e * tl.where(e > 0.0, (x - m) * inv_t, 0.0), 0.0)
    return tl.sum(s_k, axis=0), tl.sum(es_k, axis=0), cut_index


@triton.jit
def top_p_entropy_fwd_kernel(
    x_ptr, stride_row, n_rows, V, temp_ptr, temp_scalar, top_p, mask_ptr, ws_ptr,
    entropy_ptr, row_max_ptr, cut_e_ptr, cut_index_ptr, log_norm_ptr,
    HAS_TEMP: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr, NARROW_BLOCK: tl.constexpr, K: tl.constexpr, CAP: tl.constexpr,
):
    """Per row: ``entropy = log S_K - (sum_K e s) / S_K``, ``log_norm = log S_K`` of the exclusive
    nucleus ``K``, its ``(cut_e, cut_index)`` and the raw row max. Masked rows: all 0, never read;
    bad rows: NaN entropy and log_norm, the keep-all cut (as the torch twin)."""
    pid = tl.program_id(0)
    ws = ws_ptr + pid.to(tl.int64) * CAP
    for row in range(pid.to(tl.int64), n_rows, tl.num_programs(0)):
        active, inv_t = _row_setup(row, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
        k = LOG2E * inv_t
        row_ptr = x_ptr + row * stride_row
        entropy = tl.full([], 0.0, tl.float32)
        row_max = tl.full([], 0.0, tl.float32)
        cut_e = tl.full([], 0.0, tl.float32)
        cut_index = tl.full([], 0, tl.int32)
        log_norm = tl.full([], 0.0, tl.float32)
        if active:
            m, bad = row_max_and_bad(row_ptr, V, BLOCK)
            row_max = m
            if bad:  # as the torch twin: NaN values, the keep-all cut
                entropy = tl.full([], float("nan"), tl.float32)
                log_norm = entropy
                cut_index = tl.full([], 0, tl.int32) + V - 1
            else:
                cut_key, r, keep_all = nucleus_cut(row_ptr, V, m, k, top_p, ws, False, BLOCK, NARROW_BLOCK, K, CAP)
                s_k, es_k, last = _kept_sums(row_ptr, V, m, k, inv_t, cut_key, r, BLOCK)
                cut_e = cut_key.to(tl.float32, bitcast=True)
                cut_index = tl.where(keep_all, V - 1, last)
                log_norm = tl.log(s_k)
                entropy = log_norm - es_k / s_k
        tl.store(entropy_ptr + row, entropy)
        tl.store(row_max_ptr + row, row_max)
        tl.store(cut_e_ptr + row, cut_e)
        tl.store(cut_index_ptr + row, cut_index)
        tl.store(log_norm_ptr + row, log_norm)


@triton.jit
def top_p_mask_kernel(
    x_ptr, stride_row, n_rows, V, temp_ptr, temp_scalar, top_p, mask_ptr, ws_ptr, out_ptr, out_stride_row,
    INCLUSIVE: tl.constexpr, HAS_TEMP: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr, NARROW_BLOCK: tl.constexpr, K: tl.constexpr, CAP: tl.constexpr,
):
    """The nucleus (inclusive or exclusive) as bytes 0/1 into ``out`` (a bool tensor's storage);
    all 0 in masked (never read) and bad rows."""
    pid = tl.program_id(0)
    ws = ws_ptr + pid.to(tl.int64) * CAP
    for row in range(pid.to(tl.int64), n_rows, tl.num_programs(0)):
        active, inv_t = _row_setup(row, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
        k = LOG2E * inv_t
        row_ptr = x_ptr + row * stride_row
        out_row = out_ptr + row * out_stride_row
        live_row = active
        m = tl.full([], 0.0, tl.float32)
        cut_key = tl.full([], 0, tl.int32)
        r = tl.full([], 0, tl.int32)
        if active:
            m, bad = row_max_and_bad(row_ptr, V, BLOCK)
            live_row = ~bad
            if live_row:
                cut_key, r, _ = nucleus_cut(row_ptr, V, m, k, top_p, ws, INCLUSIVE, BLOCK, NARROW_BLOCK, K, CAP)
        read_end = tl.where(live_row, V, 0)
        seen = tl.full([], 0, tl.int32)
        for off in range(0, V, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            live = cols < read_end
            x = tl.load(row_ptr + cols, mask=live, other=float("-inf")).to(tl.float32)
            key = selective_e(x, m, k).to(tl.int32, bitcast=True)
            kept, _, seen = nucleus_kept_block(key, cols, live, cut_key, r, seen)
            tl.store(out_row + cols, kept.to(tl.int8), mask=cols < V)


@triton.jit
def top_p_entropy_bwd_kernel(
    x_ptr, stride_row, V, split_size, temp_ptr, temp_scalar, mask_ptr,
    entropy_ptr, row_max_ptr, cut_e_ptr, cut_index_ptr, log_norm_ptr, grad_entropy_ptr,
    out_ptr, out_stride_row,
    HAS_TEMP: tl.constexpr, HAS_MASK: tl.constexpr, HAS_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):
    """``g_j = -gH q_j (log q_j + H) / T`` on the kept set (``q_j = e_j / S_K``,
    ``log q_j = s_j - log_norm``), exactly 0 elsewhere; NaN rows where ``gH != 0`` on bad rows."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    active, inv_t = _row_setup(row, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
    k = LOG2E * inv_t
    g_h = 0.0
    if HAS_GRAD:
        g_h = tl.load(grad_entropy_ptr + row)
    entropy = tl.load(entropy_ptr + row)
    m = tl.load(row_max_ptr + row)
    cut_key = tl.load(cut_e_ptr + row).to(tl.int32, bitcast=True)
    cut_index = tl.load(cut_index_ptr + row)
    log_norm = tl.load(log_norm_ptr + row)
    bad = entropy != entropy
    start = split * split_size
    end = tl.minimum(start + split_size, V)
    # Masked, bad and zero-gradient rows are written but never read.
    read_end = tl.where(active & (~bad) & (g_h != 0.0), end, start)
    row_ptr = x_ptr + row * stride_row
    out_row = out_ptr + row * out_stride_row
    for off in range(start, end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < read_end, other=float("-inf")).to(tl.float32)
        e = selective_e(x, m, k)
        key = e.to(tl.int32, bitcast=True)
        kept = (key > cut_key) | ((key == cut_key) & (cols <= cut_index))
        log_q = (x - m) * inv_t - log_norm
        q = tl.exp(log_q)
        g = tl.where(kept & (q > 0.0), -g_h * q * (log_q + entropy) * inv_t, 0.0)
        g = tl.where(active & bad & (g_h != 0.0), float("nan"), g)
        tl.store(out_row + cols, g.to(out_ptr.dtype.element_ty), mask=cols < end)
