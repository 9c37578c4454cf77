// What the token-level kernels (window_entropy.cu, masked_quantile.cu, top_k.cu) share: typed
// loads of packed [N] tokens, a token's sequence by bisection of cu, and the order keys of radix
// selection (entropy_ops/backends/token_kernel.py gives the rules).
//
// Order keys: unsigned integers ordered like the values. float64 and int64 use 64 bits; float32,
// bf16 and fp16 use the float32 bits of the (exactly widened) value, whose low kLowBits<Code> are
// the same for every value of the dtype (16 for bf16, 13 for fp16), so selection stops above them.
// Everything is decided on bit patterns, never on float compares, so flush-to-zero or fast-math
// flags cannot change which entries are NaN or how denormals order. The key helpers are also host
// functions: tests/test_cuda_token_select_on_cpu.py runs them on the CPU.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "entropy_ops/dtype.h"

namespace entropy_ops {
namespace gpu {

constexpr int kInt64Code = 4;  // top_k scores may be int64 (Clip-Cov's random keys)
constexpr int kDigitBits = 8;
constexpr int kRadixBins = 1 << kDigitBits;

template <int Code>
constexpr int kKeyBits = (Code == kFloat64 || Code == kInt64Code) ? 64 : 32;
template <int Code>
constexpr int kLowBits = Code == kBFloat16 ? 16 : (Code == kFloat16 ? 13 : 0);

// x[i] widened to the accumulation type (double for float64, float otherwise).
template <int Code>
__host__ __device__ __forceinline__ auto load_acc(const void* x, int64_t i) {
  if constexpr (Code == kFloat64) {
    return static_cast<const double*>(x)[i];
  } else if constexpr (Code == kFloat32) {
    return static_cast<const float*>(x)[i];
  } else if constexpr (Code == kBFloat16) {
    return bf16_to_float(static_cast<const uint16_t*>(x)[i]);
  } else {
    return half_to_float(static_cast<const uint16_t*>(x)[i]);
  }
}

// The ascending order key of x[i] (-0.0 as +0.0); false for NaN, which has none.
template <int Code>
__host__ __device__ __forceinline__ bool order_key(const void* x, int64_t i, uint64_t* key) {
  if constexpr (Code == kInt64Code) {
    *key = static_cast<uint64_t>(static_cast<const int64_t*>(x)[i]) ^ (uint64_t(1) << 63);
    return true;
  } else if constexpr (Code == kFloat64) {
    uint64_t b = double_to_bits(static_cast<const double*>(x)[i]);
    const uint64_t mag = b & ~(uint64_t(1) << 63);
    if (mag > 0x7ff0000000000000ull) return false;
    if (mag == 0) b = 0;
    *key = b ^ ((b >> 63) ? ~uint64_t(0) : (uint64_t(1) << 63));
    return true;
  } else {
    uint32_t b = float_to_bits(load_acc<Code>(x, i));
    const uint32_t mag = b & 0x7fffffffu;
    if (mag > 0x7f800000u) return false;
    if (mag == 0) b = 0;
    *key = b ^ ((b >> 31) ? 0xffffffffu : 0x80000000u);
    return true;
  }
}

// The descending key: every key bit flipped.
template <int Code>
__host__ __device__ __forceinline__ uint64_t descending(uint64_t key) {
  return kKeyBits<Code> == 64 ? ~key : key ^ 0xffffffffull;
}

// key >> high for high in [1, 64] (a shift by the full width is undefined in C++).
__host__ __device__ __forceinline__ uint64_t key_above(uint64_t key, int high) { return (key >> (high - 1)) >> 1; }

// The value (as double) of the ascending float key whose bits above kLowBits are `prefix`; the
// low bits are those every value of the dtype has (0 for non-negative values, 1 for negative).
template <int Code>
__host__ __device__ inline double key_value(uint64_t prefix) {
  constexpr int kBits = kKeyBits<Code>;
  constexpr int kLow = kLowBits<Code>;
  const bool non_negative = (prefix >> (kBits - kLow - 1)) & 1;
  const uint64_t key = (prefix << kLow) | (non_negative ? 0 : (uint64_t(1) << kLow) - 1);
  if constexpr (kBits == 64) {
    return bits_to_double(non_negative ? key ^ (uint64_t(1) << 63) : ~key);
  } else {
    const uint32_t k = static_cast<uint32_t>(key);
    return double(bits_to_float(non_negative ? k ^ 0x80000000u : ~k));
  }
}

// (start, end) of the sequence holding token t: the largest s with cu[s] <= t (empty sequences
// own no token), by bisection keeping cu[lo] <= t < cu[hi]. O(log S) loads of a small, cached cu.
__device__ __forceinline__ void sequence_bounds(const int64_t* __restrict__ cu, int64_t n_seq,
                                                int64_t t, int64_t* start, int64_t* end) {
  int64_t lo = 0, hi = n_seq;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (__ldg(cu + mid) <= t) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  *start = __ldg(cu + lo);
  *end = __ldg(cu + lo + 1);
}

// One radix digit: the bin of `hist` (kRadixBins counts) where the running count passes `rank`;
// rank becomes the rank inside that bin and the digit is appended to prefix.
template <typename Count>
__host__ __device__ inline void pick_digit(const Count* hist, int width, int64_t* rank, uint64_t* prefix) {
  int64_t below = 0;
  int best = kRadixBins - 1;
  for (int d = 0; d < kRadixBins; ++d) {
    const int64_t c = static_cast<int64_t>(hist[d]);
    if (below + c > *rank) {
      best = d;
      break;
    }
    below += c;
  }
  if (best == kRadixBins - 1) {  // also where rank passes every count (no valid entry)
    below = 0;
    for (int d = 0; d < kRadixBins - 1; ++d) below += static_cast<int64_t>(hist[d]);
  }
  *rank -= below;
  *prefix = (*prefix << width) | uint64_t(best);
}

}  // namespace gpu
}  // namespace entropy_ops
