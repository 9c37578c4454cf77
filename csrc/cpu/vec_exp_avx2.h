// e^d for 8 floats, AVX2 + FMA. Only include from code compiled for the EO_AVX2 target.
#pragma once

#include <immintrin.h>

#define EO_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace entropy_ops {
namespace cpu {

// Same reduction and polynomial as exp_ps_avx512 (see vec_exp_avx512.h); 2^n is built in the
// exponent field, which is valid because the clamp keeps n in [-126, 0] (a normal float).
EO_AVX2 static inline __m256 exp_ps_avx2(__m256 d) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(d, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), d);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.383684576e-03f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.374815807e-03f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166822508e-02f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666641980e-01f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.999999106e-01f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i pow2n = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n));
}

}  // namespace cpu
}  // namespace entropy_ops
