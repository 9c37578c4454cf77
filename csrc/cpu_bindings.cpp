// entropy_ops._C: the CPU kernels behind the torch-free ABI of csrc/README.md. Pointers arrive
// as Python ints (t.data_ptr(), or 0 for "absent"); no torch header is included.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "cpu/entropy_cpu.h"
#include "cpu/isa.h"
#include "cpu/selective_cpu.h"
#include "cpu/token_cpu.h"
#include "entropy_ops/dtype.h"
#include "entropy_ops/online_softmax.h"

namespace py = pybind11;
namespace eo = entropy_ops;
namespace eoc = entropy_ops::cpu;

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

eoc::RowsArgs rows_args(uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab,
                        int64_t row_stride, uintptr_t temperature, double temperature_scalar,
                        uintptr_t labels, bool labels_int32, int64_t ignore_index, uintptr_t mask,
                        int num_threads) {
  if (dtype < eo::kFloat32 || dtype > eo::kFloat64) {
    throw std::invalid_argument("entropy_ops._C: dtype code must be 0..3 (fp32, bf16, fp16, "
                                "fp64), got " + std::to_string(dtype));
  }
  eoc::RowsArgs r;
  r.logits = ptr<const void>(logits);
  r.dtype = dtype;
  r.n_rows = n_rows;
  r.vocab = vocab;
  r.row_stride = row_stride;
  r.temperature = ptr<const void>(temperature);
  r.temperature_scalar = temperature_scalar;
  r.labels = ptr<const void>(labels);
  r.labels_int32 = labels_int32;
  r.ignore_index = ignore_index;
  r.mask = ptr<const uint8_t>(mask);
  r.num_threads = num_threads;
  return r;
}

void entropy_fwd(uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab, int64_t row_stride,
                 uintptr_t temperature, double temperature_scalar, uintptr_t labels,
                 bool labels_int32, int64_t ignore_index, uintptr_t mask, uintptr_t row_max_out,
                 uintptr_t log_norm_out, uintptr_t entropy_out, uintptr_t logp_out,
                 int num_threads) {
  const eoc::RowsArgs r = rows_args(logits, dtype, n_rows, vocab, row_stride, temperature,
                                    temperature_scalar, labels, labels_int32, ignore_index, mask,
                                    num_threads);
  eoc::entropy_fwd_cpu(r, ptr<void>(row_max_out), ptr<void>(log_norm_out), ptr<void>(entropy_out),
                       ptr<void>(logp_out));
}

void entropy_bwd(uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab, int64_t row_stride,
                 uintptr_t temperature, double temperature_scalar, uintptr_t labels,
                 bool labels_int32, int64_t ignore_index, uintptr_t mask, uintptr_t row_max,
                 uintptr_t log_norm, uintptr_t entropy, uintptr_t grad_entropy,
                 uintptr_t grad_logp, uintptr_t grad_logits, int64_t grad_row_stride,
                 int num_threads) {
  const eoc::RowsArgs r = rows_args(logits, dtype, n_rows, vocab, row_stride, temperature,
                                    temperature_scalar, labels, labels_int32, ignore_index, mask,
                                    num_threads);
  eoc::entropy_bwd_cpu(r, ptr<const void>(row_max), ptr<const void>(log_norm),
                       ptr<const void>(entropy),
                       ptr<const void>(grad_entropy), ptr<const void>(grad_logp),
                       ptr<void>(grad_logits), grad_row_stride);
}

// The selective ops and token_stats take the leading arguments of entropy_fwd (labels unused
// by top-p), so one Python packing (backends/native_args.row_args) serves every row kernel.
#define EO_ROWS_PARAMS                                                                          \
  uintptr_t logits, int dtype, int64_t n_rows, int64_t vocab, int64_t row_stride,                 \
      uintptr_t temperature, double temperature_scalar, uintptr_t labels, bool labels_int32,      \
      int64_t ignore_index, uintptr_t mask
