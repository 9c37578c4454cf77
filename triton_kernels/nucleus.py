"""The selection helpers of the selective row ops (top-p, min-p): the Triton twin of
``csrc/include/entropy_ops/nucleus.h``. ``entropy_ops/backends/kernel.py`` states the rules.

Every kernel that decides a kept set computes ``e_j = 2^((x_j - m) k)``, ``k = log2(e) / T``, with
:func:`selective_e` and compares order keys (the fp32 bit pattern of ``e >= 0`` is monotone in
``e``), so forward, backward and mask kernels agree bit for bit on which tokens are kept.

Top-p crossing search without a sort (:func:`nucleus_search`), one program per row. The bracket
``[lo, hi]`` of order keys holds the crossing value ``kappa``; ``above`` is the mass of the keys
above it. A bucket pass splits the bracket into ``K`` buckets of ``2^sh`` keys (top first; the
first pass uses one binade of ``e`` per bucket, the last bucket also takes everything below) and
sums the mass and count of each, then keeps the bucket where the running mass first reaches
``target = top_p * S``. Once the bracket holds at most ``CAP`` tokens, one compaction pass writes
their indices (in index order) to a per-program workspace and the crossing is resolved there by a
bisection over those few keys. A bracket left with one distinct key is resolved at once. Each pass
carries the exact sums it compared, so the tie rule sees the same masses that chose ``kappa``.
"""
import triton
import triton.language as tl

# The order key of e = 1.0 (the row's max token), the top of every search.
KEY_ONE = tl.constexpr(0x3F800000)


@triton.jit
def selective_e(x, m, k):
    """``e = exp((x - m) / T)`` as ``2^((x - m) k)``: THE definition shared by every selective
    kernel. ``e`` of the max token is exactly 1, of a ``-inf`` logit exactly 0; the clamp keeps an
    approximate ``exp2`` of a tiny negative number from landing above 1, the top of the search."""
    return tl.minimum(tl.exp2((x - m) * k), 1.0)


