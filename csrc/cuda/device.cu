// Driver, runtime and device queries behind `_C_cuda.available()` and `info`.
//
// Nothing here runs at import time: the static cudart loads libcuda lazily on the first call,
// so importing the module on a machine without a driver (or in a forked worker) is safe.
#include "cuda/launchers.h"
#include "cuda/util.cuh"

#include <string>

namespace entropy_ops {

cudaError_t driver_version_cuda(int* version) {
  *version = 0;
  return cudaDriverGetVersion(version);
}

cudaError_t runtime_version_cuda(int* version) {
  *version = 0;
  return cudaRuntimeGetVersion(version);
}

cudaError_t device_count_cuda(int* count) {
  *count = 0;
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    cudaGetLastError();  // "no GPU here" is an answer, not a sticky error for the next call
    *count = 0;
    return cudaSuccess;
  }
  return err;
}

// The static cudart needs a driver at least as new as its own major version (minor-version
// compatibility): CUDA 13.x needs driver API 13000, i.e. driver r580 or newer.
constexpr int kMinDriverVersion = (CUDART_VERSION / 1000) * 1000;

static const char* driver_branch(int cuda_major) {
  switch (cuda_major) {
    case 12: return "r525";
    case 13: return "r580";
    default: return "the matching release";
  }
}

bool available_cuda(std::string* reason) {
  int driver = 0;
  const cudaError_t err = cudaDriverGetVersion(&driver);
  if (err != cudaSuccess || driver == 0) {
    cudaGetLastError();
    *reason = "no CUDA driver found (cudaDriverGetVersion: " +
              std::string(err != cudaSuccess ? cudaGetErrorString(err) : "version 0") +
              "); the cuda backend needs an NVIDIA GPU and its driver";
    return false;
  }
  if (driver < kMinDriverVersion) {
    const int major = CUDART_VERSION / 1000;
    *reason = "driver too old for static cudart " + std::to_string(major) + " (needs >= " +
              driver_branch(major) + ", driver API >= " + std::to_string(kMinDriverVersion) +
              "; this driver reports " + std::to_string(driver) + " = CUDA " +
              std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) +
              "); update the driver or use the triton backend";
    return false;
  }
  int count = 0;
  const cudaError_t count_err = device_count_cuda(&count);
  if (count_err != cudaSuccess) {
    cudaGetLastError();
    *reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(count_err);
    return false;
  }
  if (count == 0) {
    *reason = "no CUDA device visible (check CUDA_VISIBLE_DEVICES)";
    return false;
  }
  reason->clear();
  return true;
}

}  // namespace entropy_ops
