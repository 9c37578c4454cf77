// Drivers of the token-level ops (SPEC §3.2): the rules are those of
// entropy_ops/backends/token_kernel.py. Tokens are packed: `x` holds n contiguous values of dtype
// code `dtype`, `mask` n bytes 0/1 or null (every token valid), `cu` n_seq + 1 int64 offsets
// (sequence s is [cu[s], cu[s + 1])). Inputs are validated in Python; nothing here allocates a
// buffer that outlives the call.
#pragma once

#include <stdint.h>

namespace entropy_ops {
namespace cpu {

// Dtype code of int64 scores (top_k only), after the float codes 0..3 of dtype.h.
constexpr int kInt64Scores = 4;

// out[t] (acc: float, double for code 3) = mean of the valid x_j, j in
// [min(t + offset, end_t), min(t + offset + window, end_t)); 0 where none.
void window_entropy_fwd_cpu(const void* x, int dtype, const uint8_t* mask, const int64_t* cu,
                            int64_t n_seq, int64_t n, int64_t window, int64_t offset, void* out,
                            int num_threads);

// grad_x[j] = [valid j] sum over the t whose window holds j of grad[t] / #valid(t). `grad`,
// `share` (n scratch values) and `out` are of the acc type given by `dtype` (0: float, 3: double).
void window_entropy_bwd_cpu(const void* grad, int dtype, const uint8_t* mask, const int64_t* cu,
                            int64_t n_seq, int64_t n, int64_t window, int64_t offset, void* share,
                            void* out, int num_threads);

// The two order statistics of every quantile: with m the valid entries (mask and not NaN) of a
// sequence (of all n tokens when cu is null, n_seq = 1) and r = max(q (m - 1), 0) in float64,
// v_lo[i, s] = v_(floor r), v_hi[i, s] = v_(ceil r) as float64 ([n_q, n_seq] row-major), NaN
// where m = 0; count[s] = m. The interpolation is left to the caller.
void masked_quantile_cpu(const void* x, int dtype, const uint8_t* mask, const int64_t* cu,
                         int64_t n_seq, int64_t n, const double* q, int64_t n_q, double* v_lo,
                         double* v_hi, int64_t* count, int num_threads);

// out[j] = 1 for the min(*k, #eligible) eligible entries of largest score, ties to the lowest
// index, -0.0 == +0.0; all 0 when *k <= 0. dtype: a float code or kInt64Scores.
void top_k_cpu(const void* scores, int dtype, const uint8_t* eligible, int64_t n, const int64_t* k,
               uint8_t* out, int num_threads);

// out[i] = random_key(*seed, *first + i) for i in [0, n) (entropy_ops/random_keys.h): Clip-Cov's
// keys in [0, 2^62), the same bits for any thread count.
void random_keys_cpu(const int64_t* seed, const int64_t* first, int64_t n, int64_t* out,
                     int num_threads);

}  // namespace cpu
}  // namespace entropy_ops
