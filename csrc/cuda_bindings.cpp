// pybind11 module entropy_ops._C_cuda: the CUDA kernels behind a torch-free ABI (csrc/README.md).
//
// Python passes raw device pointers and the stream handle as ints; every launcher returns a
// cudaError_t, turned here into a RuntimeError. No CUDA call happens at import time.
#include <cstdint>
#include <string>
#include <utility>

#include <pybind11/pybind11.h>

#include "cuda_bindings.h"

#ifndef ENTROPY_OPS_CUDA_ARCHS
#error "ENTROPY_OPS_CUDA_ARCHS must be defined by the build (setup.py)"
#endif

namespace py = pybind11;

namespace {

using entropy_ops::bindings::as_stream;
using entropy_ops::bindings::check;
using entropy_ops::bindings::launch;
using entropy_ops::bindings::ptr;
using entropy_ops::bindings::value_error;

template <typename F>
int query_int(F query, const char* what) {
  int value = 0;
  check(query(&value), what);
  return value;
}

void check_dtype(const char* what, int dtype) {
  if (dtype < 0 || dtype > 2) {
    value_error(what, "dtype code must be 0..2 (fp32, bf16, fp16; fp64 runs on the torch backend), got " +
                            std::to_string(dtype));
  }
}

void check_workspace(const char* what, int64_t n_rows, int64_t vocab, int64_t workspace_size) {
  const int64_t need = entropy_ops::entropy_fwd_workspace_cuda(n_rows, vocab);
  if (workspace_size < need) {
    value_error(what, "workspace holds " + std::to_string(workspace_size) + " floats, needs " +
                            std::to_string(need) + " (entropy_fwd_workspace(n_rows, vocab))");
  }
}

void entropy_fwd(std::uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                 int64_t row_stride, std::uintptr_t temperature, double temperature_scalar,
                 std::uintptr_t labels, bool labels_int32, int64_t ignore_index,
                 std::uintptr_t mask, std::uintptr_t row_max_out, std::uintptr_t log_norm_out,
                 std::uintptr_t entropy_out, std::uintptr_t logp_out, std::uintptr_t workspace,
                 int64_t workspace_size, int device, std::uintptr_t stream) {
  const char* what = "entropy_fwd_cuda";
  check_dtype(what, dtype);
  check_workspace(what, n_rows, vocab, workspace_size);
  launch(what, [&] {
    return entropy_ops::entropy_fwd_cuda(
        ptr<const void>(logits), dtype, n_rows, vocab, row_stride, ptr<const float>(temperature),
        temperature_scalar, ptr<const void>(labels), labels_int32, ignore_index,
        ptr<const uint8_t>(mask), ptr<float>(row_max_out), ptr<float>(log_norm_out),
        ptr<float>(entropy_out), ptr<float>(logp_out), ptr<float>(workspace), workspace_size,
        device, as_stream(stream));
  });
}

void entropy_bwd(std::uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                 int64_t row_stride, std::uintptr_t temperature, double temperature_scalar,
                 std::uintptr_t labels, bool labels_int32, int64_t ignore_index,
                 std::uintptr_t mask, std::uintptr_t row_max, std::uintptr_t log_norm,
                 std::uintptr_t entropy, std::uintptr_t grad_entropy, std::uintptr_t grad_logp,
                 std::uintptr_t grad_logits, int64_t grad_row_stride, int device,
                 std::uintptr_t stream) {
  const char* what = "entropy_bwd_cuda";
  check_dtype(what, dtype);
  launch(what, [&] {
    return entropy_ops::entropy_bwd_cuda(
        ptr<const void>(logits), dtype, n_rows, vocab, row_stride, ptr<const float>(temperature),
        temperature_scalar, ptr<const void>(labels), labels_int32, ignore_index,
        ptr<const uint8_t>(mask), ptr<const float>(row_max), ptr<const float>(log_norm),
        ptr<const float>(entropy), ptr<const float>(grad_entropy), ptr<const float>(grad_logp),
        ptr<void>(grad_logits), grad_row_stride, device, as_stream(stream));
  });
}

// top_p's integer mass sums need vocab < kTopPMaxVocab.
void check_top_p_vocab(const char* what, int64_t vocab) {
  if (vocab >= entropy_ops::kTopPMaxVocab) {
    value_error(what, "vocab must be below " + std::to_string(entropy_ops::kTopPMaxVocab) + ", got " +
                            std::to_string(vocab));
  }
}

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
    launch("fill_f32", [&] {
      return entropy_ops::fill_f32_cuda(reinterpret_cast<float*>(ptr), n, value, device, as_stream(stream));
    });
  }, py::arg("ptr"), py::arg("n"), py::arg("value"), py::arg("device"), py::arg("stream"),
     "ptr[0, n) = value (float32), launched on `stream` of `device`; n == 0 launches nothing.");

  m.def("entropy_fwd_workspace", &entropy_ops::entropy_fwd_workspace_cuda, py::arg("n_rows"),
        py::arg("vocab"), "Floats of workspace entropy_fwd_cuda needs (0: none).");
  m.def("entropy_fwd_cuda", &entropy_fwd, py::arg("logits"), py::arg("dtype"), py::arg("n_rows"),
        py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("labels"), py::arg("labels_int32"),
        py::arg("ignore_index"), py::arg("mask"), py::arg("row_max_out"),
        py::arg("log_norm_out"), py::arg("entropy_out"), py::arg("logp_out"),
        py::arg("workspace"), py::arg("workspace_size"), py::arg("device"), py::arg("stream"),
        "Per row: raw max, log_norm = lse - max / T, entropy and (with labels) logp of "
        "softmax(logits / T), on `stream`.");
  m.def("entropy_bwd_cuda", &entropy_bwd, py::arg("logits"), py::arg("dtype"), py::arg("n_rows"),
        py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("labels"), py::arg("labels_int32"),
        py::arg("ignore_index"), py::arg("mask"), py::arg("row_max"), py::arg("log_norm"),
        py::arg("entropy"), py::arg("grad_entropy"), py::arg("grad_logp"),
        py::arg("grad_logits"), py::arg("grad_row_stride"), py::arg("device"), py::arg("stream"),
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


  entropy_ops::bindings::bind_token_ops(m);
}
