// random_keys_cuda: Clip-Cov's random keys (entropy_ops/backends/token_kernel.py, "Random keys").
// out[i] = random_key(*seed, *first + i) (csrc/include/entropy_ops/random_keys.h, the function the
// CPU kernel uses too), with the seed and the offset read from device memory by the kernel: the
// host never sees them, so no launch waits on a copy and a rank's offset can be computed on the
// device. Counter-based: each output is independent, a grid-stride loop over int64 indices.
#include "cuda/launchers.h"
#include "cuda/util.cuh"
#include "entropy_ops/random_keys.h"

namespace entropy_ops {
namespace gpu {
namespace {

constexpr int kKeyThreads = 256;
constexpr int64_t kMaxKeyBlocks = int64_t(1) << 20;  // grid-stride beyond this (n > 2^28)

__global__ void random_keys_kernel(const int64_t* __restrict__ seed, const int64_t* __restrict__ first,
                                   int64_t n, int64_t* __restrict__ out) {
  // int64 -> uint64 is modulo 2^64: a negative seed or offset is the upper half of the uint64 ones.
  const uint64_t s = static_cast<uint64_t>(*seed);
  const uint64_t j0 = static_cast<uint64_t>(*first);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = random_key(s, j0 + static_cast<uint64_t>(i));
  }
}

}  // namespace
}  // namespace gpu

cudaError_t random_keys_cuda(const int64_t* seed, const int64_t* first, int64_t n, int64_t* out,
                             int device, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n < 0) return cudaErrorInvalidValue;
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  const int64_t blocks = (n + gpu::kKeyThreads - 1) / gpu::kKeyThreads;
  const int grid = int(blocks < gpu::kMaxKeyBlocks ? blocks : gpu::kMaxKeyBlocks);
  gpu::random_keys_kernel<<<grid, gpu::kKeyThreads, 0, stream>>>(seed, first, n, out);
  return cudaGetLastError();
}

}  // namespace entropy_ops
