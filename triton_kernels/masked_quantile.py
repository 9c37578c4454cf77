"""Radix selection of order statistics without a sort (``entropy_ops/backends/token_kernel.py``):
the masked quantile per sequence and over all tokens, and the k-th largest of ``top_k``.

Values become unsigned 64-bit *order keys* (:func:`radix_key`): the float bits with the sign bit
flipped for non-negative values and every bit flipped for negative ones, so integer order is value
order (``-0.0`` is made ``+0.0`` first; NaN never reaches a key: it is invalid). float64 and int64
use their 64 bits; float32, bfloat16 and float16 use the float32 bits (widening is exact), whose low
``LOW_BITS`` are the same for every value of the input dtype (16 for bfloat16, 13 for float16), so
selection stops there. The entry of rank ``r`` among the valid ones is found digit by digit from
the top (``DIGIT = 8`` bits, 256 bins): a histogram of the next digit over the entries that share
the digits chosen so far, then the bin where the running count passes ``r``.

Per sequence: one program per sequence (grid-stride over sequences, so any S), histograms in
registers (``tl.histogram``), both order statistics of each quantile (ranks ``floor r`` and
``ceil r``) selected in the same passes. Over all tokens: every round is one multi-program
histogram launch (integer atomics: exact, and counts do not depend on the order of the adds, so the
result does not depend on the batch) and one single-program pick launch; the selection state
(digits so far, residual rank) stays on the device.
"""
import triton
import triton.language as tl

DIGIT = tl.constexpr(8)
BINS = tl.constexpr(256)


@triton.jit
def radix_key(x, KEY_BITS: tl.constexpr, IS_INT: tl.constexpr, DESCENDING: tl.constexpr):
    """uint64 key ordered like ``x`` (descending: reversed); ``x`` float (no NaN) or int64."""
    if KEY_BITS == 64:
        if IS_INT:
            bits = x.to(tl.int64)
        else:
            bits = tl.where(x == 0, tl.zeros_like(x), x).to(tl.int64, bitcast=True)
        sign = tl.full(bits.shape, 1, tl.int64) << 63
    else:
        f = x.to(tl.float32)
        bits = tl.where(f == 0, 0.0, f).to(tl.int32, bitcast=True)
        sign = tl.full(bits.shape, 1, tl.int32) << 31
    if IS_INT:
        key = bits ^ sign
    else:
        key = bits ^ ((bits >> (KEY_BITS - 1)) | sign)
    if DESCENDING:
        key = ~key
    if KEY_BITS == 64:
        key = key.to(tl.uint64, bitcast=True)
    else:
        key = key.to(tl.uint32, bitcast=True).to(tl.uint64)
    return key


@triton.jit
def radix_value(prefix, KEY_BITS: tl.constexpr, LOW_BITS: tl.constexpr):
    """The float64 value of the ascending float key whose bits above ``LOW_BITS`` are ``prefix``
    (the low bits are those every value of the input dtype has: 0 when non-negative, 1 when not)."""
    top = (prefix >> (KEY_BITS - LOW_BITS - 1)) & 1
    fill = tl.where(top == 0, (tl.full([], 1, tl.uint64) << LOW_BITS) - 1, 0)
    key = (prefix << LOW_BITS) | fill
    if KEY_BITS == 64:
        s = key.to(tl.int64, bitcast=True)
        sign = tl.full([], 1, tl.int64) << 63
        value = (s ^ (~(s >> 63) | sign)).to(tl.float64, bitcast=True)
    else:
        s = key.to(tl.uint32).to(tl.int32, bitcast=True)
        sign = tl.full([], 1, tl.int32) << 31
        value = (s ^ (~(s >> 31) | sign)).to(tl.float32, bitcast=True).to(tl.float64)
    return value


@triton.jit
def _above(key, high):
    """``key >> high`` for ``high`` in [1, 64] (a shift by the full width is undefined)."""
    return (key >> (high - 1)) >> 1


@triton.jit
def _pick(hist, rank, prefix, width):
    """One digit: the bin where the running count passes ``rank``; ``(rank within it, prefix)``."""
    bins = tl.arange(0, BINS)
    best = tl.minimum(tl.sum((tl.cumsum(hist, axis=0) <= rank).to(tl.int32), axis=0), BINS - 1)
    below = tl.sum(tl.where(bins < best, hist, 0), axis=0)
    return rank - below, (prefix << width) | best.to(tl.uint64)


@triton.jit
def _valid(x_ptr, mask_ptr, idx, inside, HAS_MASK: tl.constexpr):
    """``(x, valid)``: loaded values and ``mask & not NaN`` (float) or ``mask`` (int64)."""
    x = tl.load(x_ptr + idx, mask=inside, other=0)
    # NaN test in float32 (exact for NaN of any float dtype): the interpreter compares bfloat16 as
    # raw bits, where NaN == NaN.
    f = x.to(tl.float32)
    valid = inside & (f == f)
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + idx, mask=inside, other=0) != 0)
    return x, valid


