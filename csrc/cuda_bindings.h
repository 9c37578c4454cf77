// What the two source files of entropy_ops._C_cuda share: the error check that turns a
// cudaError_t into a RuntimeError, the pointer and stream casts of the torch-free ABI, the
// GIL-releasing launch, and the binder of the token-level kernels (cuda_token_bindings.cpp).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include <pybind11/pybind11.h>

#include "cuda/launchers.h"

namespace entropy_ops {
namespace bindings {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("entropy_ops._C_cuda.") + what + ": " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}

// A ValueError naming the function: argument errors that the launchers would only report as
// cudaErrorInvalidValue.
[[noreturn]] inline void value_error(const char* what, const std::string& message) {
  throw pybind11::value_error(std::string("entropy_ops._C_cuda.") + what + ": " + message);
}

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

inline cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// Runs `launch` with the GIL released and raises on its error.
template <typename F>
void launch(const char* what, F&& f) {
  cudaError_t err;
  {
    pybind11::gil_scoped_release release;
    err = f();
  }
  check(err, what);
}

// Defines the token-level kernels' functions (window entropy, masked quantile, top-k, random
// keys) on the module.
void bind_token_ops(pybind11::module_& m);

}  // namespace bindings
}  // namespace entropy_ops