#define EO_ROWS_ARGS                                                                            \
  rows_args(logits, dtype, n_rows, vocab, row_stride, temperature, temperature_scalar, labels,   \
            labels_int32, ignore_index, mask, num_threads)

void top_p_entropy_fwd(EO_ROWS_PARAMS, double top_p, uintptr_t entropy_out,
                       uintptr_t row_max_out, uintptr_t cut_e_out, uintptr_t cut_index_out,
                       uintptr_t log_norm_out, int num_threads) {
  eoc::top_p_entropy_fwd_cpu(EO_ROWS_ARGS, top_p, ptr<void>(entropy_out), ptr<void>(row_max_out),
                             ptr<void>(cut_e_out), ptr<int32_t>(cut_index_out),
                             ptr<void>(log_norm_out));
}

void top_p_entropy_bwd(EO_ROWS_PARAMS, uintptr_t entropy, uintptr_t row_max, uintptr_t cut_e,
                       uintptr_t cut_index, uintptr_t log_norm, uintptr_t grad_entropy,
                       uintptr_t grad_logits, int64_t grad_row_stride, int num_threads) {
  eoc::top_p_entropy_bwd_cpu(EO_ROWS_ARGS, ptr<const void>(entropy), ptr<const void>(row_max),
                             ptr<const void>(cut_e), ptr<const int32_t>(cut_index),
                             ptr<const void>(log_norm), ptr<const void>(grad_entropy),
                             ptr<void>(grad_logits), grad_row_stride);
}

void top_p_mask(EO_ROWS_PARAMS, double top_p, bool inclusive, uintptr_t mask_out,
                int64_t mask_out_row_stride, int num_threads) {
  eoc::top_p_mask_cpu(EO_ROWS_ARGS, top_p, inclusive, ptr<uint8_t>(mask_out), mask_out_row_stride);
}

void min_p_logprobs_fwd(EO_ROWS_PARAMS, double min_p, uintptr_t logp_out, uintptr_t row_max_out,
                        uintptr_t log_norm_out, int num_threads) {
  eoc::min_p_logprobs_fwd_cpu(EO_ROWS_ARGS, min_p, ptr<void>(logp_out), ptr<void>(row_max_out),
                              ptr<void>(log_norm_out));
}

void min_p_logprobs_bwd(EO_ROWS_PARAMS, double min_p, uintptr_t row_max, uintptr_t log_norm,
                        uintptr_t grad_logp, uintptr_t grad_logits, int64_t grad_row_stride,
                        int num_threads) {
  eoc::min_p_logprobs_bwd_cpu(EO_ROWS_ARGS, min_p, ptr<const void>(row_max),
                              ptr<const void>(log_norm), ptr<const void>(grad_logp),
                              ptr<void>(grad_logits), grad_row_stride);
}

void token_stats(EO_ROWS_PARAMS, uintptr_t lse_out, uintptr_t entropy_out, uintptr_t logp_out,
                 uintptr_t max_logp_out, uintptr_t collision_out, uintptr_t varentropy_out,
                 uintptr_t self_certainty_out, uintptr_t entropy_drift_out, int num_threads) {
  void* const out[8] = {ptr<void>(lse_out),        ptr<void>(entropy_out),
                        ptr<void>(logp_out),       ptr<void>(max_logp_out),
                        ptr<void>(collision_out),  ptr<void>(varentropy_out),
                        ptr<void>(self_certainty_out), ptr<void>(entropy_drift_out)};
  eoc::token_stats_cpu(EO_ROWS_ARGS, out);
}

#undef EO_ROWS_PARAMS
#undef EO_ROWS_ARGS

// Token-level ops (token_cpu.h): packed [N] tokens, int64 offsets cu [n_seq + 1].
void check_token_dtype(int dtype, int highest, const char* what) {
  if (dtype < eo::kFloat32 || dtype > highest) {
    throw std::invalid_argument(std::string("entropy_ops._C: ") + what + ", got " +
                                std::to_string(dtype));
  }
}

