"""Fused LM head + log-probs + entropy in Triton: matmul tiles of ``hidden @ weight^T`` with the
online-softmax state of every row carried across the vocabulary tiles, so the ``[N, V]`` logits
never exist in memory.

Forward grid: ``(cdiv(N, BLOCK_M), n_splits)``. A program owns ``BLOCK_M`` rows and one fixed
vocabulary split (its size a function of V alone: batch invariance); for each ``BLOCK_N`` tile it
accumulates the product over D in ``BLOCK_K`` steps (``tl.dot``, float32 accumulation), applies bias,
``logit_scale`` and softcap, folds the tile into the per-row state ``{max, sum_exp, sum_exp_z}`` and
picks out the label logits that fall in the tile. Per-split states go to ``part [N, n_splits, 3]``
and are merged (in split order) by the launcher.

Backward grid: ``(cdiv(N, BLOCK_M), cdiv(columns, BLOCK_N))`` over a chunk of the vocabulary: the
same tile of logits is recomputed and turned into ``dL/d(h W^T + b)`` with the saved row shift ``m``
and ``log s`` (``log p = (z - m) / T - log s``, exact on shifted rows; every tile is independent, so
the backward can walk the vocabulary in chunks); the two GEMMs that consume it run in cuBLAS
(launch_linear.py).
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _tanh(x):
    # libdevice's tanh does not run under the interpreter. For |x| >= 0.3 the exp form (odd-symmetric,
    # saturating to +-1 without overflow) is good to a few ulp; below, 1 - e^(-2|x|) cancels (an
    # absolute error of ~6e-8: softcap * 6e-8 in z, 5e-4 in logp at softcap 1e4), so the Taylor
    # series to x^11 takes over (its first omitted term is < 2e-9 relative there).
    a = tl.abs(x)
    t = tl.exp(a * -2.0)
    y = (1.0 - t) / (1.0 + t)
    x2 = x * x
    p = -1382.0 / 155925.0
    p = p * x2 + 62.0 / 2835.0
    p = p * x2 - 17.0 / 315.0
    p = p * x2 + 2.0 / 15.0
    p = p * x2 - 1.0 / 3.0
    small = x + x * (x2 * p)
    return tl.where(a < 0.3, small, tl.where(x < 0, -y, y))


@triton.jit
def _logits_tile(h_ptr, stride_h, w_ptr, stride_w, b_ptr, rows, live_rows, cols, col_ok, D,
                 logit_scale, softcap, HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``z [BLOCK_M, BLOCK_N]`` float32 (before the temperature); rows not ``live_rows`` read 0."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        a = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :], mask=live_rows[:, None] & k_ok[None, :], other=0.0)
        # 64-bit: a vocab row's offset passes 2^31 on large heads ([151936, 16384]); cols and a
        # stride below 2^31 arrive as int32.
        b = tl.load(w_ptr + cols[None, :].to(tl.int64) * stride_w + ks[:, None], mask=col_ok[None, :] & k_ok[:, None],
                    other=0.0)
        if UPCAST:  # the interpreter's bf16 tl.dot is wrong (Triton 3.9): bf16 -> fp32 is exact
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc = acc * logit_scale
    if SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return acc


@triton.jit
def _row_setup(rows, N, mask_ptr, temp_ptr, temp_scalar, HAS_MASK: tl.constexpr, HAS_TEMP: tl.constexpr):
    row_ok = rows < N
    live = row_ok
    if HAS_MASK:
        live = live & (tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0)
    if HAS_TEMP:
        inv_t = 1.0 / tl.load(temp_ptr + rows, mask=row_ok, other=1.0).to(tl.float32)
    else:
        inv_t = tl.full([rows.shape[0]], 1.0, tl.float32) / temp_scalar
    return row_ok, live, inv_t


@triton.jit
def linear_entropy_fwd_kernel(
    h_ptr, stride_h, w_ptr, stride_w, b_ptr, N, V, D, split_size,
    temp_ptr, temp_scalar, labels_ptr, K, mask_ptr, logit_scale, softcap,
    part_ptr, n_splits, zy_ptr,
    HAS_BIAS: tl.constexpr, HAS_TEMP: tl.constexpr, HAS_MASK: tl.constexpr, SOFTCAP: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Per-split row states ``part[row, split] = (m, s, sz)`` in raw-logit units (``k = log2(e)/T``)
    and ``zy[row, k] = z_{y_k}`` for the labels in this split (each label lies in one split)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    split = tl.program_id(1)
    row_ok, live, inv_t = _row_setup(rows, N, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
    k = LOG2E * inv_t
    v_start = split * split_size
    v_end = tl.minimum(v_start + split_size, V)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    sz = tl.zeros([BLOCK_M], tl.float32)
    for v0 in range(v_start, v_end, BLOCK_N):
        cols = v0 + tl.arange(0, BLOCK_N)
        col_ok = cols < v_end
        z = _logits_tile(h_ptr, stride_h, w_ptr, stride_w, b_ptr, rows, live, cols, col_ok, D,
                         logit_scale, softcap, HAS_BIAS, SOFTCAP, PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
        z = tl.where(col_ok[None, :], z, float("-inf"))
        # The online-softmax merge of online_softmax.py, one state per row.
        m_new = tl.maximum(m, tl.max(z, axis=1))
        base = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = m - base
        scale = tl.exp2(d * k)
        sz = tl.where((s > 0) & (scale > 0), (sz + d * s) * scale, 0.0)  # as online_softmax: no -inf * 0
        s = s * scale
        shifted = z - base[:, None]
        e = tl.exp2(shifted * k[:, None])
        s += tl.sum(e, axis=1)
        sz += tl.sum(tl.where(e > 0, e * shifted, 0.0), axis=1)
        m = m_new
        for j in range(0, K):
            y = tl.load(labels_ptr + rows * K + j, mask=row_ok, other=-1).to(tl.int64)
            hit = (y >= v0) & (y < v0 + BLOCK_N) & (y < v_end) & row_ok
            z_y = tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), axis=1)
            tl.store(zy_ptr + rows * K + j, z_y, mask=hit)
    base = (rows * n_splits + split) * 3
    tl.store(part_ptr + base, m, mask=row_ok)
    tl.store(part_ptr + base + 1, s, mask=row_ok)
    tl.store(part_ptr + base + 2, sz, mask=row_ok)


@triton.jit
def _entropy_grad(p, log_p, g_h, h):
    """``gH * (-p (log p + H))``, exactly 0 where ``p = 0`` or ``gH = 0`` (a bad row's NaN p stays NaN)."""
    d_h = tl.where(p == 0, 0.0, -p * (log_p + h))
    return tl.where(g_h != 0, g_h * d_h, 0.0)


@triton.jit
def linear_entropy_bwd_kernel(
    h_ptr, stride_h, w_ptr, stride_w, b_ptr, N, V, D, v_off,
    temp_ptr, temp_scalar, labels_ptr, K, mask_ptr, logit_scale, softcap,
    state_ptr, entropy_ptr, grad_entropy_ptr, grad_logp_ptr, grad_total_ptr, out_ptr, stride_out,
    HAS_BIAS: tl.constexpr, HAS_TEMP: tl.constexpr, HAS_MASK: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_GRAD_ENTROPY: tl.constexpr, HAS_GRAD_LOGP: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``out = dL/d(h W^T + b)`` for ``N`` rows and ``V`` vocabulary entries (a chunk of the
    vocabulary starting at ``v_off``: ``w_ptr``, ``b_ptr`` and ``out_ptr`` already offset to it):
    ``g_z = gH (-p (log p + H)) + sum_k g_k 1[j = y_k] - G p`` with ``G = sum_k g_k`` (given, with
    ignored labels and masked rows zeroed), then ``/ T`` and the chain through softcap and scale."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < V
    row_ok, live, inv_t = _row_setup(rows, N, mask_ptr, temp_ptr, temp_scalar, HAS_MASK, HAS_TEMP)
    z = _logits_tile(h_ptr, stride_h, w_ptr, stride_w, b_ptr, rows, live, cols, col_ok, D,
                     logit_scale, softcap, HAS_BIAS, SOFTCAP, PRECISION, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
    shift = tl.load(state_ptr + rows * 2, mask=row_ok, other=0.0)
    log_s = tl.load(state_ptr + rows * 2 + 1, mask=row_ok, other=0.0)
    log_p = (z - shift[:, None]) * inv_t[:, None] - log_s[:, None]
    p = tl.exp(log_p)
    g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if HAS_GRAD_ENTROPY:
        g_h = tl.load(grad_entropy_ptr + rows, mask=row_ok, other=0.0)
        h = tl.load(entropy_ptr + rows, mask=row_ok, other=0.0)
        g += _entropy_grad(p, log_p, g_h[:, None], h[:, None])
    if HAS_GRAD_LOGP:
        total = tl.load(grad_total_ptr + rows, mask=row_ok, other=0.0)
        g -= tl.where(total[:, None] != 0, total[:, None] * p, 0.0)
        # A label column y_j is rewritten as c_j (1 - p) - o_j p (plus its entropy term), c_j the
        # upstream gradient of the candidates naming y_j and o_j that of the others, as
        # torch_linear._label_grads: G p minus a sum of the candidates' g_k cancels only to ulp(G)
        # where p ~ 1 (every candidate on the argmax at a low T: 5e-4 off at T = 1e-3, where the
        # gradient is ~0). p is recomputed there from where(hit, z, 0), the same formula on the same
        # bits: a loop-invariant p or log p would keep a second [BLOCK_M, BLOCK_N] tile alive across
        # the loop (ptxas spills on float32 heads). Duplicates get the same value; a row whose g_k
        # are all 0 gets none (its p may be NaN).
        for j in range(0, K):
            y = tl.load(labels_ptr + rows * K + j, mask=row_ok, other=-1).to(tl.int64)
            c = tl.zeros([BLOCK_M], tl.float32)
            o = tl.zeros([BLOCK_M], tl.float32)
            any_g = tl.zeros([BLOCK_M], tl.int1)
            for i in range(0, K):
                y_i = tl.load(labels_ptr + rows * K + i, mask=row_ok, other=-1).to(tl.int64)
                g_i = tl.load(grad_logp_ptr + rows * K + i, mask=row_ok, other=0.0)
                c += tl.where(y_i == y, g_i, 0.0)
                o += tl.where(y_i == y, 0.0, g_i)
                any_g = any_g | (g_i != 0)
            hit = cols[None, :] + v_off == y[:, None]
            log_p_y = (tl.where(hit, z, 0.0) - shift[:, None]) * inv_t[:, None] - log_s[:, None]
            p_y = tl.exp(log_p_y)
            g_y = tl.where(any_g[:, None], c[:, None] * (1.0 - p_y) - o[:, None] * p_y, 0.0)
            if HAS_GRAD_ENTROPY:
                g_y = _entropy_grad(p_y, log_p_y, g_h[:, None], h[:, None]) + g_y
            g = tl.where(hit, g_y, g)
    g = g * inv_t[:, None]
    if SOFTCAP:
        t = z / softcap
        g = tl.where(g != 0, g * (logit_scale * (1.0 - t * t)), 0.0)
    else:
        g = g * logit_scale
    g = tl.where(live[:, None], g, 0.0)
    tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], g.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])
