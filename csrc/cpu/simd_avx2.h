// The vector vocabulary of the selective row bodies for AVX2 + FMA + F16C: 8 fp32 lanes, masks as
// all-ones lanes. Include only from a translation unit region compiled for that target
// (selective_kernels_avx2.cpp, entropy_kernels_avx2.cpp). Same operations and results as
// SimdAvx512 (the exp is the same reduction and polynomial), at half the width.
#pragma once

#include <immintrin.h>
#include <stdint.h>

#include "cpu/entropy_kernels.h"
#include "cpu/vec_exp_avx2.h"

namespace entropy_ops {
namespace cpu {

// For each 8-bit lane mask, the indices of its set lanes in ascending order, one per nibble from
// the lowest (the unused high nibbles 0): compress_store's permutation.
struct CompressLanes {
  uint32_t at[256];
  constexpr CompressLanes() : at() {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t packed = 0;
      int k = 0;
      for (uint32_t i = 0; i < 8; ++i) {
        if ((b >> i) & 1u) packed |= i << (4 * k++);
      }
      at[b] = packed;
    }
  }
};
inline constexpr CompressLanes kCompressLanes{};

struct SimdAvx2 {
  using Acc = float;
  using V = __m256;
  using M = __m256;
  static constexpr int W = 8;
  static constexpr float kFloor = kExpFloorF;

  static V set1(float a) { return _mm256_set1_ps(a); }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V exp(V d) { return exp_ps_avx2(d); }  // d in [-87, 0]
  static V loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, V v) { _mm256_storeu_ps(p, v); }
  static float first(V v) { return _mm256_cvtss_f32(v); }

  static float hsum(V v) {
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
  }
  static float hmax(V v) {
    const __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    return _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
  }
  static float hmin(V v) {
    const __m128 m4 = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 m2 = _mm_min_ps(m4, _mm_movehl_ps(m4, m4));
    return _mm_cvtss_f32(_mm_min_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
  }

  static M ge(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static M gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M eq(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M is_nan(V a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static M none() { return _mm256_setzero_ps(); }
  static M mand(M a, M b) { return _mm256_and_ps(a, b); }
  static M mor(M a, M b) { return _mm256_or_ps(a, b); }
  static uint32_t bits(M m) { return static_cast<uint32_t>(_mm256_movemask_ps(m)); }
  static bool any(M m) { return bits(m) != 0; }
  static int count(M m) { return __builtin_popcount(bits(m)); }
  static M first_lanes(int k) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(k), lane));
  }
  // and-masking, never a multiplication by 0: a NaN or infinite unselected lane becomes +0.
  static V maskz(M m, V a) { return _mm256_and_ps(m, a); }
  static V blend(M m, V a, V b) { return _mm256_blendv_ps(b, a, m); }  // m ? a : b
  static V mask_add(V acc, M m, V a) { return _mm256_add_ps(acc, maskz(m, a)); }
  static V mask_min(V acc, M m, V a) { return blend(m, min(acc, a), acc); }
  static V mask_max(V acc, M m, V a) { return blend(m, max(acc, a), acc); }

  // Writes the selected lanes packed to out[0..count), branch-free: one permutation (AVX2 has no
  // vcompressps) and one store of all W lanes, so writes stay within out[0..W) (in place is safe
  // with out <= the lanes' source, since v is already loaded). Measured on top_p_entropy at
  // 512 x 151936 (one AMD EPYC core): a per-lane store loop took half of the cut search.
  static int compress_store(float* out, M m, V v) {
    const uint32_t b = bits(m);
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i lanes = _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(kCompressLanes.at[b])), shifts),
        _mm256_set1_epi32(7));
    _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(v, lanes));
    return __builtin_popcount(b);
  }

  static void store_bool(uint8_t* out, M m) {
    const uint32_t b = bits(m);
    for (int i = 0; i < W; ++i) out[i] = static_cast<uint8_t>((b >> i) & 1u);
  }

  template <int Code>
  static V load(const void* p, int64_t j) {
    if (Code == kFloat32) return _mm256_loadu_ps(static_cast<const float*>(p) + j);
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + j));
    if (Code == kFloat16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));  // bf16: exact
  }

  // Narrowing rounds to nearest even, NaN to the canonical 0x7fc0 for bf16 (dtype.h's rules).
  template <int Code>
  static void store(void* p, int64_t j, V v) {
    if (Code == kFloat32) {
      _mm256_storeu_ps(static_cast<float*>(p) + j, v);
      return;
    }
    __m128i h;
    if (Code == kFloat16) {
      h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      const __m256i u = _mm256_castps_si256(v);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      __m256i r = _mm256_srli_epi32(
          _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
      r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(is_nan(v)));
      h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p) + j), h);
  }
};

}  // namespace cpu
}  // namespace entropy_ops
