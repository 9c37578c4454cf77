// Dtype codes of the torch-free ABI and exact scalar conversions between the 16-bit float
// formats and fp32. Shared by the CPU kernels (g++) and the CUDA kernels (nvcc).
#pragma once

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define EO_HOST_DEVICE __host__ __device__
#else
#define EO_HOST_DEVICE
#endif

namespace entropy_ops {

enum DtypeCode : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3 };

EO_HOST_DEVICE inline float bits_to_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

EO_HOST_DEVICE inline uint32_t float_to_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

EO_HOST_DEVICE inline uint64_t double_to_bits(double d) {
#ifdef __CUDA_ARCH__
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
#endif
}

EO_HOST_DEVICE inline double bits_to_double(uint64_t u) {
#ifdef __CUDA_ARCH__
  return __longlong_as_double(static_cast<long long>(u));
#else
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
#endif
}

// bf16 is the top half of an fp32: widening is exact, NaN payloads included.
EO_HOST_DEVICE inline float bf16_to_float(uint16_t h) {
  return bits_to_float(static_cast<uint32_t>(h) << 16);
}

// Round to nearest even by adding 0x7fff plus the lowest kept bit. NaN is handled first because
// the rounding add could carry a NaN's payload into the exponent and make it an infinity; the
// canonical 0x7fc0 is what c10's scalar conversion returns, so bit-pattern tests agree.
EO_HOST_DEVICE inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

EO_HOST_DEVICE inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) {
    // Inf keeps its bits; a NaN comes back quiet (as vcvtph2ps and c10 return it).
    return bits_to_float(sign | 0x7f800000u | (mant << 13) | (mant ? 0x00400000u : 0u));
  }
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in fp32 (mant < 2^10, a power-of-two scale).
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return bits_to_float(sign | float_to_bits(mag));
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// F. Giesen's float_to_half_fast3_rtne: subnormal results come from an fp32 add of 0.5, whose
// ulp is 2^-24 (the fp16 subnormal step), so the hardware's round-to-nearest-even does the
// rounding; normal results round with the "+0xfff + odd bit" trick; overflow carries into inf.
EO_HOST_DEVICE inline uint16_t float_to_half(float f) {
  uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  uint32_t o;
  if (u >= 0x47800000u) {  // >= 2^16: inf, or NaN (kept quiet, like c10's 0x7e00)
    o = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < 0x38800000u) {  // < 2^-14: fp16 subnormal or zero
    const float magic = 0.5f;
    o = float_to_bits(bits_to_float(u) + magic) - float_to_bits(magic);
  } else {
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += 0xc8000fffu + mant_odd;  // rebias the exponent by -112 and round
    o = u >> 13;
  }
  return static_cast<uint16_t>(o | sign);
}

}  // namespace entropy_ops
