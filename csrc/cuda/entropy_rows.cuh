// What the entropy forward and backward kernels share: the row arguments, the split of a row into
// chunks, and the reduction of a slice of a row to one online-softmax state in a fixed order.
//
// Determinism and batch invariance (SPEC §2): a thread folds its element groups in increasing
// order (Exp2Accumulator, online_softmax.h); a warp merges its lanes by an xor butterfly; a block
// merges its warps in warp order; a row's chunks are merged in chunk order. Every step depends on
// V and the row only, never on N or the row's position.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/vec_load.cuh"
#include "entropy_ops/online_softmax.h"

namespace entropy_ops {
namespace gpu {

constexpr int kWarpSize = 32;
// Rows with V <= kWarpRowMaxVocab take a warp each (kRowsPerBlock rows per block): at most
// 16 groups per lane, and no block-wide barrier for a row that a warp reads in a few loads.
constexpr int64_t kWarpRowMaxVocab = 4096;
constexpr int kRowsPerBlock = 8;
constexpr int kWarpKernelThreads = kRowsPerBlock * kWarpSize;
// Longer rows take a block of kBlockThreads per chunk of at most ~kChunkTarget elements.
constexpr int kBlockThreads = 256;
constexpr int64_t kChunkTarget = 16384;
constexpr int64_t kMaxChunks = 65535;  // gridDim.y
// Groups loaded before any is folded: 2 x 16 bytes in flight per thread.
constexpr int kUnroll = 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kExp2Floor = kExp2FloorF;  // online_softmax.h
constexpr float kExpFloor = -87.0f;

// The validated rows of the torch-free ABI (csrc/README.md), accumulation in fp32.
struct RowArgs {
  const void* logits;
  int64_t n_rows;
  int64_t vocab;
  int64_t row_stride;  // elements
  const float* temperature;  // n_rows values, or null: temperature_scalar
  double temperature_scalar;  // the Python float itself; kernels scale by float(1/T)
  const void* labels;  // n_rows int64 (int32 when labels_int32), or null
  bool labels_int32;
  int64_t ignore_index;
  const uint8_t* mask;  // n_rows bytes, or null: every row active
};

// The split of every row of length `vocab` into `count` chunks of `size` elements (the last one
// shorter): a function of V alone. `size` is a multiple of 8 elements, so every chunk starts
// 16-byte aligned in an aligned row. Rows up to kChunkTarget are one chunk.
struct ChunkPlan {
  int64_t size;
  int64_t count;
};

inline ChunkPlan chunk_plan(int64_t vocab) {
  if (vocab <= kChunkTarget) return {vocab, 1};
  int64_t count = (vocab + kChunkTarget - 1) / kChunkTarget;
  if (count > kMaxChunks) count = kMaxChunks;
  const int64_t size = ((vocab + count - 1) / count + 7) / 8 * 8;
  return {size, (vocab + size - 1) / size};
}

// Partial states of chunk c of row i live at part[(3 c + field) n_rows + i]: the combine reads
// them coalesced across rows.
__device__ inline int64_t part_index(int64_t chunk, int field, int64_t n_rows, int64_t row) {
  return (chunk * 3 + field) * n_rows + row;
}

__device__ inline bool row_active(const RowArgs& r, int64_t i) {
  return r.mask == nullptr || r.mask[i] != 0;
}

__device__ inline float inv_temperature(const RowArgs& r, int64_t i) {
  return 1.0f / (r.temperature != nullptr ? r.temperature[i] : static_cast<float>(r.temperature_scalar));
}

// T as the reference takes it: the per-row fp32 value, or the Python float itself.
__device__ inline double temperature_at(const RowArgs& r, int64_t i) {
  return r.temperature != nullptr ? static_cast<double>(r.temperature[i]) : r.temperature_scalar;
}

__device__ inline int64_t label_at(const RowArgs& r, int64_t i) {
  return r.labels_int32 ? int64_t(static_cast<const int32_t*>(r.labels)[i])
                        : static_cast<const int64_t*>(r.labels)[i];
}

template <int Code>
__device__ inline const void* row_ptr(const void* base, int64_t i, int64_t stride) {
  return static_cast<const typename Elem<Code>::Storage*>(base) + i * stride;
}

template <int Code>
__device__ inline void* row_ptr(void* base, int64_t i, int64_t stride) {
  return static_cast<typename Elem<Code>::Storage*>(base) + i * stride;
}

// The state of slice[0, len) as seen by thread t of n: groups t, t + n, t + 2n, ... folded in
// that order; the last group may be partial (padded with -inf, which adds nothing).
template <int Code, bool kAligned>
__device__ inline OnlineSoftmax<float> thread_state(const void* slice, int len, int t, int n,
                                                    float s) {
  constexpr int W = kVecWidth<Code>;
  const float k = kLog2e * s;
  const int full = len / W;
  const int groups = (len + W - 1) / W;
  Exp2Accumulator<float> acc = Exp2Accumulator<float>::empty();
  int g = t;
  for (; g + (kUnroll - 1) * n < full; g += kUnroll * n) {
    float x[kUnroll][W];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) load_group<Code, kAligned>(slice, (g + u * n) * W, x[u]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc.add(x[u], k, kExp2Floor);
  }
  for (; g < groups; g += n) {
    float x[W];
    if (g < full) {
      load_group<Code, kAligned>(slice, g * W, x);
    } else {
      load_partial<Code>(slice, g * W, len - g * W, -INFINITY, x);
    }
    acc.add(x, k, kExp2Floor);
  }
  return acc.state(s);
}

// Butterfly over the warp; merge is commutative, so every lane ends with the same bits, and
// lane 0's are broadcast anyway so that callers never depend on it.
__device__ inline OnlineSoftmax<float> warp_merge(OnlineSoftmax<float> st, float s) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const OnlineSoftmax<float> other = {__shfl_xor_sync(0xffffffffu, st.max, offset),
                                        __shfl_xor_sync(0xffffffffu, st.sum_exp, offset),
                                        __shfl_xor_sync(0xffffffffu, st.sum_exp_z, offset)};
    st = merge(st, other, s);
  }
  return {__shfl_sync(0xffffffffu, st.max, 0), __shfl_sync(0xffffffffu, st.sum_exp, 0),
          __shfl_sync(0xffffffffu, st.sum_exp_z, 0)};
}

