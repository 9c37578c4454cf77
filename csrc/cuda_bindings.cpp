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

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Argument errors that the launchers would only report as cudaErrorInvalidValue, named here.
void check_dtype(const char* what, int dtype) {
  if (dtype < 0 || dtype > 2) {
    throw py::value_error(std::string("entropy_ops._C_cuda.") + what +
                          ": dtype code must be 0..2 (fp32, bf16, fp16; fp64 runs on the torch "
                          "backend), got " + std::to_string(dtype));
  }
}

void check_args(const char* what, int dtype, int64_t n_rows, int64_t vocab,
                int64_t workspace_size) {
  check_dtype(what, dtype);
  const int64_t need = entropy_ops::entropy_fwd_workspace_cuda(n_rows, vocab);
  if (workspace_size < need) {
    throw py::value_error(std::string("entropy_ops._C_cuda.") + what + ": workspace holds " +
                          std::to_string(workspace_size) + " floats, needs " +
                          std::to_string(need) + " (entropy_fwd_workspace(n_rows, vocab))");
  }
}

void entropy_fwd(std::uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                 int64_t row_stride, std::uintptr_t temperature, double temperature_scalar,
                 std::uintptr_t labels, bool labels_int32, int64_t ignore_index,
                 std::uintptr_t mask, std::uintptr_t lse_out, std::uintptr_t entropy_out,
                 std::uintptr_t logp_out, std::uintptr_t workspace, int64_t workspace_size,
                 int device, std::uintptr_t stream) {
  check_args("entropy_fwd_cuda", dtype, n_rows, vocab, workspace_size);
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = entropy_ops::entropy_fwd_cuda(
        ptr<const void>(logits), dtype, n_rows, vocab, row_stride, ptr<const float>(temperature),
        temperature_scalar, ptr<const void>(labels), labels_int32, ignore_index,
        ptr<const uint8_t>(mask), ptr<float>(lse_out), ptr<float>(entropy_out),
        ptr<float>(logp_out), ptr<float>(workspace), workspace_size, device,
        reinterpret_cast<cudaStream_t>(stream));
  }
  check(err, "entropy_fwd_cuda");
}

void entropy_bwd(std::uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                 int64_t row_stride, std::uintptr_t temperature, double temperature_scalar,
                 std::uintptr_t labels, bool labels_int32, int64_t ignore_index,
                 std::uintptr_t mask, std::uintptr_t lse, std::uintptr_t entropy,
                 std::uintptr_t grad_entropy, std::uintptr_t grad_logp,
                 std::uintptr_t grad_logits, int64_t grad_row_stride, std::uintptr_t workspace,
                 int64_t workspace_size, int device, std::uintptr_t stream) {
  check_args("entropy_bwd_cuda", dtype, n_rows, vocab, workspace_size);
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = entropy_ops::entropy_bwd_cuda(
        ptr<const void>(logits), dtype, n_rows, vocab, row_stride, ptr<const float>(temperature),
        temperature_scalar, ptr<const void>(labels), labels_int32, ignore_index,
        ptr<const uint8_t>(mask), ptr<const float>(lse), ptr<const float>(entropy),
        ptr<const float>(grad_entropy), ptr<const float>(grad_logp), ptr<void>(grad_logits),
        grad_row_stride, ptr<float>(workspace), workspace_size, device,
        reinterpret_cast<cudaStream_t>(stream));
  }
  check(err, "entropy_bwd_cuda");
}


// top_p's integer mass sums need vocab < kTopPMaxVocab.
void check_top_p_vocab(const char* what, int64_t vocab) {
  if (vocab >= entropy_ops::kTopPMaxVocab) {
    throw py::value_error(std::string("entropy_ops._C_cuda.") + what + ": vocab must be below " +
                          std::to_string(entropy_ops::kTopPMaxVocab) + ", got " +
                          std::to_string(vocab));
  }
}

// Runs `launch` with the GIL released and raises on its error.
template <typename F>
void launch(const char* what, F&& f) {
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = f();
  }
  check(err, what);
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

void top_p_entropy_fwd(std::uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                       int64_t row_stride, std::uintptr_t temperature, double temperature_scalar,
                       std::uintptr_t mask, double top_p, std::uintptr_t entropy_out,
                       std::uintptr_t row_max_out, std::uintptr_t cut_e_out,
                       std::uintptr_t cut_index_out, std::uintptr_t log_norm_out, int device,
                       std::uintptr_t stream) {
  const char* what = "top_p_entropy_fwd_cuda";
  check_dtype(what, dtype);
  check_top_p_vocab(what, vocab);
  launch(what, [&] {
    return entropy_ops::top_p_entropy_fwd_cuda(
        ptr<const void>(logits), dtype, n_rows, vocab, row_stride, ptr<const float>(temperature),
        temperature_scalar, ptr<const uint8_t>(mask), top_p, ptr<float>(entropy_out),
        ptr<float>(row_max_out), ptr<float>(cut_e_out), ptr<int32_t>(cut_index_out),
        ptr<float>(log_norm_out), device, as_stream(stream));
  });
}

