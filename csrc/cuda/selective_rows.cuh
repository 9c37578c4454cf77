// What the block-per-row kernels (top_p.cu, min_p.cu, token_stats.cu) share: the per-element
// e_j of the selective ops, a thread's walk over its element groups, block-wide reductions and
// scans, the row max pass and the grid-stride row loop.
//
// Layout: one block of kSelThreads per row, rows looped over a grid-stride (any N). Thread t
// owns the element groups t, t + kSelThreads, t + 2 kSelThreads, ... (kVecWidth elements each,
// vec_load.cuh), visited in increasing order, so group g of tile g / kSelThreads is in index
// order within the row. Every reduction runs in a fixed order (xor butterfly in a warp, then
// warps in warp order; integer sums and min/max in any order, being exact): a row's bits depend
// on its values, V, dtype and arch only (batch invariance, SPEC §2).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/entropy_rows.cuh"
#include "cuda/util.cuh"
#include "cuda/vec_load.cuh"
#include "entropy_ops/nucleus.h"
#include "entropy_ops/online_softmax.h"

namespace entropy_ops {
namespace gpu {

constexpr int kSelThreads = 256;
constexpr int kSelWarps = kSelThreads / kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;

// e_j = exp((x_j - max) / T) as 2^((x_j - max) k), k = log2(e) / T, with the Exp2Accumulator's
// floor (terms below 2^-125.5 are exactly 0, -inf logits included). The forward, backward and
// mask kernels all call this one function with the same (x, row_max, k), and the _rn intrinsics
// forbid any fma contraction, so the three compute the same bits (kernel.py's contract).
__device__ __forceinline__ float select_e(float x, float row_max, float k) {
  const float t = __fmul_rn(__fsub_rn(x, row_max), k);
  return t < kExp2Floor ? 0.0f : exp2f(t);
}

__device__ __forceinline__ float select_k(float s) { return __fmul_rn(kLog2e, s); }

// f(x, j, n) for each group of row[0, len) that this thread owns, in increasing order: x holds
// the group widened to fp32, j its first index, n <= W its valid elements (x[n..W) are -inf).
// Two loads in flight per thread, as thread_state (entropy_rows.cuh).
template <int Code, bool kAligned, typename F>
__device__ inline void for_each_group(const void* row, int len, F&& f) {
  constexpr int W = kVecWidth<Code>;
  constexpr int n = kSelThreads;
  const int full = len / W;
  const int groups = (len + W - 1) / W;
  int g = threadIdx.x;
  for (; g + n < full; g += 2 * n) {
    float a[W], b[W];
    load_group<Code, kAligned>(row, g * W, a);
    load_group<Code, kAligned>(row, (g + n) * W, b);
    f(a, g * W, W);
    f(b, (g + n) * W, W);
  }
  for (; g < groups; g += n) {
    float a[W];
    if (g < full) {
      load_group<Code, kAligned>(row, g * W, a);
    } else {
      load_partial<Code>(row, g * W, len - g * W, -INFINITY, a);
    }
    f(a, g * W, g < full ? W : len - g * W);
  }
}

// out[0, len) = f(x) group by group over the same groups as for_each_group: f(x, j, n, g) fills
// g[0, n). In place (out == row) is safe: a thread reads each of its elements before writing it.
template <int Code, bool kAligned, typename F>
__device__ inline void map_groups(const void* row, void* out, int len, F&& f) {
  constexpr int W = kVecWidth<Code>;
  const int full = len / W;
  const int groups = (len + W - 1) / W;
  for (int g = threadIdx.x; g < groups; g += kSelThreads) {
    float x[W], y[W];
    if (g < full) {
      load_group<Code, kAligned>(row, g * W, x);
      f(x, g * W, W, y);
      store_group<Code, kAligned>(out, g * W, y);
    } else {
      const int n = len - g * W;
      load_partial<Code>(row, g * W, n, -INFINITY, x);
      f(x, g * W, n, y);
      store_partial<Code>(out, g * W, n, y);
    }
  }
}

// out[0, len) = value, nothing read (masked rows, rows without an upstream gradient).
template <int Code, bool kAligned>
__device__ inline void fill_row(void* out, int len, float value) {
  constexpr int W = kVecWidth<Code>;
  float v[W];
#pragma unroll
  for (int e = 0; e < W; ++e) v[e] = value;
  const int full = len / W;
  const int groups = (len + W - 1) / W;
  for (int g = threadIdx.x; g < groups; g += kSelThreads) {
    if (g < full) {
      store_group<Code, kAligned>(out, g * W, v);
    } else {
      store_partial<Code>(out, g * W, len - g * W, v);
    }
  }
}

// ---- block-wide reductions: every thread gets the same bits; each holds two barriers, so every
// thread of the block calls it, and back-to-back calls never race on the shared slots. ----------

// v[k] summed over the block: a butterfly per warp (a + b and b + a are the same bits, so every
// lane agrees), then the warp sums in warp order.
template <typename T, int K>
__device__ inline void block_sum(T (&v)[K]) {
  __shared__ T part[K][kSelWarps];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int off = kWarpSize / 2; off > 0; off /= 2) v[k] += __shfl_xor_sync(kFullMask, v[k], off);
    if (lane == 0) part[k][warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    T acc = part[k][0];
    for (int w = 1; w < kSelWarps; ++w) acc += part[k][w];
    v[k] = acc;
  }
  __syncthreads();
}

// Max over the block of a float (fmaxf: NaN ignored) or an int.
template <typename T>
__device__ inline T block_max(T v) {
  __shared__ T part[kSelWarps];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off /= 2) {
    const T o = __shfl_xor_sync(kFullMask, v, off);
    v = o > v ? o : v;
  }
  if (lane == 0) part[warp] = v;
  __syncthreads();
  T acc = part[0];
  for (int w = 1; w < kSelWarps; ++w) acc = part[w] > acc ? part[w] : acc;
  __syncthreads();
  return acc;
}

