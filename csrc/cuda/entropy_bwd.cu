// entropy_bwd_cuda: grad_j = (gH (-p_j (log p_j + H)) + glogp (1[j=y] - p_j)) / T, written once in
// the logits' dtype, one read of the logits. Mirrors entropy_bwd_cpu (csrc/cpu/entropy_cpu.cpp and
// the scalar row kernel): log p_j = (x_j - row_max) s - log_norm from the forward's saved state.
//
//   V <= 4096   entropy_bwd_warp_kernel: a warp per row.
//   V >  4096   entropy_bwd_chunk_kernel: a block per (row, chunk), the forward's chunk plan.
//
// In place (grad == logits): a thread reads each of its elements before it writes it, and no
// thread reads another's.
#include "cuda/entropy_rows.cuh"
#include "cuda/launchers.h"
#include "cuda/util.cuh"

namespace entropy_ops {
namespace gpu {
namespace {

struct BwdIn {
  const float* row_max;
  const float* log_norm;
  const float* entropy;
  const float* grad_entropy;  // null: no entropy term
  const float* grad_logp;     // null: no log-prob term
  void* grad;
  int64_t grad_row_stride;
};

// One row's constants, as entropy_cpu.cpp's bwd_rows sets BwdRowArgs.
struct BwdRow {
  float s;
  float shift;
  float log_sum;
  float entropy;
  float grad_entropy;
  float grad_logp;
  int64_t label;  // -1: no label term (none given, ignored, or out of range)
};

__device__ inline BwdRow row_setup(const RowArgs& r, const BwdIn& b, int64_t i) {
  BwdRow a;
  a.s = inv_temperature(r, i);
  a.shift = b.row_max[i];
  a.log_sum = b.log_norm[i];
  a.entropy = b.entropy[i];
  a.grad_entropy = b.grad_entropy != nullptr ? b.grad_entropy[i] : 0.0f;
  a.grad_logp = 0.0f;
  a.label = -1;
  if (b.grad_logp != nullptr && r.labels != nullptr) {
    const int64_t y = label_at(r, i);
    if (y != r.ignore_index) {
      a.grad_logp = b.grad_logp[i];
      // An out-of-range label (unchecked input) keeps the -p_j part and drops 1[j=y].
      a.label = (y >= 0 && y < r.vocab) ? y : -1;
    }
  }
  return a;
}

// The scalar row kernel's element (entropy_kernels_scalar.cpp): log p by one fma (the exact
// product minus c, rounded once); p_j == 0 terms stay exactly 0 (never 0 * -inf); a zero upstream
// gradient skips its term (a select, not a multiplication).
__device__ inline float grad_elem(float x, const BwdRow& a, bool is_label) {
  const float lp = fmaf(x - a.shift, a.s, -a.log_sum);
  float g = 0.0f;
  if (!(lp < kExpFloor)) {  // written so that a NaN lp is kept
    const float p = eo_exp(lp);
    if (a.grad_entropy != 0.0f) g -= a.grad_entropy * (p * (lp + a.entropy));
    if (a.grad_logp != 0.0f) g -= a.grad_logp * p;
  }
  if (a.grad_logp != 0.0f && is_label) g += a.grad_logp;
  return g * a.s;
}

template <int Code>
__device__ inline void grad_group(const Group<Code>& x, Group<Code>& g, int j, int label,
                                  const BwdRow& a) {
#pragma unroll
  for (int e = 0; e < kVecWidth<Code>; ++e) g[e] = grad_elem(x[e], a, j + e == label);
}

// grad[0, len) of one slice, thread t of n; the same groups per thread as thread_state.
// `label` is the label's index in the slice, or -1.
template <int Code, bool kAligned>
__device__ inline void write_grad(const void* x, void* grad, int len, int t, int n,
                                  const BwdRow& a, int label) {
  constexpr int W = kVecWidth<Code>;
  const int full = len / W;
  const int groups = (len + W - 1) / W;
  int g = t;
  for (; g + (kUnroll - 1) * n < full; g += kUnroll * n) {
    float v[kUnroll][W];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) load_group<Code, kAligned>(x, (g + u * n) * W, v[u]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float out[W];
      grad_group<Code>(v[u], out, (g + u * n) * W, label, a);
      store_group<Code, kAligned>(grad, (g + u * n) * W, out);
    }
  }
  for (; g < groups; g += n) {
    float v[W], out[W];
    if (g < full) {
      load_group<Code, kAligned>(x, g * W, v);
      grad_group<Code>(v, out, g * W, label, a);
      store_group<Code, kAligned>(grad, g * W, out);
    } else {
      load_partial<Code>(x, g * W, len - g * W, 0.0f, v);
      grad_group<Code>(v, out, g * W, label, a);
      store_partial<Code>(grad, g * W, len - g * W, out);
    }
  }
}

// Masked rows and rows without an upstream gradient: zeros (+0.0 bits), nothing read.
template <int Code, bool kAligned>
__device__ inline void write_zeros(void* grad, int len, int t, int n) {
  constexpr int W = kVecWidth<Code>;
  float zero[W];
#pragma unroll
  for (int e = 0; e < W; ++e) zero[e] = 0.0f;
  const int full = len / W;
  const int groups = (len + W - 1) / W;
  for (int g = t; g < groups; g += n) {
    if (g < full) {
      store_group<Code, kAligned>(grad, g * W, zero);
    } else {
      store_partial<Code>(grad, g * W, len - g * W, zero);
    }
  }
}

__device__ inline bool has_gradient(const BwdRow& a) {
  return a.grad_entropy != 0.0f || a.grad_logp != 0.0f;
}

template <int Code, bool kAligned>
__global__ void __launch_bounds__(kWarpKernelThreads)
entropy_bwd_warp_kernel(RowArgs r, BwdIn b) {
  const int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (i >= r.n_rows) return;
  void* grad = row_ptr<Code>(b.grad, i, b.grad_row_stride);
  const int len = int(r.vocab);
  if (!row_active(r, i)) {
    write_zeros<Code, kAligned>(grad, len, lane, kWarpSize);
    return;
  }
  const BwdRow a = row_setup(r, b, i);
  if (!has_gradient(a)) {
    write_zeros<Code, kAligned>(grad, len, lane, kWarpSize);
    return;
  }
  const void* x = row_ptr<Code>(r.logits, i, r.row_stride);
  write_grad<Code, kAligned>(x, grad, len, lane, kWarpSize, a, int(a.label));
}

template <int Code, bool kAligned>
__global__ void __launch_bounds__(kBlockThreads)
entropy_bwd_chunk_kernel(RowArgs r, BwdIn b, ChunkPlan plan) {
  const int64_t i = blockIdx.x;
  const int64_t start = int64_t(blockIdx.y) * plan.size;
  const int64_t left = r.vocab - start;
  const int len = int(left < plan.size ? left : plan.size);
  void* grad = static_cast<typename Elem<Code>::Storage*>(
                   row_ptr<Code>(b.grad, i, b.grad_row_stride)) + start;
  if (!row_active(r, i)) {
    write_zeros<Code, kAligned>(grad, len, threadIdx.x, kBlockThreads);
    return;
  }
  const BwdRow a = row_setup(r, b, i);
  if (!has_gradient(a)) {
    write_zeros<Code, kAligned>(grad, len, threadIdx.x, kBlockThreads);
    return;
  }
  const void* row = row_ptr<Code>(r.logits, i, r.row_stride);
  const int label = (a.label >= start && a.label < start + len) ? int(a.label - start) : -1;
  const void* x = static_cast<const typename Elem<Code>::Storage*>(row) + start;
  write_grad<Code, kAligned>(x, grad, len, threadIdx.x, kBlockThreads, a, label);
}

}  // namespace
}  // namespace gpu