void top_p_entropy_bwd(std::uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                       int64_t row_stride, std::uintptr_t temperature, double temperature_scalar,
                       std::uintptr_t mask, std::uintptr_t entropy, std::uintptr_t row_max,
                       std::uintptr_t cut_e, std::uintptr_t cut_index, std::uintptr_t log_norm,
                       std::uintptr_t grad_entropy, std::uintptr_t grad_logits,
                       int64_t grad_row_stride, int device, std::uintptr_t stream) {
  const char* what = "top_p_entropy_bwd_cuda";
  check_dtype(what, dtype);
  check_top_p_vocab(what, vocab);
  launch(what, [&] {
    return entropy_ops::top_p_entropy_bwd_cuda(
        ptr<const void>(logits), dtype, n_rows, vocab, row_stride, ptr<const float>(temperature),
        temperature_scalar, ptr<const uint8_t>(mask), ptr<const float>(entropy),
        ptr<const float>(row_max), ptr<const float>(cut_e), ptr<const int32_t>(cut_index),
        ptr<const float>(log_norm), ptr<const float>(grad_entropy), ptr<void>(grad_logits),
        grad_row_stride, device, as_stream(stream));
  });
}

void top_p_mask(std::uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                int64_t row_stride, std::uintptr_t temperature, double temperature_scalar,
                std::uintptr_t mask, double top_p, bool inclusive, std::uintptr_t mask_out,
                int64_t out_row_stride, int device, std::uintptr_t stream) {
  const char* what = "top_p_mask_cuda";
  check_dtype(what, dtype);
  check_top_p_vocab(what, vocab);
  launch(what, [&] {
    return entropy_ops::top_p_mask_cuda(
        ptr<const void>(logits), dtype, n_rows, vocab, row_stride, ptr<const float>(temperature),
        temperature_scalar, ptr<const uint8_t>(mask), top_p, inclusive, ptr<uint8_t>(mask_out),
        out_row_stride, device, as_stream(stream));
  });
}

void min_p_logprobs_fwd(std::uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                        int64_t row_stride, std::uintptr_t temperature, double temperature_scalar,
                        std::uintptr_t labels, bool labels_int32, int64_t ignore_index,
                        std::uintptr_t mask, double min_p, std::uintptr_t logp_out,
                        std::uintptr_t row_max_out, std::uintptr_t log_norm_out, int device,
                        std::uintptr_t stream) {
  const char* what = "min_p_logprobs_fwd_cuda";
  check_dtype(what, dtype);
  launch(what, [&] {
    return entropy_ops::min_p_logprobs_fwd_cuda(
        ptr<const void>(logits), dtype, n_rows, vocab, row_stride, ptr<const float>(temperature),
        temperature_scalar, ptr<const void>(labels), labels_int32, ignore_index,
        ptr<const uint8_t>(mask), min_p, ptr<float>(logp_out), ptr<float>(row_max_out),
        ptr<float>(log_norm_out), device, as_stream(stream));
  });
}

void min_p_logprobs_bwd(std::uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                        int64_t row_stride, std::uintptr_t temperature, double temperature_scalar,
                        std::uintptr_t labels, bool labels_int32, int64_t ignore_index,
                        std::uintptr_t mask, double min_p, std::uintptr_t row_max,
                        std::uintptr_t log_norm, std::uintptr_t grad_logp,
                        std::uintptr_t grad_logits, int64_t grad_row_stride, int device,
                        std::uintptr_t stream) {
  const char* what = "min_p_logprobs_bwd_cuda";
  check_dtype(what, dtype);
  launch(what, [&] {
    return entropy_ops::min_p_logprobs_bwd_cuda(
        ptr<const void>(logits), dtype, n_rows, vocab, row_stride, ptr<const float>(temperature),
        temperature_scalar, ptr<const void>(labels), labels_int32, ignore_index,
        ptr<const uint8_t>(mask), min_p, ptr<const float>(row_max), ptr<const float>(log_norm),
        ptr<const float>(grad_logp), ptr<void>(grad_logits), grad_row_stride, device,
        as_stream(stream));
  });
}

