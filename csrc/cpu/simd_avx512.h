// The vector vocabulary of the selective row bodies (selective_body.h, nucleus_select.h) for
// AVX-512 (F + BW + VL + DQ): 16 fp32 lanes, k-masks. Include only from a translation unit
// region compiled for that target (selective_kernels_avx512.cpp, entropy_kernels_avx512.cpp).
#pragma once

#include <immintrin.h>
#include <stdint.h>

#include "cpu/entropy_kernels.h"
#include "cpu/vec_exp_avx512.h"

namespace entropy_ops {
namespace cpu {

struct SimdAvx512 {
  using Acc = float;
  using V = __m512;
  using M = __mmask16;
  static constexpr int W = 16;
  static constexpr float kFloor = kExpFloorF;

  static V set1(float a) { return _mm512_set1_ps(a); }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V exp(V d) { return exp_ps_avx512(d); }  // d in [-87, 0]
  static V loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, V v) { _mm512_storeu_ps(p, v); }
  static float first(V v) { return _mm512_cvtss_f32(v); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static float hmax(V v) { return _mm512_reduce_max_ps(v); }
  static float hmin(V v) { return _mm512_reduce_min_ps(v); }

  static M ge(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static M gt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M eq(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M is_nan(V a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static M none() { return 0; }
  static M mand(M a, M b) { return a & b; }
  static M mor(M a, M b) { return a | b; }
  static bool any(M m) { return m != 0; }
  static int count(M m) { return _mm_popcnt_u32(m); }
  static uint32_t bits(M m) { return m; }
  static M first_lanes(int k) { return k >= W ? M(0xffff) : M((1u << k) - 1u); }
  static V maskz(M m, V a) { return _mm512_maskz_mov_ps(m, a); }
  static V blend(M m, V a, V b) { return _mm512_mask_blend_ps(m, b, a); }  // m ? a : b
  static V mask_add(V acc, M m, V a) { return _mm512_mask_add_ps(acc, m, acc, a); }
  static V mask_min(V acc, M m, V a) { return _mm512_mask_min_ps(acc, m, acc, a); }
  static V mask_max(V acc, M m, V a) { return _mm512_mask_max_ps(acc, m, acc, a); }

  // Writes the selected lanes packed to out[0..count) (W lanes are written: out needs W slack;
  // in place with out <= the lanes' source, since v is already loaded).
  static int compress_store(float* out, M m, V v) {
    _mm512_storeu_ps(out, _mm512_maskz_compress_ps(m, v));
    return count(m);
  }

  static void store_bool(uint8_t* out, M m) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_maskz_mov_epi8(m, _mm_set1_epi8(1)));
  }

  // 16 elements widened to fp32 (exact). With a mask k, lanes outside k read as 0 and their
  // memory is never touched (row tails).
  template <int Code>
  static V load(const void* p, int64_t j) {
    if (Code == kFloat32) return _mm512_loadu_ps(static_cast<const float*>(p) + j);
    return widen<Code>(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + j)));
  }
  template <int Code>
  static V load(const void* p, int64_t j, M k) {
    if (Code == kFloat32) return _mm512_maskz_loadu_ps(k, static_cast<const float*>(p) + j);
    return widen<Code>(_mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(p) + j));
  }

  // With a mask k, only the lanes in k are written.
  template <int Code>
  static void store(void* p, int64_t j, V v) {
    if (Code == kFloat32) {
      _mm512_storeu_ps(static_cast<float*>(p) + j, v);
      return;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + j), narrow<Code>(v));
  }
  template <int Code>
  static void store(void* p, int64_t j, V v, M k) {
    if (Code == kFloat32) {
      _mm512_mask_storeu_ps(static_cast<float*>(p) + j, k, v);
      return;
    }
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + j, k, narrow<Code>(v));
  }

  // 16-bit lanes (fp16 or bf16) to fp32: exact.
  template <int Code>
  static V widen(__m256i h) {
    if (Code == kFloat16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // bf16
  }

  // fp32 to 16-bit lanes, rounding to nearest even; for bf16 NaN is first replaced by the
  // canonical 0x7fc0 (dtype.h's rules), since the rounding add can carry a NaN payload into an
  // infinity.
  template <int Code>
  static __m256i narrow(V v) {
    if (Code == kFloat16) return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
    r = _mm512_mask_mov_epi32(r, is_nan(v), _mm512_set1_epi32(0x7fc0));
    return _mm512_cvtepi32_epi16(r);
  }
};

}  // namespace cpu
}  // namespace entropy_ops
