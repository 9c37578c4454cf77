"""The online-softmax state ``{max, sum_exp, sum_exp_z}`` as Triton helpers (the Triton twin of
``csrc/include/entropy_ops/online_softmax.h``).

States hold raw-logit units: ``m`` is the max of the raw logits ``x``; ``s = sum 2^((x - m) k)`` and
``sz = sum 2^((x - m) k) (x - m)`` with ``k = log2(e) / T``, so a single ``exp2`` per element and
the shift by ``m`` (rows shifted by 1e4 keep full precision). Terms with ``2^(...) = 0`` contribute
exactly 0 (a select, never ``0 * -inf``); so does a whole state whose rescale factor underflows to
0, whose ``sz + d s`` can overflow to -inf (a block masked with ``finfo.min``: ``d ~ -3.4e38``).
A NaN state (``s`` NaN) stays NaN through ``s``.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def safe_max(m):
    # An all -inf state keeps m = -inf; shifting by 0 instead avoids -inf - -inf = NaN.
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def block_update(m, s, sz, x, k):
    """Fold a block of raw logits ``x`` into per-lane states (vectors of the block's shape)."""
    m_new = tl.maximum(m, x)
    base = safe_max(m_new)
    scale = tl.exp2((m - base) * k)
    d = m - base
    sz = tl.where((s > 0) & (scale > 0), (sz + d * s) * scale, 0.0)
    s = s * scale
    shifted = x - base
    e = tl.exp2(shifted * k)
    s = s + e
    sz = sz + tl.where(e > 0, e * shifted, 0.0)
    return m_new, s, sz


@triton.jit
def merge(m_a, s_a, sz_a, m_b, s_b, sz_b, k):
    """Merge two states (scalars or vectors) into one relative to the larger max."""
    m = tl.maximum(m_a, m_b)
    base = safe_max(m)
    d_a = m_a - base
    d_b = m_b - base
    f_a = tl.exp2(d_a * k)
    f_b = tl.exp2(d_b * k)
    sz = (tl.where((s_a > 0) & (f_a > 0), (sz_a + d_a * s_a) * f_a, 0.0)
          + tl.where((s_b > 0) & (f_b > 0), (sz_b + d_b * s_b) * f_b, 0.0))
    return m, s_a * f_a + s_b * f_b, sz


@triton.jit
def reduce_lanes(m, s, sz, k):
    """Merge the per-lane states of a block into one scalar state."""
    m_row = tl.max(m, axis=0)
    base = safe_max(m_row)
    d = m - base
    f = tl.exp2(d * k)
    s_row = tl.sum(s * f, axis=0)
    sz_row = tl.sum(tl.where((s > 0) & (f > 0), (sz + d * s) * f, 0.0), axis=0)
    return m_row, s_row, sz_row


@triton.jit
def label_log_prob(x_y, m, temperature, log_s):
    """``log p_y = (x_y - m) / T - log_s`` (T in float64) in float64, rounded once to float32, as the C++
    ``label_log_prob``: ``(x_y - m) * (1 / T)`` in float32 rounds 1/T and the product at the size
    of log p_y, an ulp of it, beyond eager's error at low temperatures (|log p_y| in the hundreds)."""
    d = x_y.to(tl.float64) - m.to(tl.float64)
    # float64 division is IEEE-rounded on the GPU (div.rn.f64; float32's `/` is approximate).
    return (d / temperature - log_s.to(tl.float64)).to(tl.float32)


@triton.jit
def finalize(m, s, sz, inv_t):
    """``(entropy, log_s)`` of a state, in units of ``z = x / T``; NaN for an empty (all -inf) row.
    ``log_s = lse - m / T`` is kept apart from the max: ``(x - m) / T - log_s`` keeps every digit
    where ``x / T - lse`` would inherit lse's rounding (rows shifted by 1e4, low temperatures)."""
    ln_s = tl.where(s > 0, tl.log(s), float("nan"))
    entropy = ln_s - sz * inv_t / s
    return entropy, ln_s