void token_stats(std::uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                 int64_t row_stride, std::uintptr_t temperature, double temperature_scalar,
                 std::uintptr_t labels, bool labels_int32, int64_t ignore_index,
                 std::uintptr_t mask, std::uintptr_t lse_out, std::uintptr_t entropy_out,
                 std::uintptr_t logp_out, std::uintptr_t max_logp_out,
                 std::uintptr_t collision_out, std::uintptr_t varentropy_out,
                 std::uintptr_t self_certainty_out, std::uintptr_t entropy_drift_out, int device,
                 std::uintptr_t stream) {
  const char* what = "token_stats_cuda";
  check_dtype(what, dtype);
  launch(what, [&] {
    return entropy_ops::token_stats_cuda(
        ptr<const void>(logits), dtype, n_rows, vocab, row_stride, ptr<const float>(temperature),
        temperature_scalar, ptr<const void>(labels), labels_int32, ignore_index,
        ptr<const uint8_t>(mask), ptr<float>(lse_out), ptr<float>(entropy_out),
        ptr<float>(logp_out), ptr<float>(max_logp_out), ptr<float>(collision_out),
        ptr<float>(varentropy_out), ptr<float>(self_certainty_out),
        ptr<float>(entropy_drift_out), device, as_stream(stream));
  });
}

// ---- token-level kernels (window entropy, masked quantile, top-k selection) ----

void check_token_dtype(const char* what, int dtype, int most) {
  if (dtype < 0 || dtype > most) {
    throw py::value_error(std::string("entropy_ops._C_cuda.") + what + ": dtype code must be 0.." +
                          std::to_string(most) + ", got " + std::to_string(dtype));
  }
}

void window_entropy_fwd(std::uintptr_t x, int dtype, std::uintptr_t mask, std::uintptr_t cu,
                        int64_t n, int64_t n_seq, int64_t window, int64_t offset,
                        std::uintptr_t out, int device, std::uintptr_t stream) {
  const char* what = "window_entropy_fwd_cuda";
  check_token_dtype(what, dtype, 3);
  launch(what, [&] {
    return entropy_ops::window_entropy_fwd_cuda(ptr<const void>(x), dtype, ptr<const uint8_t>(mask),
                                                ptr<const int64_t>(cu), n, n_seq, window, offset,
                                                ptr<void>(out), device, as_stream(stream));
  });
}

void window_entropy_bwd(std::uintptr_t grad, int dtype, std::uintptr_t mask, std::uintptr_t cu,
                        int64_t n, int64_t n_seq, int64_t window, int64_t offset,
                        std::uintptr_t share, std::uintptr_t out, int device, std::uintptr_t stream) {
  const char* what = "window_entropy_bwd_cuda";
  if (dtype != 0 && dtype != 3) {
    throw py::value_error(std::string("entropy_ops._C_cuda.") + what +
                          ": the gradient is in the accumulation dtype, code 0 (fp32) or 3 (fp64), got " +
                          std::to_string(dtype));
  }
  launch(what, [&] {
    return entropy_ops::window_entropy_bwd_cuda(ptr<const void>(grad), dtype, ptr<const uint8_t>(mask),
                                                ptr<const int64_t>(cu), n, n_seq, window, offset,
                                                ptr<void>(share), ptr<void>(out), device,
                                                as_stream(stream));
  });
}

void masked_quantile_seq(std::uintptr_t x, int dtype, std::uintptr_t mask, std::uintptr_t cu,
                         int64_t n_seq, std::uintptr_t q, int64_t n_q, std::uintptr_t v_lo,
                         std::uintptr_t v_hi, std::uintptr_t count, int device, std::uintptr_t stream) {
  const char* what = "masked_quantile_seq_cuda";
  check_token_dtype(what, dtype, 3);
  launch(what, [&] {
    return entropy_ops::masked_quantile_seq_cuda(ptr<const void>(x), dtype, ptr<const uint8_t>(mask),
                                                 ptr<const int64_t>(cu), n_seq, ptr<const double>(q), n_q,
                                                 ptr<double>(v_lo), ptr<double>(v_hi),
                                                 ptr<int64_t>(count), device, as_stream(stream));
  });
}

