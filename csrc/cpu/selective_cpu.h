// Drivers of the selective row ops and token_stats: the ABI of csrc/README.md. Rows, temperature,
// labels and the row mask come in the RowsArgs of entropy_cpu.h; per-row arrays are of the
// compute type (double for fp64 logits, float otherwise) unless said otherwise. Inputs are
// validated in Python.
#pragma once

#include <stdint.h>

#include "cpu/entropy_cpu.h"

namespace entropy_ops {
namespace cpu {

// Exclusive nucleus of every row: entropy of the renormalized nucleus, the row's raw max, the
// kept set as (cut_e, cut_index int32) and log_norm = log S_K.
void top_p_entropy_fwd_cpu(const RowsArgs& r, double top_p, void* entropy_out, void* row_max_out,
                           void* cut_e_out, int32_t* cut_index_out, void* log_norm_out);

// grad (logits' dtype, row stride grad_row_stride, may be the logits) from the saved forward.
void top_p_entropy_bwd_cpu(const RowsArgs& r, const void* entropy, const void* row_max,
                           const void* cut_e, const int32_t* cut_index, const void* log_norm,
                           const void* grad_entropy, void* grad, int64_t grad_row_stride);

// out: bytes 0/1, row stride out_row_stride.
void top_p_mask_cpu(const RowsArgs& r, double top_p, bool inclusive, uint8_t* out,
                    int64_t out_row_stride);

void min_p_logprobs_fwd_cpu(const RowsArgs& r, double min_p, void* logp_out, void* row_max_out,
                            void* log_norm_out);

void min_p_logprobs_bwd_cpu(const RowsArgs& r, double min_p, const void* row_max,
                            const void* log_norm, const void* grad_logp, void* grad,
                            int64_t grad_row_stride);

// out: the 8 fields of TokenStats in order (lse, entropy, logp, max_logp, collision,
// varentropy, self_certainty, entropy_drift); logp may be null (then labels are not read).
void token_stats_cpu(const RowsArgs& r, void* const out[8]);

}  // namespace cpu
}  // namespace entropy_ops