void window_entropy_fwd(uintptr_t x, int dtype, uintptr_t mask, uintptr_t cu, int64_t n_seq,
                        int64_t n, int64_t window, int64_t offset, uintptr_t out, int num_threads) {
  check_token_dtype(dtype, eo::kFloat64, "dtype code must be 0..3 (fp32, bf16, fp16, fp64)");
  eoc::window_entropy_fwd_cpu(ptr<const void>(x), dtype, ptr<const uint8_t>(mask),
                              ptr<const int64_t>(cu), n_seq, n, window, offset, ptr<void>(out),
                              num_threads);
}

void window_entropy_bwd(uintptr_t grad, int dtype, uintptr_t mask, uintptr_t cu, int64_t n_seq,
                        int64_t n, int64_t window, int64_t offset, uintptr_t share, uintptr_t out,
                        int num_threads) {
  if (dtype != eo::kFloat32 && dtype != eo::kFloat64) {
    throw std::invalid_argument("entropy_ops._C: window_entropy_bwd_cpu: grad dtype code must be 0 "
                                "or 3 (fp32, fp64), got " + std::to_string(dtype));
  }
  eoc::window_entropy_bwd_cpu(ptr<const void>(grad), dtype, ptr<const uint8_t>(mask),
                              ptr<const int64_t>(cu), n_seq, n, window, offset, ptr<void>(share),
                              ptr<void>(out), num_threads);
}

void masked_quantile(uintptr_t x, int dtype, uintptr_t mask, uintptr_t cu, int64_t n_seq,
                     int64_t n, uintptr_t q, int64_t n_q, uintptr_t v_lo, uintptr_t v_hi,
                     uintptr_t count, int num_threads) {
  check_token_dtype(dtype, eo::kFloat64, "dtype code must be 0..3 (fp32, bf16, fp16, fp64)");
  eoc::masked_quantile_cpu(ptr<const void>(x), dtype, ptr<const uint8_t>(mask),
                           ptr<const int64_t>(cu), n_seq, n, ptr<const double>(q), n_q,
                           ptr<double>(v_lo), ptr<double>(v_hi), ptr<int64_t>(count), num_threads);
}

void top_k(uintptr_t scores, int dtype, uintptr_t eligible, int64_t n, uintptr_t k, uintptr_t out,
           int num_threads) {
  check_token_dtype(dtype, eoc::kInt64Scores, "top_k dtype code must be 0..4 (fp32, bf16, fp16, "
                    "fp64, int64)");
  eoc::top_k_cpu(ptr<const void>(scores), dtype, ptr<const uint8_t>(eligible), n,
                 ptr<const int64_t>(k), ptr<uint8_t>(out), num_threads);
}

void random_keys(uintptr_t seed, uintptr_t first, int64_t n, uintptr_t out, int num_threads) {
  eoc::random_keys_cpu(ptr<const int64_t>(seed), ptr<const int64_t>(first), n, ptr<int64_t>(out),
                       num_threads);
}

void set_isa(const std::string& name) {
  if (eoc::set_isa(name)) return;
  std::string supported;
  for (const std::string& s : eoc::supported_isas()) {
    supported += (supported.empty() ? "" : ", ") + s;
  }
  throw py::value_error("entropy_ops: CPU ISA '" + name +
                        "' is unknown or not supported by this CPU; supported: " + supported +
                        " (or 'auto')");
}

template <typename Src, typename Dst, Dst (*Convert)(Src)>
void convert(uintptr_t src, uintptr_t dst, int64_t n) {
  const Src* s = ptr<const Src>(src);
  Dst* d = ptr<Dst>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = Convert(s[i]);
}

