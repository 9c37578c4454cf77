// window_entropy_fwd_cuda / window_entropy_bwd_cuda: the window mean of
// entropy_ops/backends/token_kernel.py, a thread per token (grid-stride, any N).
//
// Every output sums its own window directly, in index order (at most `window` terms), never as a
// difference of prefix sums: its rounding error is that of its own window, however long the packed
// batch. A token finds its sequence by bisection of cu (token_select.cuh). Backward is two
// launches: share_t = g_t / #valid_t, then the transposed window sum of share for valid tokens.
#include "cuda/launchers.h"
#include "cuda/token_select.cuh"
#include "cuda/util.cuh"

namespace entropy_ops {
namespace gpu {
namespace {

constexpr int kWindowThreads = 256;

struct WindowArgs {
  const uint8_t* mask;
  const int64_t* cu;
  int64_t n;
  int64_t n_seq;
  int64_t window;
  int64_t offset;
};

__device__ __forceinline__ bool valid_at(const uint8_t* mask, int64_t j) {
  return mask == nullptr || mask[j] != 0;
}

// Token t's window [lo, lo + length): [min(t + offset, end), min(t + offset + window, end)).
__device__ __forceinline__ void forward_window(const WindowArgs& a, int64_t t, int64_t* lo,
                                               int64_t* length) {
  int64_t start, end;
  sequence_bounds(a.cu, a.n_seq, t, &start, &end);
  *lo = t + min(end - t, a.offset);
  *length = min(end - *lo, a.window);
}

// out_t = sum of the valid x_j of t's window / their count (0 where none); with kShare, x is the
// upstream gradient and out_t = g_t / count (the share of each token of the window).
template <int Code, bool kShare, typename Acc>
__global__ void window_forward_kernel(const void* __restrict__ x, WindowArgs a, Acc* __restrict__ out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < a.n; t += stride) {
    int64_t lo, length;
    forward_window(a, t, &lo, &length);
    Acc total = 0;
    int64_t count = 0;
    for (int64_t j = lo; j < lo + length; ++j) {
      if (!valid_at(a.mask, j)) continue;  // a masked NaN is skipped, never multiplied by 0
      if (!kShare) total += static_cast<Acc>(load_acc<Code>(x, j));
      ++count;
    }
    const Acc num = kShare ? static_cast<Acc>(load_acc<Code>(x, t)) : total;
    out[t] = count > 0 ? num / static_cast<Acc>(count) : Acc(0);
  }
}

// grad_j = [valid j] sum of share_t over t in [max(s_j, j - offset - window + 1), max(s_j, j - offset + 1)).
template <typename Acc>
__global__ void window_transpose_kernel(const Acc* __restrict__ share, WindowArgs a, Acc* __restrict__ out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < a.n; j += stride) {
    int64_t start, end;
    sequence_bounds(a.cu, a.n_seq, j, &start, &end);
    const int64_t hi = start + max(j - start + 1 - a.offset, int64_t(0));
    const int64_t lo = hi - min(hi - start, a.window);
    Acc total = 0;
    for (int64_t t = lo; t < hi; ++t) total += share[t];
    out[j] = valid_at(a.mask, j) ? total : Acc(0);
  }
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kWindowThreads - 1) / kWindowThreads;
  return int(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
}

template <int Code>
cudaError_t forward(const void* x, const WindowArgs& a, void* out, cudaStream_t stream) {
  using Acc = decltype(load_acc<Code>(nullptr, 0));
  window_forward_kernel<Code, false, Acc>
      <<<grid_for(a.n), kWindowThreads, 0, stream>>>(x, a, static_cast<Acc*>(out));
  return cudaGetLastError();
}

template <int Code>
cudaError_t backward(const void* grad, const WindowArgs& a, void* share, void* out, cudaStream_t stream) {
  using Acc = decltype(load_acc<Code>(nullptr, 0));
  window_forward_kernel<Code, true, Acc>
      <<<grid_for(a.n), kWindowThreads, 0, stream>>>(grad, a, static_cast<Acc*>(share));
  EO_CUDA_CHECK(cudaGetLastError());
  window_transpose_kernel<Acc>
      <<<grid_for(a.n), kWindowThreads, 0, stream>>>(static_cast<const Acc*>(share), a, static_cast<Acc*>(out));
  return cudaGetLastError();
}

}  // namespace
}  // namespace gpu

cudaError_t window_entropy_fwd_cuda(const void* x, int dtype, const uint8_t* mask, const int64_t* cu,
                                    int64_t n, int64_t n_seq, int64_t window, int64_t offset,
                                    void* out, int device, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (window < 1 || offset < 0 || n_seq < 1) return cudaErrorInvalidValue;
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  const gpu::WindowArgs a{mask, cu, n, n_seq, window < n ? window : n, offset < n ? offset : n};
  switch (dtype) {
    case kFloat32: return gpu::forward<kFloat32>(x, a, out, stream);
    case kBFloat16: return gpu::forward<kBFloat16>(x, a, out, stream);
    case kFloat16: return gpu::forward<kFloat16>(x, a, out, stream);
    case kFloat64: return gpu::forward<kFloat64>(x, a, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t window_entropy_bwd_cuda(const void* grad, int dtype, const uint8_t* mask, const int64_t* cu,
                                    int64_t n, int64_t n_seq, int64_t window, int64_t offset,
                                    void* share, void* out, int device, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (window < 1 || offset < 0 || n_seq < 1) return cudaErrorInvalidValue;
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  const gpu::WindowArgs a{mask, cu, n, n_seq, window < n ? window : n, offset < n ? offset : n};
  switch (dtype) {
    case kFloat32: return gpu::backward<kFloat32>(grad, a, share, out, stream);
    case kFloat64: return gpu::backward<kFloat64>(grad, a, share, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace entropy_ops
