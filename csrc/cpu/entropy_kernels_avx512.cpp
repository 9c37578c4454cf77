// AVX-512 row kernels (F + BW + VL + DQ) for fp32/bf16/fp16 rows. See entropy_kernels.h.
// x86-64 only: on other targets this file compiles to nothing (entropy_kernels.h).
#if defined(__x86_64__)

#include <immintrin.h>

#include <algorithm>

#include "cpu/entropy_kernels.h"
#include "cpu/vec_exp_avx512.h"

// SimdAvx512 (the selective kernels' vector vocabulary) lends its widening loads and narrowing
// stores; its members carry the target only inside this region.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#include "cpu/simd_avx512.h"
#pragma GCC pop_options

namespace entropy_ops {
namespace cpu {
namespace {

using Simd = SimdAvx512;

EO_AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
}

// Widens one block into buf (padded with -inf to a multiple of 64) and returns its max.
// NaN is not tracked here: _mm512_max_ps drops it depending on operand order, so the caller
// relies on the exp pass (NaN - m is NaN) and, for a block whose max reads -inf, a scan.
template <int Code>
EO_AVX512 inline float widen_block(const void* row, int64_t b0, int64_t n, float* buf) {
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  __m512 m0 = neg_inf, m1 = neg_inf, m2 = neg_inf, m3 = neg_inf;
  int64_t j = 0;
  for (; j + 64 <= n; j += 64) {
    const __m512 x0 = Simd::load<Code>(row, b0 + j), x1 = Simd::load<Code>(row, b0 + j + 16);
    const __m512 x2 = Simd::load<Code>(row, b0 + j + 32), x3 = Simd::load<Code>(row, b0 + j + 48);
    _mm512_storeu_ps(buf + j, x0);
    _mm512_storeu_ps(buf + j + 16, x1);
    _mm512_storeu_ps(buf + j + 32, x2);
    _mm512_storeu_ps(buf + j + 48, x3);
    m0 = _mm512_max_ps(m0, x0);
    m1 = _mm512_max_ps(m1, x1);
    m2 = _mm512_max_ps(m2, x2);
    m3 = _mm512_max_ps(m3, x3);
  }
  for (; j < n; j += 16) {
    const __mmask16 k = tail_mask(n - j);
    const __m512 x = _mm512_mask_mov_ps(neg_inf, k, Simd::load<Code>(row, b0 + j, k));
    _mm512_storeu_ps(buf + j, x);
    m0 = _mm512_max_ps(m0, x);
  }
  for (; j % 64 != 0; j += 16) _mm512_storeu_ps(buf + j, neg_inf);
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
}

EO_AVX512 inline bool any_nan(const float* buf, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const __m512 x = _mm512_loadu_ps(buf + j);
    if (_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q)) return true;
  }
  return false;
}

// Adds e^d and e^d * d for d = (x - m) s into (sum, sum_z). Lanes with d < -87 (-inf logits,
// padding) are left out by the mask, not multiplied by 0 (0 * -inf is NaN); NaN d passes the
// mask (NLT is true on unordered) and poisons the sums as it must.
EO_AVX512 inline void accumulate16(__m512 x, __m512 m, __m512 s, __m512& sum, __m512& sum_z) {
  const __m512 floor = _mm512_set1_ps(kExpFloorF);
  const __m512 d = _mm512_mul_ps(_mm512_sub_ps(x, m), s);
  const __mmask16 keep = _mm512_cmp_ps_mask(d, floor, _CMP_NLT_UQ);
  const __m512 dc = _mm512_max_ps(floor, d);  // second operand is returned on NaN: kept
  const __m512 e = exp_ps_avx512(dc);
  sum = _mm512_mask_add_ps(sum, keep, sum, e);
  sum_z = _mm512_mask3_fmadd_ps(e, dc, sum_z, keep);
}