@triton.jit
def masked_quantile_seq_kernel(x_ptr, mask_ptr, cu_ptr, q_ptr, lo_ptr, hi_ptr, count_ptr, S, Q,
                               HAS_MASK: tl.constexpr, KEY_BITS: tl.constexpr, LOW_BITS: tl.constexpr,
                               BLOCK: tl.constexpr):
    """Per sequence ``s``: ``count[s]`` valid entries and, for each ``q``, ``lo[q, s] = v_(floor r)``,
    ``hi[q, s] = v_(ceil r)`` in float64, ``r = max(q (n - 1), 0)`` (NaN where ``n = 0``)."""
    lanes = tl.arange(0, BLOCK)
    for s in range(tl.program_id(0), S, tl.num_programs(0)):
        start = tl.load(cu_ptr + s)
        length = tl.load(cu_ptr + s + 1) - start
        n = tl.zeros([BLOCK], tl.int64)
        for off in range(0, length, BLOCK):
            _, valid = _valid(x_ptr, mask_ptr, start + off + lanes, off + lanes < length, HAS_MASK)
            n += valid.to(tl.int64)
        n_valid = tl.sum(n, axis=0)
        tl.store(count_ptr + s, n_valid)
        for qi in range(Q):
            rank = tl.maximum(tl.load(q_ptr + qi) * (n_valid - 1).to(tl.float64), 0.0)
            r_lo = rank.to(tl.int64)
            r_hi = r_lo + (rank > r_lo.to(tl.float64)).to(tl.int64)
            p_lo = tl.zeros([], tl.uint64)
            p_hi = tl.zeros([], tl.uint64)
            if n_valid > 0:
                high = tl.full([], KEY_BITS, tl.int32)
                while high > LOW_BITS:
                    low = tl.maximum(high - DIGIT, LOW_BITS)
                    h_lo = tl.zeros([BINS], tl.int32)  # a sequence holds < 2^31 tokens
                    h_hi = tl.zeros([BINS], tl.int32)
                    for off in range(0, length, BLOCK):
                        x, valid = _valid(x_ptr, mask_ptr, start + off + lanes, off + lanes < length, HAS_MASK)
                        key = radix_key(x, KEY_BITS, False, False)
                        digit = ((key >> low) & (BINS - 1)).to(tl.int32)
                        h_lo += tl.histogram(digit, BINS, mask=valid & (_above(key, high) == p_lo))
                        h_hi += tl.histogram(digit, BINS, mask=valid & (_above(key, high) == p_hi))
                    r_lo, p_lo = _pick(h_lo, r_lo, p_lo, high - low)
                    r_hi, p_hi = _pick(h_hi, r_hi, p_hi, high - low)
                    high = low
                v_lo = radix_value(p_lo, KEY_BITS, LOW_BITS)
                v_hi = radix_value(p_hi, KEY_BITS, LOW_BITS)
            else:
                v_lo = tl.full([], float("nan"), tl.float64)
                v_hi = v_lo
            tl.store(lo_ptr + qi * S + s, v_lo)
            tl.store(hi_ptr + qi * S + s, v_hi)


@triton.jit
def radix_hist_kernel(x_ptr, mask_ptr, N, prefix_ptr, hist_ptr, n_targets, high, low,
                      HAS_MASK: tl.constexpr, KEY_BITS: tl.constexpr, IS_INT: tl.constexpr,
                      DESCENDING: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """One round over all tokens: ``hist[t, d] +=`` the valid entries of this program's
    ``ITERS * BLOCK`` tokens whose key has the digits ``prefix[t]`` above ``high`` and digit ``d``
    in bits ``[low, high)``; one integer atomic per non-empty bin."""
    lanes = tl.arange(0, BLOCK)
    bins = tl.arange(0, BINS)
    base = tl.program_id(0).to(tl.int64) * (ITERS * BLOCK)
    for t in range(n_targets):
        prefix = tl.load(prefix_ptr + t).to(tl.uint64, bitcast=True)
        hist = tl.zeros([BINS], tl.int32)
        for it in range(ITERS):
            idx = base + it * BLOCK + lanes
            x, valid = _valid(x_ptr, mask_ptr, idx, idx < N, HAS_MASK)
            key = radix_key(x, KEY_BITS, IS_INT, DESCENDING)
            digit = ((key >> low) & (BINS - 1)).to(tl.int32)
            hist += tl.histogram(digit, BINS, mask=valid & (_above(key, high) == prefix))
        tl.atomic_add(hist_ptr + t * BINS + bins, hist.to(tl.int64), mask=hist != 0, sem="relaxed")


@triton.jit
def radix_pick_kernel(hist_ptr, rank_ptr, prefix_ptr, value_ptr, n_targets, width,
                      KEY_BITS: tl.constexpr, LOW_BITS: tl.constexpr, LAST: tl.constexpr):
    """After a round's histograms: each target's digit, residual rank and prefix; the histograms
    are zeroed for the next round; after the last round, the selected float value (``value``)."""
    bins = tl.arange(0, BINS)
    for t in range(n_targets):
        hist = tl.load(hist_ptr + t * BINS + bins)
        prefix = tl.load(prefix_ptr + t).to(tl.uint64, bitcast=True)
        rank, prefix = _pick(hist, tl.load(rank_ptr + t), prefix, width)
        tl.store(rank_ptr + t, rank)
        tl.store(prefix_ptr + t, prefix.to(tl.int64, bitcast=True))
        tl.store(hist_ptr + t * BINS + bins, tl.zeros([BINS], tl.int64))
        if LAST:
            tl.store(value_ptr + t, radix_value(prefix, KEY_BITS, LOW_BITS))