// The per-thread math of the CUDA kernels (Exp2Accumulator) run on the CPU, one "thread" over a
// float32 row in groups of 8 (the bf16 vector width), the last one padded with -inf: lets the CPU
// tests check the device code's arithmetic against the reference (SPEC §6).
void exp2_accumulate_row(uintptr_t src, int64_t n, double temperature, uintptr_t out) {
  constexpr int W = 8;
  const float s = static_cast<float>(1.0 / temperature);
  const float k = 1.4426950408889634f * s;
  const float* x = ptr<const float>(src);
  auto acc = eo::Exp2Accumulator<float>::empty();
  for (int64_t g = 0; g < n; g += W) {
    float group[W];
    for (int i = 0; i < W; ++i) group[i] = g + i < n ? x[g + i] : -INFINITY;
    acc.add(group, k, eo::kExp2FloorF);
  }
  const auto stats = eo::finalize(acc.state(s), s);
  ptr<float>(out)[0] = stats.log_norm;
  ptr<float>(out)[1] = stats.entropy;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "entropy_ops CPU kernels (torch-free ABI; see csrc/README.md)";
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("entropy_fwd_cpu", &entropy_fwd, nogil, py::arg("logits"), py::arg("dtype"),
        py::arg("n_rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("labels"), py::arg("labels_int32"),
        py::arg("ignore_index"), py::arg("mask"), py::arg("row_max_out"),
        py::arg("log_norm_out"), py::arg("entropy_out"), py::arg("logp_out"),
        py::arg("num_threads"),
        "Per row: raw max, log_norm = lse - max / T, entropy and (with labels) logp of "
        "softmax(logits / T).");
  m.def("entropy_bwd_cpu", &entropy_bwd, nogil, py::arg("logits"), py::arg("dtype"),
        py::arg("n_rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("temperature"),
        py::arg("temperature_scalar"), py::arg("labels"), py::arg("labels_int32"),
        py::arg("ignore_index"), py::arg("mask"), py::arg("row_max"), py::arg("log_norm"),
        py::arg("entropy"), py::arg("grad_entropy"), py::arg("grad_logp"), py::arg("grad_logits"),
        py::arg("grad_row_stride"), py::arg("num_threads"),
        "grad_logits = (gH dH/dz + glogp dlogp/dz) / T, in the logits' dtype.");

#define EO_ROWS_PYARGS                                                                          \
  py::arg("logits"), py::arg("dtype"), py::arg("n_rows"), py::arg("vocab"), py::arg("row_stride"), \
      py::arg("temperature"), py::arg("temperature_scalar"), py::arg("labels"),                    \
      py::arg("labels_int32"), py::arg("ignore_index"), py::arg("mask")
  m.def("top_p_entropy_fwd_cpu", &top_p_entropy_fwd, nogil, EO_ROWS_PYARGS, py::arg("top_p"),
        py::arg("entropy_out"), py::arg("row_max_out"), py::arg("cut_e_out"),
        py::arg("cut_index_out"), py::arg("log_norm_out"), py::arg("num_threads"),
        "Per row: entropy of the renormalized exclusive top-p nucleus, row max, kept set "
        "(cut_e, cut_index int32), log S_K.");
  m.def("top_p_entropy_bwd_cpu", &top_p_entropy_bwd, nogil, EO_ROWS_PYARGS, py::arg("entropy"),
        py::arg("row_max"), py::arg("cut_e"), py::arg("cut_index"), py::arg("log_norm"),
        py::arg("grad_entropy"), py::arg("grad_logits"), py::arg("grad_row_stride"),
        py::arg("num_threads"),
        "grad_logits = -gH q (log q + H) / T on the saved nucleus, 0 elsewhere.");
  m.def("top_p_mask_cpu", &top_p_mask, nogil, EO_ROWS_PYARGS, py::arg("top_p"),
        py::arg("inclusive"), py::arg("mask_out"), py::arg("mask_out_row_stride"),
        py::arg("num_threads"), "The top-p nucleus as bytes 0/1 (a bool tensor).");
  m.def("min_p_logprobs_fwd_cpu", &min_p_logprobs_fwd, nogil, EO_ROWS_PYARGS, py::arg("min_p"),
        py::arg("logp_out"), py::arg("row_max_out"), py::arg("log_norm_out"),
        py::arg("num_threads"), "Per row: log q_y under the min-p proxy, row max, log S.");
  m.def("min_p_logprobs_bwd_cpu", &min_p_logprobs_bwd, nogil, EO_ROWS_PYARGS, py::arg("min_p"),
        py::arg("row_max"), py::arg("log_norm"), py::arg("grad_logp"), py::arg("grad_logits"),
        py::arg("grad_row_stride"), py::arg("num_threads"),
        "grad_logits = glogp (1[j=y] - q_j) / T on the kept set, 0 elsewhere.");
  m.def("token_stats_cpu", &token_stats, nogil, EO_ROWS_PYARGS, py::arg("lse_out"),
        py::arg("entropy_out"), py::arg("logp_out"), py::arg("max_logp_out"),
        py::arg("collision_out"), py::arg("varentropy_out"), py::arg("self_certainty_out"),
        py::arg("entropy_drift_out"), py::arg("num_threads"),
        "Per row: the eight statistics of TokenStats (logp_out may be 0).");
#undef EO_ROWS_PYARGS

  m.def("window_entropy_fwd_cpu", &window_entropy_fwd, nogil, py::arg("x"), py::arg("dtype"),
        py::arg("mask"), py::arg("cu"), py::arg("n_seq"), py::arg("n"), py::arg("window"),
        py::arg("offset"), py::arg("out"), py::arg("num_threads"),
        "out[t] = mean of the valid x in t's window within its sequence (acc dtype).");
  m.def("window_entropy_bwd_cpu", &window_entropy_bwd, nogil, py::arg("grad"), py::arg("dtype"),
        py::arg("mask"), py::arg("cu"), py::arg("n_seq"), py::arg("n"), py::arg("window"),
        py::arg("offset"), py::arg("share"), py::arg("out"), py::arg("num_threads"),
        "The transposed window sum of grad / #valid (grad, share, out of the acc dtype).");
  m.def("masked_quantile_cpu", &masked_quantile, nogil, py::arg("x"), py::arg("dtype"),
        py::arg("mask"), py::arg("cu"), py::arg("n_seq"), py::arg("n"), py::arg("q"),
        py::arg("n_q"), py::arg("v_lo"), py::arg("v_hi"), py::arg("count"), py::arg("num_threads"),
        "Per sequence (over all when cu is 0): v_(floor r), v_(ceil r) [Q, S] float64, count [S].");
  m.def("top_k_cpu", &top_k, nogil, py::arg("scores"), py::arg("dtype"), py::arg("eligible"),
        py::arg("n"), py::arg("k"), py::arg("out"), py::arg("num_threads"),
        "out = the k eligible entries of largest score (k read from an int64 [1]), ties lowest index.");
  m.def("random_keys_cpu", &random_keys, nogil, py::arg("seed"), py::arg("first"), py::arg("n"),
        py::arg("out"), py::arg("num_threads"),
        "out[i] = SplitMix64 output *first + i of the stream seeded with *seed, >> 2 (int64 [n]).");
  m.def("exp2_accumulate_row", &exp2_accumulate_row, py::arg("src"), py::arg("n"),
        py::arg("temperature"), py::arg("out"),
        "Test hook: (log_norm, entropy) of a float32 row through the CUDA kernels' per-thread math.");
  m.def("set_isa", &set_isa, py::arg("name"),
        "Force the CPU kernels: 'avx512', 'avx2', 'scalar' or 'auto'.");
  m.def("get_isa", &eoc::get_isa, "The CPU kernel set in use.");
  m.def("supported_isas", &eoc::supported_isas,
        "CPU kernel sets this machine can run, best first.");

  m.def("bf16_to_float", &convert<uint16_t, float, eo::bf16_to_float>, nogil, py::arg("src"),
        py::arg("dst"), py::arg("n"));
  m.def("half_to_float", &convert<uint16_t, float, eo::half_to_float>, nogil, py::arg("src"),
        py::arg("dst"), py::arg("n"));
  m.def("float_to_bf16", &convert<float, uint16_t, eo::float_to_bf16>, nogil, py::arg("src"),
        py::arg("dst"), py::arg("n"));
  m.def("float_to_half", &convert<float, uint16_t, eo::float_to_half>, nogil, py::arg("src"),
        py::arg("dst"), py::arg("n"));
}
