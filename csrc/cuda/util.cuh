// Error handling for the CUDA launchers: errors are returned, never fatal.
//
// A launcher returns cudaError_t; the bindings turn a failure into a Python RuntimeError that
// carries cudaGetErrorString. Nothing here aborts the process: a bad launch must not take the
// trainer down with it.
#pragma once

#include <cuda_runtime_api.h>

#define EO_CUDA_CHECK(expr)                  \
  do {                                       \
    const cudaError_t eo_err_ = (expr);      \
    if (eo_err_ != cudaSuccess) return eo_err_; \
  } while (0)

namespace entropy_ops {

// Makes `device` current for the scope and restores the previous device on exit: torch and this
// module share the driver's per-thread current context, so a leaked cudaSetDevice would move
// torch's current device too.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    status_ = cudaGetDevice(&previous_);
    if (status_ == cudaSuccess && previous_ != device) {
      status_ = cudaSetDevice(device);
      switched_ = status_ == cudaSuccess;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

  cudaError_t status() const { return status_; }

 private:
  int previous_ = 0;
  bool switched_ = false;
  cudaError_t status_ = cudaSuccess;
};

}  // namespace entropy_ops
