"""Entropy and label log-probs over vocabulary rows: forward (one read of the logits) and backward
(one read, one write), in Triton.

Forward grid: ``(N, n_splits)``. Each program folds one fixed chunk of one row into per-lane online
states; the chunk size is a function of V alone (never of N), so a row's bits do not depend on the
batch. With one split the program finalizes the row itself; otherwise the partial states go to a
small workspace and ``entropy_combine_kernel`` merges them in split order.
Rows sit on grid axis 0 (up to 2^31 - 1 programs), splits on axis 1.

Each row's state is saved as ``(row_max, log_norm)``, ``lse = row_max / T + log_norm`` never
rounded (backends/kernel.py, "Row state"): the backward's ``log p = (x - row_max) / T - log_norm``
keeps every digit at any temperature, with no pre-pass over the row.
"""
import triton
import triton.language as tl

from .online_softmax import LOG2E, block_update, finalize, label_log_prob, merge, reduce_lanes


@triton.jit
def _row_setup(row, mask_ptr, temp_ptr, temp_scalar, HAS_MASK: tl.constexpr, HAS_TEMP: tl.constexpr):
    active = tl.full([], 1, tl.int1)
    if HAS_MASK:
        active = tl.load(mask_ptr + row) != 0
    if HAS_TEMP:
        inv_t = 1.0 / tl.load(temp_ptr + row).to(tl.float32)
    else:
        inv_t = 1.0 / temp_scalar
    return active, inv_t


@triton.jit
def row_temperature(row, temp_ptr, temp_scalar, temp_lo, HAS_TEMP: tl.constexpr):
    """T of the row in float64, as the caller gave it: the per-row value, or the Python float
    rebuilt from the float32 ``temp_scalar`` and its remainder ``temp_lo`` (launch.scalar_parts)."""
    if HAS_TEMP:
        return tl.load(temp_ptr + row).to(tl.float64)
    return tl.cast(temp_scalar, tl.float64) + tl.cast(temp_lo, tl.float64)  # Python floats in the interpreter


