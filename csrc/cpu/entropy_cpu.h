// Drivers of the entropy / log-prob kernels: entropy_fwd_cpu and entropy_bwd_cpu, the ABI of
// csrc/README.md. Inputs are validated in Python; pointers may be null where the ABI says 0.
#pragma once

#include <stdint.h>

namespace entropy_ops {
namespace cpu {

struct RowsArgs {
  const void* logits;
  int dtype;           // DtypeCode; acc = double for kFloat64, float otherwise
  int64_t n_rows;
  int64_t vocab;
  int64_t row_stride;  // elements between row starts
  const void* temperature;  // n_rows acc values, or null: temperature_scalar for every row
  double temperature_scalar;
  const void* labels;  // n_rows int64 (int32 when labels_int32), or null
  bool labels_int32;
  int64_t ignore_index;
  const uint8_t* mask;  // n_rows bytes, or null; a 0 byte: the row is not read
  int num_threads;
};

// row_max_out, log_norm_out, entropy_out, logp_out: n_rows acc values each. row_max is the raw
// max of the row, log_norm = log sum_j e^((x_j - row_max) / T) (lse = row_max / T + log_norm);
// 0 for masked rows, log_norm NaN for rows without a distribution (all -inf, NaN, +inf).
void entropy_fwd_cpu(const RowsArgs& r, void* row_max_out, void* log_norm_out, void* entropy_out,
                     void* logp_out);

// row_max, log_norm, entropy: saved forward outputs; grad_entropy, grad_logp: upstream gradients
// or null. log p_j = (x_j - row_max) / T - log_norm: every digit kept, where x_j / T - lse would
// inherit the fp32 lse's rounding times 1/T. grad_logits: logits' dtype, row stride
// grad_row_stride; may be logits itself.
void entropy_bwd_cpu(const RowsArgs& r, const void* row_max, const void* log_norm,
                     const void* entropy, const void* grad_entropy, const void* grad_logp,
                     void* grad_logits, int64_t grad_row_stride);

}  // namespace cpu
}  // namespace entropy_ops