// Exclusive prefix sum of an integer over the threads in thread order; *total = the block sum.
template <typename T>
__device__ inline T block_exclusive_scan(T v, T* total) {
  __shared__ T part[kSelWarps];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  T incl = v;
#pragma unroll
  for (int off = 1; off < kWarpSize; off *= 2) {
    const T o = __shfl_up_sync(kFullMask, incl, off);
    if (lane >= off) incl += o;
  }
  if (lane == kWarpSize - 1) part[warp] = incl;
  __syncthreads();
  T base = 0, sum = 0;
  for (int w = 0; w < kSelWarps; ++w) {
    if (w < warp) base += part[w];
    sum += part[w];
  }
  __syncthreads();
  *total = sum;
  return base + incl - v;
}

// ---- rows -----------------------------------------------------------------------------------

// The raw max of a row (what the selective ops shift by) and whether the row has no distribution:
// NaN or +inf anywhere, or all -inf (kernel.py: NaN outputs, an all-False mask).
struct RowMax {
  float value;  // max_j x_j; NaN when the row holds a NaN
  bool bad;
};

template <int Code, bool kAligned>
__device__ inline RowMax row_max_pass(const void* row, int len) {
  float m = -INFINITY;
  bool nan = false;
  for_each_group<Code, kAligned>(row, len, [&](const auto& x, int, int) {
#pragma unroll
    for (int e = 0; e < kVecWidth<Code>; ++e) {  // the -inf padding changes nothing
      m = fmaxf(m, x[e]);
      nan |= x[e] != x[e];
    }
  });
  m = block_max(m);
  nan = __syncthreads_or(nan) != 0;
  if (nan) return {quiet_nan<float>(), true};
  return {m, !(m > -INFINITY && m < INFINITY)};
}

// Rows i = blockIdx.x, blockIdx.x + gridDim.x, ...: a bounded grid covers any N. The barrier at
// the top keeps the next row's first shared-memory writes behind the previous row's last reads.
template <typename F>
__device__ inline void for_each_row(int64_t n_rows, F&& f) {
  for (int64_t i = blockIdx.x; i < n_rows; i += gridDim.x) {
    __syncthreads();
    f(i);
  }
}

inline unsigned row_grid(int64_t n_rows) {
  return unsigned(n_rows < kMaxGridX ? n_rows : kMaxGridX);
}

// One launch over the rows: f(tag, grid, block, stream) launches the kernel of the dtype / path
// that `tag` names (dispatch_dtype); returns the launch's error.
template <typename F>
cudaError_t launch_rows(int dtype, bool aligned, int64_t n_rows, cudaStream_t stream, F&& f) {
  return dispatch_dtype(dtype, aligned, [&](auto tag) {
    f(tag, dim3(row_grid(n_rows)), dim3(kSelThreads), stream);
    return cudaGetLastError();
  });
}

// The selective launchers' shared preamble: no rows launch nothing; a dtype other than 0..2, or
// `ok` false (the caller's own argument check), is cudaErrorInvalidValue; then, on `device`,
// launch(tag, r, grid, block, stream) with the row arguments and the dtype/alignment tag
// (out_aligned: whether the output rows are aligned too).
template <typename F>
cudaError_t launch_selective(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                             int64_t row_stride, const float* temperature,
                             double temperature_scalar, const void* labels, bool labels_int32,
                             int64_t ignore_index, const uint8_t* mask, bool ok, bool out_aligned,
                             int device, cudaStream_t stream, F&& launch) {
  if (n_rows <= 0) return cudaSuccess;
  if (!launchable(dtype, 0, 0) || !ok) return cudaErrorInvalidValue;
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  const RowArgs r = make_row_args(logits, n_rows, vocab, row_stride, temperature,
                                  temperature_scalar, labels, labels_int32, ignore_index, mask);
  const bool aligned = rows_aligned(logits, row_stride, dtype) && out_aligned;
  return launch_rows(dtype, aligned, n_rows, stream,
                     [&](auto tag, dim3 grid, dim3 block, cudaStream_t st) {
    launch(tag, r, grid, block, st);
  });
}

}  // namespace gpu
}  // namespace entropy_ops
