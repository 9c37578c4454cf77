// top_k_mark_cuda: the last step of the Clip-Cov / KL-Cov top-k selection
// (entropy_ops/backends/token_kernel.py). radix_select_cuda (masked_quantile.cu) has found the
// k-th largest eligible score as a descending order key (its bits above kLowBits) with k on the
// device; this kernel flags every eligible entry strictly above it and every tie, and Python keeps
// the first residual + 1 ties in index order by a prefix count.
#include "cuda/launchers.h"
#include "cuda/token_select.cuh"
#include "cuda/util.cuh"

namespace entropy_ops {
namespace gpu {
namespace {

constexpr int kMarkThreads = 256;

template <int Code>
__global__ void top_k_mark_kernel(const void* __restrict__ scores, const uint8_t* __restrict__ eligible,
                                  int64_t n, const int64_t* __restrict__ threshold,
                                  uint8_t* __restrict__ above, uint8_t* __restrict__ tie) {
  const uint64_t cut = static_cast<uint64_t>(*threshold);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    uint64_t key = 0;
    const bool ok = eligible[i] != 0 && order_key<Code>(scores, i, &key);
    key = descending<Code>(key) >> kLowBits<Code>;
    above[i] = ok && key < cut;
    tie[i] = ok && key == cut;
  }
}

template <int Code>
cudaError_t mark(const void* scores, const uint8_t* eligible, int64_t n, const int64_t* threshold,
                 uint8_t* above, uint8_t* tie, cudaStream_t stream) {
  const int64_t blocks = (n + kMarkThreads - 1) / kMarkThreads;
  const int grid = int(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
  top_k_mark_kernel<Code><<<grid, kMarkThreads, 0, stream>>>(scores, eligible, n, threshold, above, tie);
  return cudaGetLastError();
}

}  // namespace
}  // namespace gpu

cudaError_t top_k_mark_cuda(const void* scores, int dtype, const uint8_t* eligible, int64_t n,
                            const int64_t* threshold, uint8_t* above, uint8_t* tie, int device,
                            cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  switch (dtype) {
    case kFloat32: return gpu::mark<kFloat32>(scores, eligible, n, threshold, above, tie, stream);
    case kBFloat16: return gpu::mark<kBFloat16>(scores, eligible, n, threshold, above, tie, stream);
    case kFloat16: return gpu::mark<kFloat16>(scores, eligible, n, threshold, above, tie, stream);
    case kFloat64: return gpu::mark<kFloat64>(scores, eligible, n, threshold, above, tie, stream);
    case gpu::kInt64Code: return gpu::mark<gpu::kInt64Code>(scores, eligible, n, threshold, above, tie, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace entropy_ops
