// Element groups of fp32/bf16/fp16 rows, widened to fp32: one 16-byte access per group when the
// launcher found the rows 16-byte aligned, else the same group with scalar accesses. A group is
// kVecWidth<Code> elements (4 fp32, 8 bf16/fp16); both paths hand a thread the same elements in
// the same order, so a row's bits do not depend on which path its launch took.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "entropy_ops/dtype.h"

namespace entropy_ops {
namespace gpu {

template <int Code>
struct Elem;

template <>
struct Elem<kFloat32> {
  using Storage = float;
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};

// Widening is exact (dtype.h / the hardware convert); narrowing rounds to nearest even.
template <>
struct Elem<kBFloat16> {
  using Storage = uint16_t;
  __device__ static float load(uint16_t v) { return bf16_to_float(v); }
  __device__ static uint16_t store(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};

template <>
struct Elem<kFloat16> {
  using Storage = uint16_t;
  __device__ static float load(uint16_t v) { return __half2float(__ushort_as_half(v)); }
  __device__ static uint16_t store(float v) { return __half_as_ushort(__float2half_rn(v)); }
};

template <int Code>
constexpr int kVecWidth = 16 / int(sizeof(typename Elem<Code>::Storage));

template <int Code>
using Group = float[kVecWidth<Code>];

template <int Code>
union Vec16 {
  uint4 raw;
  typename Elem<Code>::Storage elem[kVecWidth<Code>];
};

template <int Code>
__device__ inline float load_elem(const void* row, int64_t j) {
  return Elem<Code>::load(static_cast<const typename Elem<Code>::Storage*>(row)[j]);
}

// x = row[j, j + W) widened; kAligned: row + j is 16-byte aligned.
template <int Code, bool kAligned>
__device__ inline void load_group(const void* row, int j, Group<Code>& x) {
  using S = typename Elem<Code>::Storage;
  constexpr int W = kVecWidth<Code>;
  const S* p = static_cast<const S*>(row) + j;
  if (kAligned) {
    Vec16<Code> v;
    v.raw = *reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int e = 0; e < W; ++e) x[e] = Elem<Code>::load(v.elem[e]);
  } else {
#pragma unroll
    for (int e = 0; e < W; ++e) x[e] = Elem<Code>::load(p[e]);
  }
}

// x = row[j, j + n) widened, the lanes from n on set to `fill` (never read); 0 <= n <= W.
template <int Code>
__device__ inline void load_partial(const void* row, int j, int n, float fill, Group<Code>& x) {
  using S = typename Elem<Code>::Storage;
  const S* p = static_cast<const S*>(row) + j;
#pragma unroll
  for (int e = 0; e < kVecWidth<Code>; ++e) x[e] = e < n ? Elem<Code>::load(p[e]) : fill;
}

// row[j, j + W) = g, narrowed; kAligned: row + j is 16-byte aligned.
template <int Code, bool kAligned>
__device__ inline void store_group(void* row, int j, const Group<Code>& g) {
  using S = typename Elem<Code>::Storage;
  constexpr int W = kVecWidth<Code>;
  S* p = static_cast<S*>(row) + j;
  if (kAligned) {
    Vec16<Code> v;
#pragma unroll
    for (int e = 0; e < W; ++e) v.elem[e] = Elem<Code>::store(g[e]);
    *reinterpret_cast<uint4*>(p) = v.raw;
  } else {
#pragma unroll
    for (int e = 0; e < W; ++e) p[e] = Elem<Code>::store(g[e]);
  }
}

// row[j, j + n) = g[0, n), narrowed; 0 <= n <= W.
template <int Code>
__device__ inline void store_partial(void* row, int j, int n, const Group<Code>& g) {
  using S = typename Elem<Code>::Storage;
  S* p = static_cast<S*>(row) + j;
#pragma unroll
  for (int e = 0; e < kVecWidth<Code>; ++e) {
    if (e < n) p[e] = Elem<Code>::store(g[e]);
  }
}

}  // namespace gpu
}  // namespace entropy_ops