cudaError_t entropy_bwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                             int64_t row_stride, const float* temperature,
                             double temperature_scalar, const void* labels, bool labels_int32,
                             int64_t ignore_index, const uint8_t* mask, const float* row_max,
                             const float* log_norm, const float* entropy,
                             const float* grad_entropy, const float* grad_logp, void* grad_logits,
                             int64_t grad_row_stride, int device, cudaStream_t stream) {
  using namespace gpu;
  if (n_rows <= 0) return cudaSuccess;
  if (!launchable(dtype, 0, 0)) return cudaErrorInvalidValue;
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  const RowArgs r = make_row_args(logits, n_rows, vocab, row_stride, temperature,
                                  temperature_scalar, labels, labels_int32, ignore_index, mask);
  const BwdIn b = {row_max, log_norm, entropy, grad_entropy, grad_logp, grad_logits,
                   grad_row_stride};
  // One path for loads and stores: in place, both are the same rows.
  const bool aligned = rows_aligned(logits, row_stride, dtype) &&
                       rows_aligned(grad_logits, grad_row_stride, dtype);

  if (vocab <= kWarpRowMaxVocab) {
    const int64_t blocks = (n_rows + kRowsPerBlock - 1) / kRowsPerBlock;
    if (blocks > kMaxGridX) return cudaErrorInvalidConfiguration;
    return dispatch_dtype(dtype, aligned, [&](auto tag) {
      using Tag = decltype(tag);
      entropy_bwd_warp_kernel<Tag::kCode, Tag::kAligned>
          <<<unsigned(blocks), kWarpKernelThreads, 0, stream>>>(r, b);
      return cudaGetLastError();
    });
  }

  if (n_rows > kMaxGridX) return cudaErrorInvalidConfiguration;
  const ChunkPlan plan = chunk_plan(vocab);
  const dim3 grid(unsigned(n_rows), unsigned(plan.count));
  return dispatch_dtype(dtype, aligned, [&](auto tag) {
    using Tag = decltype(tag);
    entropy_bwd_chunk_kernel<Tag::kCode, Tag::kAligned><<<grid, kBlockThreads, 0, stream>>>(
        r, b, plan);
    return cudaGetLastError();
  });
}

}  // namespace entropy_ops
