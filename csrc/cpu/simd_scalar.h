// The vector vocabulary of the selective row bodies as one plain lane: the "scalar" ISA for
// fp32/bf16/fp16 rows (Acc = float) and fp64 rows on every ISA (Acc = double), with libm's exp.
#pragma once

#include <math.h>
#include <stdint.h>

#include "cpu/elem_io.h"
#include "cpu/entropy_kernels.h"

namespace entropy_ops {
namespace cpu {

template <typename T>
struct SimdScalar {
  using Acc = T;
  using V = T;
  using M = bool;
  static constexpr int W = 1;
  static constexpr T kFloor = sizeof(T) == sizeof(float) ? T(kExpFloorF) : T(kExpFloorD);

  static V set1(T a) { return a; }
  static V zero() { return T(0); }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V max(V a, V b) { return a > b ? a : b; }
  static V min(V a, V b) { return a < b ? a : b; }
  static V exp(V d) { return eo_exp(d); }
  static V loadu(const T* p) { return *p; }
  static void storeu(T* p, V v) { *p = v; }
  static T first(V v) { return v; }
  static T hsum(V v) { return v; }
  static T hmax(V v) { return v; }
  static T hmin(V v) { return v; }

  static M ge(V a, V b) { return a >= b; }
  static M gt(V a, V b) { return a > b; }
  static M lt(V a, V b) { return a < b; }
  static M eq(V a, V b) { return a == b; }
  static M is_nan(V a) { return a != a; }
  static M none() { return false; }
  static M mand(M a, M b) { return a && b; }
  static M mor(M a, M b) { return a || b; }
  static bool any(M m) { return m; }
  static int count(M m) { return m ? 1 : 0; }
  static uint32_t bits(M m) { return m ? 1u : 0u; }
  static M first_lanes(int k) { return k > 0; }
  static V maskz(M m, V a) { return m ? a : T(0); }  // a select: a NaN unselected lane gives 0
  static V blend(M m, V a, V b) { return m ? a : b; }
  static V mask_add(V acc, M m, V a) { return m ? acc + a : acc; }
  static V mask_min(V acc, M m, V a) { return m && a < acc ? a : acc; }
  static V mask_max(V acc, M m, V a) { return m && a > acc ? a : acc; }

  static int compress_store(T* out, M m, V v) {
    *out = v;
    return m ? 1 : 0;
  }
  static void store_bool(uint8_t* out, M m) { *out = m ? 1 : 0; }

  template <int Code>
  static V load(const void* p, int64_t j) {
    return static_cast<T>(ElemIO<Code>::load(p, j));
  }
  template <int Code>
  static void store(void* p, int64_t j, V v) {
    ElemIO<Code>::store(p, j, v);
  }
};

}  // namespace cpu
}  // namespace entropy_ops