// The merged state of the whole block, returned to every thread: warps merged in warp order.
// Every thread of the block must call it (it holds two barriers); at most once per kernel.
template <int kThreads>
__device__ inline OnlineSoftmax<float> block_merge(OnlineSoftmax<float> st, float s) {
  constexpr int kWarps = kThreads / kWarpSize;
  __shared__ OnlineSoftmax<float> warp_states[kWarps];
  __shared__ OnlineSoftmax<float> total;
  st = warp_merge(st, s);
  if (threadIdx.x % kWarpSize == 0) warp_states[threadIdx.x / kWarpSize] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    OnlineSoftmax<float> acc = warp_states[0];
    for (int w = 1; w < kWarps; ++w) acc = merge(acc, warp_states[w], s);
    total = acc;
  }
  __syncthreads();
  return total;
}

// Row i's partial states merged in chunk order.
__device__ inline OnlineSoftmax<float> merge_parts(const float* part, int64_t n_chunks,
                                                   int64_t n_rows, int64_t i, float s) {
  OnlineSoftmax<float> st = OnlineSoftmax<float>::empty();
  for (int64_t c = 0; c < n_chunks; ++c) {
    const OnlineSoftmax<float> p = {part[part_index(c, 0, n_rows, i)],
                                    part[part_index(c, 1, n_rows, i)],
                                    part[part_index(c, 2, n_rows, i)]};
    st = merge(st, p, s);
  }
  return st;
}

// Calls f(Tag) with Tag::kCode / Tag::kAligned fixed at compile time; fp32, bf16, fp16 only.
template <int Code, bool Aligned>
struct KernelTag {
  static constexpr int kCode = Code;
  static constexpr bool kAligned = Aligned;
};

template <typename F>
cudaError_t dispatch_dtype(int dtype, bool aligned, F&& f) {
  switch (dtype) {
    case kFloat32:
      return aligned ? f(KernelTag<kFloat32, true>{}) : f(KernelTag<kFloat32, false>{});
    case kBFloat16:
      return aligned ? f(KernelTag<kBFloat16, true>{}) : f(KernelTag<kBFloat16, false>{});
    case kFloat16:
      return aligned ? f(KernelTag<kFloat16, true>{}) : f(KernelTag<kFloat16, false>{});
    default:
      return cudaErrorInvalidValue;
  }
}

inline int64_t elem_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

// Whether every row start of (ptr, stride) is 16-byte aligned.
inline bool rows_aligned(const void* ptr, int64_t stride, int dtype) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && (stride * elem_size(dtype)) % 16 == 0;
}

constexpr int64_t kMaxGridX = 2147483647;

// The launchers' shared argument checks: a dtype the kernels handle (fp64 is routed to the torch
// backend in Python) and a workspace as large as entropy_fwd_workspace_cuda asks for.
inline bool launchable(int dtype, int64_t workspace_size, int64_t workspace_needed) {
  return (dtype == kFloat32 || dtype == kBFloat16 || dtype == kFloat16) &&
         workspace_size >= workspace_needed;
}

inline RowArgs make_row_args(const void* logits, int64_t n_rows, int64_t vocab,
                             int64_t row_stride, const float* temperature,
                             double temperature_scalar, const void* labels, bool labels_int32,
                             int64_t ignore_index, const uint8_t* mask) {
  return {logits, n_rows, vocab, row_stride, temperature, temperature_scalar,
          labels, labels_int32, ignore_index, mask};
}

}  // namespace gpu
}  // namespace entropy_ops