@triton.jit
def entropy_fwd_kernel(
    x_ptr, stride_row, V, split_size,
    temp_ptr, temp_scalar, temp_lo, labels_ptr, ignore_index, mask_ptr,
    row_max_ptr, log_norm_ptr, entropy_ptr, logp_ptr, part_ptr, n_splits,
    HAS_TEMP: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_MASK: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    active, inv_t = _row_setup(row, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
    k = LOG2E * inv_t
    start = split * split_size
    # An inactive (masked) row gets an empty range: its logits are never read.
    end = tl.where(active, tl.minimum(start + split_size, V), start)
    row_ptr = x_ptr + row * stride_row

    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    sz = tl.zeros([BLOCK], tl.float32)
    for off in range(start, end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < end, other=float("-inf")).to(tl.float32)
        m, s, sz = block_update(m, s, sz, x, k)
    m_row, s_row, sz_row = reduce_lanes(m, s, sz, k)

    x_y = 0.0
    if HAS_LABELS:
        y = tl.load(labels_ptr + row).to(tl.int64)
        in_chunk = (y >= start) & (y < end)
        x_y = tl.load(row_ptr + y, mask=in_chunk, other=0.0).to(tl.float32)

    if SPLIT:
        base = (row * n_splits + split) * 4
        tl.store(part_ptr + base, m_row)
        tl.store(part_ptr + base + 1, s_row)
        tl.store(part_ptr + base + 2, sz_row)
        tl.store(part_ptr + base + 3, x_y)
    else:
        temperature = row_temperature(row, temp_ptr, temp_scalar, temp_lo, HAS_TEMP)
        _store_row(row, m_row, s_row, sz_row, x_y, inv_t, temperature, active, labels_ptr, ignore_index, V,
                   row_max_ptr, log_norm_ptr, entropy_ptr, logp_ptr, HAS_LABELS)


@triton.jit
def _store_row(row, m, s, sz, x_y, inv_t, temperature, active, labels_ptr, ignore_index, V,
               row_max_ptr, log_norm_ptr, entropy_ptr, logp_ptr, HAS_LABELS: tl.constexpr):
    entropy, ln_s = finalize(m, s, sz, inv_t)
    label_logp = label_log_prob(x_y, m, temperature, ln_s)
    tl.store(row_max_ptr + row, tl.where(active, m, 0.0))
    tl.store(log_norm_ptr + row, tl.where(active, ln_s, 0.0))
    tl.store(entropy_ptr + row, tl.where(active, entropy, 0.0))
    if HAS_LABELS:
        y = tl.load(labels_ptr + row).to(tl.int64)
        logp = tl.where((y >= 0) & (y < V), label_logp, float("nan"))
        logp = tl.where(y == ignore_index, 0.0, logp)
        tl.store(logp_ptr + row, tl.where(active, logp, 0.0))


@triton.jit
def entropy_combine_kernel(
    part_ptr, n_splits, V,
    temp_ptr, temp_scalar, temp_lo, labels_ptr, ignore_index, mask_ptr,
    row_max_ptr, log_norm_ptr, entropy_ptr, logp_ptr,
    HAS_TEMP: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_MASK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    active, inv_t = _row_setup(row, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
    k = LOG2E * inv_t
    m = float("-inf")
    s = 0.0
    sz = 0.0
    x_y = 0.0
    for split in range(0, n_splits):  # fixed order: bits independent of everything but the row
        base = (row * n_splits + split) * 4
        m, s, sz = merge(m, s, sz, tl.load(part_ptr + base), tl.load(part_ptr + base + 1),
                         tl.load(part_ptr + base + 2), k)
        x_y += tl.load(part_ptr + base + 3)
    temperature = row_temperature(row, temp_ptr, temp_scalar, temp_lo, HAS_TEMP)
    _store_row(row, m, s, sz, x_y, inv_t, temperature, active, labels_ptr, ignore_index, V,
               row_max_ptr, log_norm_ptr, entropy_ptr, logp_ptr, HAS_LABELS)


@triton.jit
def entropy_bwd_kernel(
    x_ptr, stride_row, V, split_size,
    temp_ptr, temp_scalar, labels_ptr, ignore_index, mask_ptr,
    row_max_ptr, log_norm_ptr, entropy_ptr, grad_entropy_ptr, grad_logp_ptr,
    out_ptr, out_stride_row,
    HAS_TEMP: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_GRAD_ENTROPY: tl.constexpr, HAS_GRAD_LOGP: tl.constexpr, BLOCK: tl.constexpr,
):
    """``g_z_j = gH * (-p_j (log p_j + H)) + glogp * (1[j=y] - p_j)``, written as ``g_z / T``."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    active, inv_t = _row_setup(row, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
    shift = tl.load(row_max_ptr + row)
    c = tl.load(log_norm_ptr + row)
    entropy = tl.load(entropy_ptr + row)
    g_h = 0.0
    if HAS_GRAD_ENTROPY:
        g_h = tl.load(grad_entropy_ptr + row)
    g_l = 0.0
    y = -1
    if HAS_GRAD_LOGP:
        g_l = tl.load(grad_logp_ptr + row)
        if HAS_LABELS:
            y = tl.load(labels_ptr + row).to(tl.int64)
            g_l = tl.where(y == ignore_index, 0.0, g_l)
    start = split * split_size
    end = tl.minimum(start + split_size, V)
    read_end = tl.where(active, end, start)  # a masked row is written (zeros) but never read
    row_ptr = x_ptr + row * stride_row
    out_row_ptr = out_ptr + row * out_stride_row
    for off in range(start, end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        in_row = cols < end
        x = tl.load(row_ptr + cols, mask=cols < read_end, other=float("-inf")).to(tl.float32)
        log_p = (x - shift) * inv_t - c
        p = tl.exp(log_p)
        # p == 0 (a masked token) gives exactly 0; a bad row's NaN p stays NaN, as on cpu / cuda.
        d_h = tl.where(p == 0, 0.0, -p * (log_p + entropy))
        g = tl.where(g_h != 0, g_h * d_h, 0.0)
        g += tl.where(g_l != 0, g_l * (tl.where(cols == y, 1.0, 0.0) - p), 0.0)
        g = tl.where(active, g * inv_t, 0.0)
        tl.store(out_row_ptr + cols, g.to(out_ptr.dtype.element_ty), mask=in_row)
