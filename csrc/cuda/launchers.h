// Host entry points of the CUDA kernels, as called by cuda_bindings.cpp.
//
// Torch-free (SPEC §1): pointers come from Python (`t.data_ptr()`), the stream is the tensor's
// own (`torch.cuda.current_stream(t.device).cuda_stream`), and every function returns a
// cudaError_t instead of throwing, so this header is plain C++ for the host compiler.
#pragma once

#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

namespace entropy_ops {

// ptr[0, n) = value on `stream` of `device`; n == 0 launches nothing.
cudaError_t fill_f32_cuda(float* ptr, int64_t n, float value, int device, cudaStream_t stream);

// Version and device queries; none of them allocates or synchronizes.
cudaError_t driver_version_cuda(int* version);   // 0 when no driver is installed
cudaError_t runtime_version_cuda(int* version);  // the static cudart this module carries
cudaError_t device_count_cuda(int* count);  // 0, not an error, when there is no GPU or driver

// Whether kernels can run here; when not, `reason` says why (no driver, driver older than the
// static cudart needs, no device). Calls only the queries above.
bool available_cuda(std::string* reason);

}  // namespace entropy_ops