void radix_select(std::uintptr_t x, int dtype, std::uintptr_t valid, int64_t n, std::uintptr_t rank,
                  std::uintptr_t prefix, int64_t n_targets, std::uintptr_t hist, std::uintptr_t value,
                  bool descending, int device, std::uintptr_t stream) {
  const char* what = "radix_select_cuda";
  check_token_dtype(what, dtype, 4);
  launch(what, [&] {
    return entropy_ops::radix_select_cuda(ptr<const void>(x), dtype, ptr<const uint8_t>(valid), n,
                                          ptr<int64_t>(rank), ptr<int64_t>(prefix), n_targets,
                                          ptr<unsigned long long>(hist), ptr<double>(value), descending,
                                          device, as_stream(stream));
  });
}

void top_k_mark(std::uintptr_t scores, int dtype, std::uintptr_t eligible, int64_t n,
                std::uintptr_t threshold, std::uintptr_t above, std::uintptr_t tie, int device,
                std::uintptr_t stream) {
  const char* what = "top_k_mark_cuda";
  check_token_dtype(what, dtype, 4);
  launch(what, [&] {
    return entropy_ops::top_k_mark_cuda(ptr<const void>(scores), dtype, ptr<const uint8_t>(eligible), n,
                                        ptr<const int64_t>(threshold), ptr<uint8_t>(above),
                                        ptr<uint8_t>(tie), device, as_stream(stream));
  });
}

