// entropy_ops._C_cuda's token-level kernels (window entropy, masked quantile, top-k selection,
// random keys): the argument checks and GIL-releasing launches, and their definitions on the
// module (bind_token_ops, called by cuda_bindings.cpp). Same torch-free ABI (csrc/README.md).
#include <cstdint>
#include <string>

#include <pybind11/pybind11.h>

#include "cuda_bindings.h"

namespace py = pybind11;

namespace entropy_ops {
namespace bindings {
namespace {

void check_token_dtype(const char* what, int dtype, int most) {
  if (dtype < 0 || dtype > most) {
    value_error(what, "dtype code must be 0.." + std::to_string(most) + ", got " + std::to_string(dtype));
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
    value_error(what, "the gradient is in the accumulation dtype, code 0 (fp32) or 3 (fp64), got " +
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
    value_error(what, "n must be >= 0, got " + std::to_string(n));
  }
  launch(what, [&] {
    return entropy_ops::random_keys_cuda(ptr<const int64_t>(seed), ptr<const int64_t>(first), n,
                                         ptr<int64_t>(out), device, as_stream(stream));
  });
}

}  // namespace

void bind_token_ops(py::module_& m) {
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

}  // namespace bindings
}  // namespace entropy_ops
