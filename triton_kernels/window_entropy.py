"""Window entropy (``entropy_ops/backends/token_kernel.py``): a program per ``BLOCK`` tokens.

Every output sums its own window directly, term by term in index order (at most ``window`` terms),
never as a difference of prefix sums, so its rounding error is that of its own window whatever the
length of the packed batch. A token finds its sequence by a binary search of ``cu`` (``n_steps``
halvings, ``ceil(log2 S)``, given by the launcher from ``cu``'s shape: no host sync). Token
indices and offsets are int64 (N may pass 2^31).

Backward is two launches: :func:`window_share_kernel` writes ``share_t = g_t / #valid_t`` (0 where
the window is empty), then :func:`window_entropy_bwd_kernel` sums the transposed window of
``share`` for every valid token.
"""
import triton
import triton.language as tl


@triton.jit
def sequence_bounds(cu_ptr, t, S, n_steps):
    """``(start, end)`` int64 of the sequence holding token ``t``: the largest ``s`` with
    ``cu[s] <= t`` (empty sequences own no token), by bisection with ``cu[lo] <= t < cu[hi]``."""
    lo = tl.zeros_like(t)
    hi = lo + S
    for _ in range(n_steps):
        mid = (lo + hi) // 2
        go_up = tl.load(cu_ptr + mid) <= t
        lo = tl.where(go_up, mid, lo)
        hi = tl.where(go_up, hi, mid)
    return tl.load(cu_ptr + lo), tl.load(cu_ptr + lo + 1)


@triton.jit
def _window_sum(x_ptr, mask_ptr, lo, length, live, HAS_MASK: tl.constexpr, SUM: tl.constexpr,
                ACC: tl.constexpr):
    """``(sum, count)`` of the valid ``x_j``, ``j in [lo, lo + length)``, in index order; masked
    entries are skipped (a masked NaN is never read into the sum)."""
    total = tl.zeros(lo.shape, ACC)
    count = tl.zeros(lo.shape, tl.int64)
    for d in range(0, tl.max(tl.where(live, length, 0), axis=0)):
        j = lo + d
        inside = live & (d < length)
        if HAS_MASK:
            inside = inside & (tl.load(mask_ptr + j, mask=inside, other=0) != 0)
        if SUM:
            total += tl.where(inside, tl.load(x_ptr + j, mask=inside, other=0.0).to(ACC), 0.0)
        count += inside.to(tl.int64)
    return total, count


@triton.jit
def _forward_window(cu_ptr, t, N, S, n_steps, window, offset):
    """``(lo, length)`` of token ``t``'s window: ``[min(t + offset, end), min(t + offset + window, end))``."""
    _, end = sequence_bounds(cu_ptr, tl.minimum(t, N - 1), S, n_steps)
    lo = t + tl.minimum(end - t, offset)
    return lo, tl.minimum(end - lo, window)


@triton.jit
def window_entropy_fwd_kernel(x_ptr, mask_ptr, cu_ptr, out_ptr, N, S, n_steps, window, offset,
                              HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    """``out_t = sum_{valid j in window_t} x_j / #valid``, 0 where none; ``out`` in the
    accumulation dtype (float64 for float64 ``x``, else float32)."""
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = t < N
    lo, length = _forward_window(cu_ptr, t, N, S, n_steps, window, offset)
    acc = out_ptr.dtype.element_ty
    total, count = _window_sum(x_ptr, mask_ptr, lo, length, live, HAS_MASK, True, acc)
    out = tl.where(count > 0, total / tl.maximum(count, 1).to(acc), 0.0)
    tl.store(out_ptr + t, out, mask=live)


@triton.jit
def window_share_kernel(grad_ptr, mask_ptr, cu_ptr, share_ptr, N, S, n_steps, window, offset,
                        HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    """``share_t = g_t / #valid_t`` (0 where token ``t``'s window holds no valid entry)."""
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = t < N
    lo, length = _forward_window(cu_ptr, t, N, S, n_steps, window, offset)
    acc = share_ptr.dtype.element_ty
    _, count = _window_sum(grad_ptr, mask_ptr, lo, length, live, HAS_MASK, False, acc)
    g = tl.load(grad_ptr + t, mask=live, other=0.0)
    tl.store(share_ptr + t, tl.where(count > 0, g / tl.maximum(count, 1).to(acc), 0.0), mask=live)


@triton.jit
def window_entropy_bwd_kernel(share_ptr, mask_ptr, cu_ptr, out_ptr, N, S, n_steps, window, offset,
                              HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    """``grad_j = [valid j] sum share_t`` over the tokens ``t`` whose window holds ``j``:
    ``t in [max(s_j, j - offset - window + 1), max(s_j, j - offset + 1))``, summed in index order."""
    j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = j < N
    start, _ = sequence_bounds(cu_ptr, tl.minimum(j, N - 1), S, n_steps)
    hi = start + tl.maximum(j - start + 1 - offset, 0)
    length = tl.minimum(hi - start, window)
    acc = out_ptr.dtype.element_ty
    total, _ = _window_sum(share_ptr, mask_ptr, hi - length, length, live, False, True, acc)
    if HAS_MASK:
        live_j = tl.load(mask_ptr + j, mask=live, other=0) != 0
        total = tl.where(live_j, total, 0.0)
    tl.store(out_ptr + j, total, mask=live)
