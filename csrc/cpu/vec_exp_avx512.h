// e^d for 16 floats, AVX-512. Only include from code compiled for the EO_AVX512 target.
#pragma once

#include <immintrin.h>

#define EO_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

namespace entropy_ops {
namespace cpu {

// Valid for d in [-87, 0] (callers clamp; NaN in gives NaN out). Cody-Waite reduction
// d = n ln2 + r, |r| <= ln2/2, with ln2 split so n*ln2_hi is exact (ln2_hi has 9 significant
// bits, |n| <= 126); then a degree-6 polynomial for e^r, fitted (Lawson-weighted minimax) on
// [-ln2/2, ln2/2] to 1.9e-9 relative, ~1.2 ulp once evaluated in fp32; scalef applies 2^n.
EO_AVX512 static inline __m512 exp_ps_avx512(__m512 d) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(d, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), d);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.383684576e-03f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.374815807e-03f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166822508e-02f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666641980e-01f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.999999106e-01f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

}  // namespace cpu
}  // namespace entropy_ops
