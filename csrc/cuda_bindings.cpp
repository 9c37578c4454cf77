// pybind11 module entropy_ops._C_cuda: the CUDA kernels behind a torch-free ABI (csrc/README.md).
//
// Python passes raw device pointers and the stream handle as ints; every launcher returns a
// cudaError_t, turned here into a RuntimeError. No CUDA call happens at import time.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include <pybind11/pybind11.h>

#include "cuda/launchers.h"

#ifndef ENTROPY_OPS_CUDA_ARCHS
#error "ENTROPY_OPS_CUDA_ARCHS must be defined by the build (setup.py)"
#endif

namespace py = pybind11;

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("entropy_ops._C_cuda.") + what + ": " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}

template <typename F>
int query_int(F query, const char* what) {
  int value = 0;
  check(query(&value), what);
  return value;
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "entropy_ops CUDA kernels (torch-free ABI: raw pointers, stream handles as ints)";

  m.def("available", [] {
    std::string reason;
    const bool ok = entropy_ops::available_cuda(&reason);
    return std::make_pair(ok, reason);
  }, "(bool, reason): a driver >= the static cudart's minimum and at least one device.");

  m.def("driver_version", [] {
    return query_int(entropy_ops::driver_version_cuda, "driver_version");
  }, "cudaDriverGetVersion (e.g. 13000); 0 when no driver is installed.");

  m.def("runtime_version", [] {
    return query_int(entropy_ops::runtime_version_cuda, "runtime_version");
  }, "cudaRuntimeGetVersion of the static cudart linked in (e.g. 13000).");

  m.def("device_count", [] {
    return query_int(entropy_ops::device_count_cuda, "device_count");
  }, "Number of visible CUDA devices; 0 without a driver or device.");

  m.def("compiled_archs", [] { return std::string(ENTROPY_OPS_CUDA_ARCHS); },
        "The ENTROPY_OPS_CUDA_ARCHS this module was built with (SASS for each, PTX of the newest).");

  m.def("fill_f32", [](std::uintptr_t ptr, int64_t n, float value, int device,
                       std::uintptr_t stream) {
    cudaError_t err;
    {
      py::gil_scoped_release release;
      err = entropy_ops::fill_f32_cuda(reinterpret_cast<float*>(ptr), n, value, device,
                                       reinterpret_cast<cudaStream_t>(stream));
    }
    check(err, "fill_f32");
  }, py::arg("ptr"), py::arg("n"), py::arg("value"), py::arg("device"), py::arg("stream"),
     "ptr[0, n) = value (float32), launched on `stream` of `device`; n == 0 launches nothing.");
}
