"""The eight per-row statistics of ``token_stats`` (SPEC §3.1; ``token_stats_torch`` defines them
precisely), in Triton: one program per row, two passes.

Pass 1 folds the row into the online-softmax state (max, sum_exp, sum_exp_z) and reads the label.
Pass 2, with ``m``, ``ln s`` and ``H`` known, sums ``p^2``, ``p (log p + H)^2`` (varentropy, never
negative), ``p^2 (log p + H)`` and the shifted row ``x - m`` (for the mean in self_certainty).
Everything is relative to the row's own max, so rows shifted by 1e4 keep their digits; ``p_j = 0``
terms contribute exactly 0.
"""
import triton
import triton.language as tl

from .entropy import _row_setup, row_temperature
from .online_softmax import LOG2E, block_update, finalize, label_log_prob, reduce_lanes, safe_max


@triton.jit
def _store_stat(ptr, row, value, active, bad):
    tl.store(ptr + row, tl.where(active, tl.where(bad, float("nan"), value), 0.0))


@triton.jit
def token_stats_kernel(
    x_ptr, stride_row, V, log_v, temp_ptr, temp_scalar, temp_lo, labels_ptr, ignore_index, mask_ptr,
    lse_ptr, entropy_ptr, logp_ptr, max_logp_ptr, collision_ptr, varentropy_ptr, self_certainty_ptr,
    entropy_drift_ptr,
    HAS_TEMP: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    active, inv_t = _row_setup(row, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
    k = LOG2E * inv_t
    row_ptr = x_ptr + row * stride_row
    read_end = tl.where(active, V, 0)  # a masked row is never read

    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    sz = tl.zeros([BLOCK], tl.float32)
    for off in range(0, read_end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m, s, sz = block_update(m, s, sz, x, k)
    m_row, s_row, sz_row = reduce_lanes(m, s, sz, k)
    entropy, ln_s = finalize(m_row, s_row, sz_row, inv_t)
    # lse = m / T + ln_s finished in float64 with T as given and rounded once, as the cpu and cuda
    # kernels: in float32, m / T and the sum round apart (on rows shifted by 1e4, |lse| ~ 8e3,
    # that is an ulp of lse, 4.9e-4, where eager is within half of one).
    t64 = row_temperature(row, temp_ptr, temp_scalar, temp_lo, HAS_TEMP)
    lse = (m_row.to(tl.float64) / t64 + ln_s.to(tl.float64)).to(tl.float32)
    # NaN/+inf entries, or an all -inf row (finalize's log of a NaN or 0 sum); not an lse that
    # overflows to -inf (a row of finfo.min at T < 1 is a uniform distribution).
    bad = ln_s != ln_s

    base = safe_max(m_row)
    # The mean of x - base is kept free of roundings that every term would repeat on a row of many
    # equal logits (a vocabulary masked with one value): x - base with its rounding error
    # (TwoSum), each term scaled by 2^-k with 2^k > V, exactly (from V's fp32 exponent; it keeps a
    # sum of finfo.min entries finite), a compensated (Kahan) sum per lane, the lanes and 2^k / V
    # and T in float64 at the end.
    v_bits = V.to(tl.float32).to(tl.int32, bitcast=True)
    scale = ((253 - ((v_bits >> 23) & 255)) << 23).to(tl.float32, bitcast=True)
    collision = tl.zeros([BLOCK], tl.float32)
    varentropy = tl.zeros([BLOCK], tl.float32)
    drift = tl.zeros([BLOCK], tl.float32)
    d_sum = tl.zeros([BLOCK], tl.float32)
    d_comp = tl.zeros([BLOCK], tl.float32)
    d_rounding = tl.zeros([BLOCK], tl.float32)
    neg_inf = tl.zeros([BLOCK], tl.int32)
    for off in range(0, tl.where(bad, 0, read_end), BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        d = x - base
        p = tl.exp2(d * k) / s_row
        log_p = d * inv_t - ln_s
        centred = log_p + entropy
        live = p > 0.0
        collision += p * p
        varentropy += tl.where(live, p * centred * centred, 0.0)
        drift += tl.where(live, p * p * centred, 0.0)
        part = d - x
        err = (x - (d - part)) + (-base - part)
        summed = (cols < V) & (d > float("-inf"))
        y = tl.where(summed, d * scale, 0.0) - d_comp
        t = d_sum + y
        d_comp = (t - d_sum) - y
        d_sum = t
        d_rounding += tl.where(summed, err * scale, 0.0)
        neg_inf = tl.maximum(neg_inf, tl.where((cols < V) & (d == float("-inf")), 1, 0))

    lanes = (d_sum.to(tl.float64) - d_comp.to(tl.float64)) + d_rounding.to(tl.float64)
    mean_z = tl.sum(lanes, axis=0) / scale.to(tl.float64) / V.to(tl.float64) / t64
    # The mean is over all V entries: -inf (so +inf here) when the row has -inf logits.
    mean_z = tl.where(tl.max(neg_inf, axis=0) > 0, float("-inf"), mean_z)
    self_certainty = (ln_s.to(tl.float64) - mean_z - log_v).to(tl.float32)
    _store_stat(lse_ptr, row, lse, active, bad)
    _store_stat(entropy_ptr, row, entropy, active, bad)
    _store_stat(max_logp_ptr, row, -ln_s, active, bad)
    _store_stat(collision_ptr, row, tl.sum(collision, axis=0), active, bad)
    _store_stat(varentropy_ptr, row, tl.sum(varentropy, axis=0), active, bad)
    _store_stat(self_certainty_ptr, row, self_certainty, active, bad)
    _store_stat(entropy_drift_ptr, row, tl.sum(drift, axis=0), active, bad)
    if HAS_LABELS:
        y = tl.load(labels_ptr + row).to(tl.int64)
        in_range = (y >= 0) & (y < V)
        x_y = tl.load(row_ptr + y, mask=in_range & active, other=0.0).to(tl.float32)
        logp = tl.where(in_range & (~bad), label_log_prob(x_y, m_row, t64, ln_s), float("nan"))
        logp = tl.where(y == ignore_index, 0.0, logp)
        tl.store(logp_ptr + row, tl.where(active, logp, 0.0))