template <int Code>
EO_AVX512 OnlineSoftmax<float> fwd_row(const void* row, int64_t vocab, float inv_t) {
  alignas(64) float buf[kBlock + 64];
  OnlineSoftmax<float> st = OnlineSoftmax<float>::empty();
  const __m512 s = _mm512_set1_ps(inv_t);
  for (int64_t b0 = 0; b0 < vocab; b0 += kBlock) {
    const int64_t n = std::min(kBlock, vocab - b0);
    const int64_t n64 = (n + 63) / 64 * 64;
    const float bmax = widen_block<Code>(row, b0, n, buf);
    if (bmax == -INFINITY) {  // adds exactly nothing, unless it hides a NaN
      if (any_nan(buf, n64)) return OnlineSoftmax<float>::nan();
      continue;
    }
    const float m_new = std::max(bmax, st.max);
    const __m512 m = _mm512_set1_ps(m_new);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    __m512 z0 = s0, z1 = s0, z2 = s0, z3 = s0;
    for (int64_t j = 0; j < n64; j += 64) {
      accumulate16(_mm512_load_ps(buf + j), m, s, s0, z0);
      accumulate16(_mm512_load_ps(buf + j + 16), m, s, s1, z1);
      accumulate16(_mm512_load_ps(buf + j + 32), m, s, s2, z2);
      accumulate16(_mm512_load_ps(buf + j + 48), m, s, s3, z3);
    }
    const float sum =
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    const float sum_z =
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(z0, z1), _mm512_add_ps(z2, z3)));
    st = merge(st, OnlineSoftmax<float>{m_new, sum, sum_z}, inv_t);
  }
  return st;
}

// g_z = p (-gH (lp + H) - glogp) [+ glogp at the label], lp = (x - x_shift) s - log_sum by one
// fma (exact product), p = 0 exactly where lp < -87.
template <int Code, bool kH, bool kLp>
EO_AVX512 void bwd_row_impl(const void* row, void* grad, int64_t vocab,
                            const BwdRowArgs<float>& a) {
  const __m512 floor = _mm512_set1_ps(kExpFloorF);
  const __m512 s = _mm512_set1_ps(a.inv_t);
  const __m512 shift = _mm512_set1_ps(a.x_shift);
  const __m512 neg_log_sum = _mm512_set1_ps(-a.log_sum);
  const __m512 ent = _mm512_set1_ps(a.entropy);
  const __m512 neg_gh = _mm512_set1_ps(-a.grad_entropy);
  const __m512 neg_glp = _mm512_set1_ps(-a.grad_logp);
  const __m512 glp = _mm512_set1_ps(a.grad_logp);
  for (int64_t j = 0; j < vocab; j += 16) {
    const __mmask16 k = tail_mask(vocab - j);
    __m512 g = _mm512_setzero_ps();
    if (kH || kLp) {
      const __m512 x = k == 0xffff ? Simd::load<Code>(row, j) : Simd::load<Code>(row, j, k);
      const __m512 lp = _mm512_fmadd_ps(_mm512_sub_ps(x, shift), s, neg_log_sum);
      const __mmask16 live = _mm512_cmp_ps_mask(lp, floor, _CMP_NLT_UQ);
      const __m512 p = exp_ps_avx512(_mm512_max_ps(floor, lp));
      __m512 coef;
      if (kH && kLp) {
        coef = _mm512_fmadd_ps(neg_gh, _mm512_add_ps(lp, ent), neg_glp);
      } else if (kH) {
        coef = _mm512_mul_ps(neg_gh, _mm512_add_ps(lp, ent));
      } else {
        coef = neg_glp;
      }
      g = _mm512_maskz_mul_ps(live, p, coef);
      if (kLp && a.label >= j && a.label < j + 16) {
        g = _mm512_mask_add_ps(g, __mmask16(1u << (a.label - j)), g, glp);
      }
      g = _mm512_mul_ps(g, s);
    }
    Simd::store<Code>(grad, j, g, k);
  }
}

template <int Code>
EO_AVX512 void bwd_row(const void* row, void* grad, int64_t vocab, const BwdRowArgs<float>& a) {
  const bool h = a.grad_entropy != 0, lp = a.grad_logp != 0;
  if (h && lp) return bwd_row_impl<Code, true, true>(row, grad, vocab, a);
  if (h) return bwd_row_impl<Code, true, false>(row, grad, vocab, a);
  if (lp) return bwd_row_impl<Code, false, true>(row, grad, vocab, a);
  bwd_row_impl<Code, false, false>(row, grad, vocab, a);
}

}  // namespace

constexpr RowKernels kAvx512Kernels = {
    "avx512",
    {fwd_row<kFloat32>, fwd_row<kBFloat16>, fwd_row<kFloat16>},
    {bwd_row<kFloat32>, bwd_row<kBFloat16>, bwd_row<kFloat16>},
};

}  // namespace cpu
}  // namespace entropy_ops

#endif  // defined(__x86_64__)
