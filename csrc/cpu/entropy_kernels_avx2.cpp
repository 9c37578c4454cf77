// AVX2 + FMA + F16C row kernels for fp32/bf16/fp16 rows. See entropy_kernels.h.
// AVX2 has no masked 16-bit loads/stores, so row tails go through ElemIO (exact widening, RNE
// narrowing: the same values the vector paths produce).
// x86-64 only: on other targets this file compiles to nothing (entropy_kernels.h).
#if defined(__x86_64__)

#include <immintrin.h>

#include <algorithm>

#include "cpu/elem_io.h"
#include "cpu/entropy_kernels.h"
#include "cpu/vec_exp_avx2.h"

// SimdAvx2 (the selective kernels' vector vocabulary) lends its widening load, narrowing store
// and horizontal reductions; its members carry the target only inside this region.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include "cpu/simd_avx2.h"
#pragma GCC pop_options

namespace entropy_ops {
namespace cpu {
namespace {

using Simd = SimdAvx2;

// Widens one block into buf (padded with -inf to a multiple of 32) and returns its max; NaN
// handling as in the AVX-512 body (the exp pass, plus a scan when the max reads -inf).
template <int Code>
EO_AVX2 inline float widen_block(const void* row, int64_t b0, int64_t n, float* buf) {
  const __m256 neg_inf = _mm256_set1_ps(-INFINITY);
  __m256 m0 = neg_inf, m1 = neg_inf, m2 = neg_inf, m3 = neg_inf;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m256 x0 = Simd::load<Code>(row, b0 + j), x1 = Simd::load<Code>(row, b0 + j + 8);
    const __m256 x2 = Simd::load<Code>(row, b0 + j + 16), x3 = Simd::load<Code>(row, b0 + j + 24);
    _mm256_storeu_ps(buf + j, x0);
    _mm256_storeu_ps(buf + j + 8, x1);
    _mm256_storeu_ps(buf + j + 16, x2);
    _mm256_storeu_ps(buf + j + 24, x3);
    m0 = _mm256_max_ps(m0, x0);
    m1 = _mm256_max_ps(m1, x1);
    m2 = _mm256_max_ps(m2, x2);
    m3 = _mm256_max_ps(m3, x3);
  }
  for (; j + 8 <= n; j += 8) {
    const __m256 x = Simd::load<Code>(row, b0 + j);
    _mm256_storeu_ps(buf + j, x);
    m0 = _mm256_max_ps(m0, x);
  }
  for (; j < n; ++j) buf[j] = ElemIO<Code>::load(row, b0 + j);
  for (; j % 32 != 0; ++j) buf[j] = -INFINITY;
  for (int64_t t = n / 8 * 8; t < j; t += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(buf + t));
  return Simd::hmax(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
}

EO_AVX2 inline bool any_nan(const float* buf, int64_t n) {
  for (int64_t j = 0; j < n; j += 8) {
    const __m256 x = _mm256_loadu_ps(buf + j);
    if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))) return true;
  }
  return false;
}

// As accumulate16 (AVX-512): lanes below the floor are zeroed by an and-mask before they are
// added (never multiplied by 0: 0 * -inf is NaN); NaN passes the NLT compare.
EO_AVX2 inline void accumulate8(__m256 x, __m256 m, __m256 s, __m256& sum, __m256& sum_z) {
  const __m256 floor = _mm256_set1_ps(kExpFloorF);
  const __m256 d = _mm256_mul_ps(_mm256_sub_ps(x, m), s);
  const __m256 keep = _mm256_cmp_ps(d, floor, _CMP_NLT_UQ);
  const __m256 dc = _mm256_max_ps(floor, d);  // second operand is returned on NaN: kept
  const __m256 e = _mm256_and_ps(exp_ps_avx2(dc), keep);
  sum = _mm256_add_ps(sum, e);
  sum_z = _mm256_fmadd_ps(e, dc, sum_z);
}

