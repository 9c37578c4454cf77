"""The Clip-Cov / KL-Cov top-k selection (``entropy_ops/backends/token_kernel.py``): the k-th
largest eligible score is selected on descending order keys by the radix rounds of
``masked_quantile.py`` (``k`` stays on the device); this kernel then marks every eligible entry
strictly above it and flags the ties, of which the launcher keeps the first ``residual + 1`` in
index order (a prefix count)."""
import triton
import triton.language as tl

from .masked_quantile import radix_key


@triton.jit
def top_k_mark_kernel(scores_ptr, eligible_ptr, N, prefix_ptr, above_ptr, tie_ptr,
                      KEY_BITS: tl.constexpr, LOW_BITS: tl.constexpr, IS_INT: tl.constexpr,
                      BLOCK: tl.constexpr):
    """``above = eligible & key < threshold``, ``tie = eligible & key == threshold`` (int8), with
    descending keys compared above ``LOW_BITS`` (the bits below are equal for all values)."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = idx < N
    ok = tl.load(eligible_ptr + idx, mask=inside, other=0) != 0
    x = tl.load(scores_ptr + idx, mask=ok, other=0)
    key = radix_key(x, KEY_BITS, IS_INT, True) >> LOW_BITS
    threshold = tl.load(prefix_ptr).to(tl.uint64, bitcast=True)
    tl.store(above_ptr + idx, (ok & (key < threshold)).to(tl.int8), mask=inside)
    tl.store(tie_ptr + idx, (ok & (key == threshold)).to(tl.int8), mask=inside)
