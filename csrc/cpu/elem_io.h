// Scalar element loads and stores by dtype code, for the scalar kernels and the vector tails.
// Widening is exact; narrowing rounds to nearest even (dtype.h).
#pragma once

#include <stdint.h>

#include "entropy_ops/dtype.h"

namespace entropy_ops {
namespace cpu {

template <int Code>
struct ElemIO;

template <>
struct ElemIO<kFloat32> {
  using Acc = float;
  static float load(const void* p, int64_t j) { return static_cast<const float*>(p)[j]; }
  static void store(void* p, int64_t j, float v) { static_cast<float*>(p)[j] = v; }
};

template <>
struct ElemIO<kBFloat16> {
  using Acc = float;
  static float load(const void* p, int64_t j) {
    return bf16_to_float(static_cast<const uint16_t*>(p)[j]);
  }
  static void store(void* p, int64_t j, float v) {
    static_cast<uint16_t*>(p)[j] = float_to_bf16(v);
  }
};

template <>
struct ElemIO<kFloat16> {
  using Acc = float;
  static float load(const void* p, int64_t j) {
    return half_to_float(static_cast<const uint16_t*>(p)[j]);
  }
  static void store(void* p, int64_t j, float v) {
    static_cast<uint16_t*>(p)[j] = float_to_half(v);
  }
};

template <>
struct ElemIO<kFloat64> {
  using Acc = double;
  static double load(const void* p, int64_t j) { return static_cast<const double*>(p)[j]; }
  static void store(void* p, int64_t j, double v) { static_cast<double*>(p)[j] = v; }
};

}  // namespace cpu
}  // namespace entropy_ops
