// fill_f32: the smallest kernel that proves the launch path (pointer, device, stream) works.
#include "cuda/launchers.h"
#include "cuda/util.cuh"

namespace entropy_ops {

__global__ void fill_f32_kernel(float* __restrict__ ptr, int64_t n, float value) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    ptr[i] = value;
  }
}

cudaError_t fill_f32_cuda(float* ptr, int64_t n, float value, int device, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  constexpr int kThreads = 256;
  // A grid-stride loop: a bounded grid covers any n (no grid-size limit on the size).
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  const int grid = int(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
  fill_f32_kernel<<<grid, kThreads, 0, stream>>>(ptr, n, value);
  return cudaGetLastError();
}

}  // namespace entropy_ops