void random_keys(std::uintptr_t seed, std::uintptr_t first, int64_t n, std::uintptr_t out, int device,
                 std::uintptr_t stream) {
  const char* what = "random_keys_cuda";
  if (n < 0) {
    throw py::value_error(std::string("entropy_ops._C_cuda.") + what + ": n must be >= 0, got " +
                          std::to_string(n));
  }
  launch(what, [&] {
    return entropy_ops::random_keys_cuda(ptr<const int64_t>(seed), ptr<const int64_t>(first), n,
                                         ptr<int64_t>(out), device, as_stream(stream));
  });
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

  m.def("entropy_fwd_workspace", &entropy_ops::entropy_fwd_workspace_cuda, py::arg("n_rows"),
        py::arg("vocab"),
        "Floats of workspace entropy_fwd_cuda and entropy_bwd_cuda need (0: none).");
  m.def("entropy_fwd_cuda", &entropy_fwd, py::arg("logits"), py::arg("dtype"), py::arg("n_rows"),
        py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("labels"), py::arg("labels_int32"),
        py::arg("ignore_index"), py::arg("mask"), py::arg("lse_out"), py::arg("entropy_out"),
        py::arg("logp_out"), py::arg("workspace"), py::arg("workspace_size"), py::arg("device"),
        py::arg("stream"),
        "Per row: lse, entropy and (with labels) logp of softmax(logits / T), on `stream`.");
  m.def("entropy_bwd_cuda", &entropy_bwd, py::arg("logits"), py::arg("dtype"), py::arg("n_rows"),
        py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("labels"), py::arg("labels_int32"),
        py::arg("ignore_index"), py::arg("mask"), py::arg("lse"), py::arg("entropy"),
        py::arg("grad_entropy"), py::arg("grad_logp"), py::arg("grad_logits"),
        py::arg("grad_row_stride"), py::arg("workspace"), py::arg("workspace_size"),
        py::arg("device"), py::arg("stream"),
        "grad_logits = (gH dH/dz + glogp dlogp/dz) / T in the logits' dtype, on `stream`.");

  m.def("top_p_entropy_fwd_cuda", &top_p_entropy_fwd, py::arg("logits"), py::arg("dtype"),
        py::arg("n_rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("mask"), py::arg("top_p"),
        py::arg("entropy_out"), py::arg("row_max_out"), py::arg("cut_e_out"),
        py::arg("cut_index_out"), py::arg("log_norm_out"), py::arg("device"), py::arg("stream"),
        "Per row: entropy of the exclusive top-p nucleus renormalized, and the saved (row_max, "
        "cut_e, cut_index int32, log_norm) of kernel.py's TopPKernel, on `stream`.");
  m.def("top_p_entropy_bwd_cuda", &top_p_entropy_bwd, py::arg("logits"), py::arg("dtype"),
        py::arg("n_rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("mask"), py::arg("entropy"), py::arg("row_max"),
        py::arg("cut_e"), py::arg("cut_index"), py::arg("log_norm"), py::arg("grad_entropy"),
        py::arg("grad_logits"), py::arg("grad_row_stride"), py::arg("device"),
        py::arg("stream"),
        "grad_logits = -gH q (log q + H) / T over the saved nucleus (0 elsewhere), in the "
        "logits' dtype, on `stream`.");
  m.def("top_p_mask_cuda", &top_p_mask, py::arg("logits"), py::arg("dtype"), py::arg("n_rows"),
        py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("mask"), py::arg("top_p"), py::arg("inclusive"),
        py::arg("mask_out"), py::arg("out_row_stride"), py::arg("device"), py::arg("stream"),
        "mask_out[i, j] (bool bytes) = token j is in row i's top-p nucleus, on `stream`.");
  m.def("min_p_logprobs_fwd_cuda", &min_p_logprobs_fwd, py::arg("logits"), py::arg("dtype"),
        py::arg("n_rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("labels"), py::arg("labels_int32"),
        py::arg("ignore_index"), py::arg("mask"), py::arg("min_p"), py::arg("logp_out"),
        py::arg("row_max_out"), py::arg("log_norm_out"), py::arg("device"), py::arg("stream"),
        "Per row: the label's log-prob under the min-p proxy, and the saved (row_max, "
        "log_norm), on `stream`.");
  m.def("min_p_logprobs_bwd_cuda", &min_p_logprobs_bwd, py::arg("logits"), py::arg("dtype"),
        py::arg("n_rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("labels"), py::arg("labels_int32"),
        py::arg("ignore_index"), py::arg("mask"), py::arg("min_p"), py::arg("row_max"),
        py::arg("log_norm"), py::arg("grad_logp"), py::arg("grad_logits"),
        py::arg("grad_row_stride"), py::arg("device"), py::arg("stream"),
        "grad_logits = glogp (1[j=y] - q_j) / T over the kept tokens, in the logits' dtype, on "
        "`stream`.");
  m.def("token_stats_cuda", &token_stats, py::arg("logits"), py::arg("dtype"), py::arg("n_rows"),
        py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("labels"), py::arg("labels_int32"),
        py::arg("ignore_index"), py::arg("mask"), py::arg("lse_out"), py::arg("entropy_out"),
        py::arg("logp_out"), py::arg("max_logp_out"), py::arg("collision_out"),
        py::arg("varentropy_out"), py::arg("self_certainty_out"), py::arg("entropy_drift_out"),
        py::arg("device"), py::arg("stream"),
        "Per row: the eight statistics of token_stats (logp_out 0 without labels), on `stream`.");

  m.def("window_entropy_fwd_cuda", &window_entropy_fwd, py::arg("x"), py::arg("dtype"), py::arg("mask"),
        py::arg("cu"), py::arg("n"), py::arg("n_seq"), py::arg("window"), py::arg("offset"),
        py::arg("out"), py::arg("device"), py::arg("stream"),
        "out[t] = mean of the valid x_j, j in [t + offset, min(t + offset + window, end_t)), 0 where "
        "none (accumulation dtype), on `stream`.");
  m.def("window_entropy_bwd_cuda", &window_entropy_bwd, py::arg("grad"), py::arg("dtype"),
        py::arg("mask"), py::arg("cu"), py::arg("n"), py::arg("n_seq"), py::arg("window"),
        py::arg("offset"), py::arg("share"), py::arg("out"), py::arg("device"), py::arg("stream"),
        "out = the transposed window sum of grad / #valid (share: an [n] workspace), on `stream`.");
  m.def("masked_quantile_seq_cuda", &masked_quantile_seq, py::arg("x"), py::arg("dtype"),
        py::arg("mask"), py::arg("cu"), py::arg("n_seq"), py::arg("q"), py::arg("n_q"),
        py::arg("v_lo"), py::arg("v_hi"), py::arg("count"), py::arg("device"), py::arg("stream"),
        "Per sequence: valid count and the float64 order statistics of ranks floor/ceil q (n - 1), "
        "on `stream`.");
  m.def("radix_select_cuda", &radix_select, py::arg("x"), py::arg("dtype"), py::arg("valid"),
        py::arg("n"), py::arg("rank"), py::arg("prefix"), py::arg("n_targets"), py::arg("hist"),
        py::arg("value"), py::arg("descending"), py::arg("device"), py::arg("stream"),
        "Over all entries: the entry of each device rank by radix selection (prefix, residual rank, "
        "value), on `stream`.");
  m.def("top_k_mark_cuda", &top_k_mark, py::arg("scores"), py::arg("dtype"), py::arg("eligible"),
        py::arg("n"), py::arg("threshold"), py::arg("above"), py::arg("tie"), py::arg("device"),
        py::arg("stream"),
        "above / tie flags of the eligible scores against the selected descending key, on `stream`.");
  m.def("random_keys_cuda", &random_keys, py::arg("seed"), py::arg("first"), py::arg("n"),
        py::arg("out"), py::arg("device"), py::arg("stream"),
        "out[i] = splitmix64(*seed, *first + i) >> 2 for i < n (int64; seed, first device pointers), on `stream`.");
}