template <int Code>
EO_AVX2 OnlineSoftmax<float> fwd_row(const void* row, int64_t vocab, float inv_t) {
  alignas(32) float buf[kBlock + 32];
  OnlineSoftmax<float> st = OnlineSoftmax<float>::empty();
  const __m256 s = _mm256_set1_ps(inv_t);
  for (int64_t b0 = 0; b0 < vocab; b0 += kBlock) {
    const int64_t n = std::min(kBlock, vocab - b0);
    const int64_t n32 = (n + 31) / 32 * 32;
    const float bmax = widen_block<Code>(row, b0, n, buf);
    if (bmax == -INFINITY) {
      if (any_nan(buf, n32)) return OnlineSoftmax<float>::nan();
      continue;
    }
    const float m_new = std::max(bmax, st.max);
    const __m256 m = _mm256_set1_ps(m_new);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    __m256 z0 = s0, z1 = s0, z2 = s0, z3 = s0;
    for (int64_t j = 0; j < n32; j += 32) {
      accumulate8(_mm256_load_ps(buf + j), m, s, s0, z0);
      accumulate8(_mm256_load_ps(buf + j + 8), m, s, s1, z1);
      accumulate8(_mm256_load_ps(buf + j + 16), m, s, s2, z2);
      accumulate8(_mm256_load_ps(buf + j + 24), m, s, s3, z3);
    }
    const float sum = Simd::hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    const float sum_z = Simd::hsum(_mm256_add_ps(_mm256_add_ps(z0, z1), _mm256_add_ps(z2, z3)));
    st = merge(st, OnlineSoftmax<float>{m_new, sum, sum_z}, inv_t);
  }
  return st;
}

// See bwd_row_impl in the AVX-512 body for the formula; `j` is the index of lane 0.
template <bool kH, bool kLp>
EO_AVX2 inline __m256 grad8(__m256 x, int64_t j, const BwdRowArgs<float>& a) {
  const __m256 floor = _mm256_set1_ps(kExpFloorF);
  const __m256 s = _mm256_set1_ps(a.inv_t);
  const __m256 lp = _mm256_fmadd_ps(_mm256_sub_ps(x, _mm256_set1_ps(a.x_shift)), s,
                                    _mm256_set1_ps(-a.log_sum));
  const __m256 live = _mm256_cmp_ps(lp, floor, _CMP_NLT_UQ);
  const __m256 p = exp_ps_avx2(_mm256_max_ps(floor, lp));
  __m256 coef;
  if (kH && kLp) {
    coef = _mm256_fmadd_ps(_mm256_set1_ps(-a.grad_entropy),
                           _mm256_add_ps(lp, _mm256_set1_ps(a.entropy)),
                           _mm256_set1_ps(-a.grad_logp));
  } else if (kH) {
    coef = _mm256_mul_ps(_mm256_set1_ps(-a.grad_entropy),
                         _mm256_add_ps(lp, _mm256_set1_ps(a.entropy)));
  } else {
    coef = _mm256_set1_ps(-a.grad_logp);
  }
  __m256 g = _mm256_and_ps(_mm256_mul_ps(p, coef), live);
  if (kLp && a.label >= j && a.label < j + 8) {
    const __m256i lane = _mm256_set1_epi32(static_cast<int>(a.label - j));
    const __m256 hit = _mm256_castsi256_ps(
        _mm256_cmpeq_epi32(lane, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    g = _mm256_add_ps(g, _mm256_and_ps(hit, _mm256_set1_ps(a.grad_logp)));
  }
  return _mm256_mul_ps(g, s);
}

template <int Code, bool kH, bool kLp>
EO_AVX2 void bwd_row_impl(const void* row, void* grad, int64_t vocab, const BwdRowArgs<float>& a) {
  int64_t j = 0;
  for (; j + 8 <= vocab; j += 8) {
    const __m256 g =
        (kH || kLp) ? grad8<kH, kLp>(Simd::load<Code>(row, j), j, a) : _mm256_setzero_ps();
    Simd::store<Code>(grad, j, g);
  }
  if (j == vocab) return;
  alignas(32) float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t t = j; t < vocab; ++t) tail[t - j] = ElemIO<Code>::load(row, t);
  if (kH || kLp) _mm256_store_ps(tail, grad8<kH, kLp>(_mm256_load_ps(tail), j, a));
  for (int64_t t = j; t < vocab; ++t) ElemIO<Code>::store(grad, t, (kH || kLp) ? tail[t - j] : 0.f);
}

template <int Code>
EO_AVX2 void bwd_row(const void* row, void* grad, int64_t vocab, const BwdRowArgs<float>& a) {
  const bool h = a.grad_entropy != 0, lp = a.grad_logp != 0;
  if (h && lp) return bwd_row_impl<Code, true, true>(row, grad, vocab, a);
  if (h) return bwd_row_impl<Code, true, false>(row, grad, vocab, a);
  if (lp) return bwd_row_impl<Code, false, true>(row, grad, vocab, a);
  bwd_row_impl<Code, false, false>(row, grad, vocab, a);
}

}  // namespace

constexpr RowKernels kAvx2Kernels = {
    "avx2",
    {fwd_row<kFloat32>, fwd_row<kBFloat16>, fwd_row<kFloat16>},
    {bwd_row<kFloat32>, bwd_row<kBFloat16>, bwd_row<kFloat16>},
};

}  // namespace cpu
}  // namespace entropy_ops

#endif  // defined(__x86_64__)