@triton.jit
def row_max_and_bad(row_ptr, V, BLOCK: tl.constexpr):
    """``(max x, bad)`` of a row of raw logits; ``bad``: the row holds NaN or +inf, or is all -inf."""
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    bad = tl.zeros([BLOCK], tl.int32)
    for off in range(0, V, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m = tl.maximum(m, x)
        bad = bad | ((x != x) | (x == float("inf"))).to(tl.int32)
    m_row = tl.max(m, axis=0)
    return m_row, (tl.max(bad, axis=0) > 0) | (m_row == float("-inf"))


@triton.jit
def _bucket_pass(row_ptr, V, m, k, lo, hi, sh, BLOCK: tl.constexpr, K: tl.constexpr):
    """Mass and count of the row's ``e`` in the ``K`` buckets of ``[lo, hi]`` (bucket
    ``min((hi - key) >> sh, K - 1)``, top first), and the min and max key inside the bracket.
    Partial sums stay per lane ([BLOCK, K]) and are reduced once, after the loop."""
    lanes = tl.arange(0, K)
    mass = tl.zeros([BLOCK, K], tl.float32)
    count = tl.zeros([BLOCK, K], tl.int32)
    kmin = tl.full([BLOCK], KEY_ONE + 1, tl.int32)
    kmax = tl.full([BLOCK], -1, tl.int32)
    for off in range(0, V, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        e = selective_e(x, m, k)
        key = e.to(tl.int32, bitcast=True)
        inside = (cols < V) & (key >= lo) & (key <= hi)
        bucket = tl.where(inside, tl.minimum((hi - key) >> sh, K - 1), K)
        hit = bucket[:, None] == lanes[None, :]
        mass += tl.where(hit, e[:, None], 0.0)
        count += hit.to(tl.int32)
        kmin = tl.minimum(kmin, tl.where(inside, key, KEY_ONE + 1))
        kmax = tl.maximum(kmax, tl.where(inside, key, -1))
    return tl.sum(mass, axis=0), tl.sum(count, axis=0), tl.min(kmin, axis=0), tl.max(kmax, axis=0)


@triton.jit
def _compact_pass(row_ptr, V, m, k, lo, hi, ws_ptr, BLOCK: tl.constexpr):
    """Write the indices of the tokens with a key in ``[lo, hi]`` to ``ws_ptr``, in index order
    (a running count plus a per-block cumsum); return their summed ``e``."""
    n = tl.full([], 0, tl.int32)
    mass = tl.zeros([BLOCK], tl.float32)
    for off in range(0, V, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        e = selective_e(x, m, k)
        key = e.to(tl.int32, bitcast=True)
        inside = (cols < V) & (key >= lo) & (key <= hi)
        mass += tl.where(inside, e, 0.0)
        flags = inside.to(tl.int32)
        n_block = tl.sum(flags, axis=0)
        if n_block > 0:  # most blocks hold no candidate: skip the scan
            tl.store(ws_ptr + n + tl.cumsum(flags, axis=0) - 1, cols, mask=inside)
        n += n_block
    return tl.sum(mass, axis=0)


@triton.jit
def _resolve(row_ptr, m, k, ws_ptr, n, above, target, CAP: tl.constexpr):
    """The crossing among the ``n <= CAP`` candidates in the workspace, by bisection on the key:
    ``G(v) = above + sum_{key >= v} e`` is non-increasing in ``v`` (one fixed reduction tree, and
    rounded addition is monotone), and ``kappa`` is the largest ``v`` with ``G(v) >= target``,
    always a candidate's key. Returns ``(kappa, G(kappa + 1), count of kappa, found)``; when ``G``
    never gets there (rounding against an earlier pass's sums) ``kappa`` is the smallest positive
    key (0 when there is none)."""
    slots = tl.arange(0, CAP)
    valid = slots < n
    j = tl.load(ws_ptr + slots, mask=valid, other=0)
    x = tl.load(row_ptr + j, mask=valid, other=float("-inf")).to(tl.float32)
    e = selective_e(x, m, k)
    key = tl.where(valid, e.to(tl.int32, bitcast=True), -1)
    positive = key > 0
    lo = tl.min(tl.where(positive, key, KEY_ONE + 1), axis=0)
    hi = tl.max(tl.where(positive, key, 0), axis=0)
    found = above + tl.sum(tl.where(positive, e, 0.0), axis=0) >= target
    lo = tl.where(found, lo, tl.minimum(lo, hi))
    hi = tl.where(found, hi, lo)
    while lo < hi:  # invariant: G(lo) >= target, kappa in [lo, hi]
        mid = lo + (hi - lo + 1) // 2
        if above + tl.sum(tl.where(key >= mid, e, 0.0), axis=0) >= target:
            lo = mid
        else:
            hi = mid - 1
    above_kappa = above + tl.sum(tl.where(key > lo, e, 0.0), axis=0)
    count = tl.sum((key == lo).to(tl.int32), axis=0)
    return lo, above_kappa, count, found


@triton.jit
def _bucket_shift(width, K: tl.constexpr):
    """The smallest ``sh`` with ``K * 2^sh >= width``: K buckets of 2^sh keys cover the bracket."""
    sh = tl.full([], 0, tl.int32)
    while (K << sh) < width:
        sh += 1
    return sh


@triton.jit
def nucleus_search(row_ptr, V, m, k, top_p, ws_ptr,
                   BLOCK: tl.constexpr, NARROW_BLOCK: tl.constexpr, K: tl.constexpr, CAP: tl.constexpr):
    """``(kappa key, A, c, target, keep_all)`` of a good row (kernel.py's top-p rule): ``A`` the
    mass above ``kappa``, ``c`` the count of ``kappa``; ``keep_all`` for ``top_p >= 1`` or a row
    whose summed mass never reaches ``target``. ``ws_ptr``: ``CAP`` int32 slots of this program."""
    lo = tl.full([], 0, tl.int32)
    hi = tl.full([], KEY_ONE, tl.int32)
    sh = tl.full([], 23, tl.int32)  # first pass: one binade of e per bucket
    n = tl.full([], 0, tl.int32) + V
    above = tl.full([], 0.0, tl.float32)
    target = tl.full([], 0.0, tl.float32)
    kappa = tl.full([], 0, tl.int32)
    count = tl.full([], 0, tl.int32)
    first = tl.full([], 1, tl.int32)
    keep_all = (tl.full([], 0.0, tl.float32) + top_p >= 1.0).to(tl.int32)
    done = keep_all
    while done == 0:
        if n <= CAP:
            tl.debug_barrier()  # the previous row's resolve has read the workspace
            mass_in = _compact_pass(row_ptr, V, m, k, lo, hi, ws_ptr, BLOCK)
            target = tl.where(first != 0, top_p * mass_in, target)
            tl.debug_barrier()  # the indices written by every thread are visible to all
            kappa, above, count, found = _resolve(row_ptr, m, k, ws_ptr, n, above, target, CAP)
            keep_all = ((~found) & ((first != 0) | (kappa == 0))).to(tl.int32)
            done = tl.full([], 1, tl.int32)
        else:
            mass, cnt, kmin, kmax = _bucket_pass(row_ptr, V, m, k, lo, hi, sh, NARROW_BLOCK, K)
            target = tl.where(first != 0, top_p * tl.sum(mass, axis=0), target)
            reach = above + tl.cumsum(mass, axis=0)
            if kmin == kmax:  # one distinct key left: it is kappa
                kappa = kmin
                count = n
                keep_all = ((first != 0) & (tl.max(reach, axis=0) < target)).to(tl.int32)
                done = tl.full([], 1, tl.int32)
            else:
                lanes = tl.arange(0, K)
                pick = tl.min(tl.where(reach >= target, lanes, K), axis=0)
                keep_all = ((first != 0) & (pick == K)).to(tl.int32)
                done = keep_all
                # Later passes re-sum the bracket in another order; if that falls short of target
                # by rounding, kappa is the bracket's lowest token.
                pick = tl.where(pick == K, tl.max(tl.where(mass > 0.0, lanes, 0), axis=0), pick)
                above = tl.where(pick == 0, above, tl.sum(tl.where(lanes == pick - 1, reach, 0.0), axis=0))
                n = tl.sum(tl.where(lanes == pick, cnt, 0), axis=0)
                top = hi - (pick << sh)
                one = tl.full([], 1, tl.int32)
                bottom = tl.where(pick == K - 1, lo, tl.maximum(lo, top - (one << sh) + 1))
                hi = tl.minimum(top, kmax)
                lo = tl.maximum(bottom, kmin)
                sh = _bucket_shift(hi - lo + 1, K)
        first = tl.full([], 0, tl.int32)
    return kappa, above, count, target, keep_all != 0


@triton.jit
def nucleus_ties_kept(target, above, kappa, count, any_above, INCLUSIVE: tl.constexpr):
    """How many of the ``count`` tokens of value ``kappa`` the nucleus keeps: ``nucleus_ties_kept`` of
    nucleus.h (exclusive: ``#{i : above + i kappa < target}``, at least one when nothing is above;
    inclusive: one more, at most ``count``). IEEE division, as the C++ twin."""
    q = tl.math.div_rn(target - above, kappa)
    limit = count.to(tl.float32) + 1.0
    r = tl.ceil(tl.minimum(q, limit)).to(tl.int32) - 1
    r = tl.where(q >= limit, count, r)
    r = tl.where(q > 0.0, tl.minimum(tl.maximum(r, 0), count), 0)
    if INCLUSIVE:
        r = tl.minimum(r + 1, count)
    else:
        r = tl.where((r == 0) & (~any_above), 1, r)
    return r


@triton.jit
def nucleus_cut(row_ptr, V, m, k, top_p, ws_ptr, INCLUSIVE: tl.constexpr,
                BLOCK: tl.constexpr, NARROW_BLOCK: tl.constexpr, K: tl.constexpr, CAP: tl.constexpr):
    """``(cut key, r, keep_all)``: the kept set is every key above the cut key and the first ``r``
    tokens (by index) at the cut key. Keep-all is cut key 0 with every tie kept."""
    kappa, above, count, target, keep_all = nucleus_search(row_ptr, V, m, k, top_p, ws_ptr,
                                                           BLOCK, NARROW_BLOCK, K, CAP)
    r = nucleus_ties_kept(target, above, kappa.to(tl.float32, bitcast=True), count, above > 0.0, INCLUSIVE)
    return tl.where(keep_all, 0, kappa), tl.where(keep_all, V, r), keep_all


@triton.jit
def nucleus_kept_block(key, cols, live, cut_key, r, seen):
    """``(kept, index of the last kept tie or -1, ties seen)`` for one block in index order:
    ``seen`` counts the ties (``key == cut_key``) of the earlier blocks, the first ``r`` are kept."""
    tie = live & (key == cut_key)
    n_tie = tl.sum(tie.to(tl.int32), axis=0)
    kept = live & (key > cut_key)
    last = tl.full([], -1, tl.int32)
    if n_tie > 0:
        kept_tie = tie & (seen + tl.cumsum(tie.to(tl.int32), axis=0) <= r)
        kept = kept | kept_tie
        last = tl.max(tl.where(kept_tie, cols, -1), axis=0)
    return kept, last, seen + n_tie
