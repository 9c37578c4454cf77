// Host entry points of the CUDA kernels, as called by cuda_bindings.cpp.
//
// Torch-free (SPEC §1): pointers come from Python (`t.data_ptr()`), the stream is the tensor's
// own (`torch.cuda.current_stream(t.device).cuda_stream`), and every function returns a
// cudaError_t instead of throwing, so this header is plain C++ for the host compiler.
#pragma once

#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

namespace entropy_ops {

// ptr[0, n) = value on `stream` of `device`; n == 0 launches nothing.
cudaError_t fill_f32_cuda(float* ptr, int64_t n, float value, int device, cudaStream_t stream);

// entropy forward and backward (csrc/README.md gives the ABI): the CPU ABI's arguments (fp32,
// bf16 and fp16 only; accumulation and per-row arrays in fp32), for the forward a workspace of
// entropy_fwd_workspace_cuda(n_rows, vocab) floats for the partial states of split rows (it may
// be null when that size is 0), and the device and stream. n_rows == 0 launches nothing.
// cudaErrorInvalidValue: a dtype code other than 0..2, or a workspace smaller than required.
int64_t entropy_fwd_workspace_cuda(int64_t n_rows, int64_t vocab);

cudaError_t entropy_fwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                             int64_t row_stride, const float* temperature,
                             double temperature_scalar, const void* labels, bool labels_int32,
                             int64_t ignore_index, const uint8_t* mask, float* row_max_out,
                             float* log_norm_out, float* entropy_out, float* logp_out,
                             float* workspace, int64_t workspace_size, int device,
                             cudaStream_t stream);

cudaError_t entropy_bwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                             int64_t row_stride, const float* temperature,
                             double temperature_scalar, const void* labels, bool labels_int32,
                             int64_t ignore_index, const uint8_t* mask, const float* row_max,
                             const float* log_norm, const float* entropy,
                             const float* grad_entropy, const float* grad_logp, void* grad_logits,
                             int64_t grad_row_stride, int device, cudaStream_t stream);

// The selective row ops and token_stats (csrc/README.md gives the ABI; the rules are those of
// entropy_ops/backends/kernel.py): one block per row, the row arguments of entropy_fwd_cuda
// (top_p without labels), no workspace. n_rows == 0 launches nothing. cudaErrorInvalidValue: a
// dtype code other than 0..2, top_p with vocab >= kTopPMaxVocab, min_p without labels, or
// token_stats with exactly one of labels / logp_out null.
constexpr int64_t kTopPMaxVocab = int64_t(1) << 23;  // keeps the integer mass sums < 2^63

cudaError_t top_p_entropy_fwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                                   int64_t row_stride, const float* temperature,
                                   double temperature_scalar, const uint8_t* mask, double top_p,
                                   float* entropy_out, float* row_max_out, float* cut_e_out,
                                   int32_t* cut_index_out, float* log_norm_out, int device,
                                   cudaStream_t stream);

cudaError_t top_p_entropy_bwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                                   int64_t row_stride, const float* temperature,
                                   double temperature_scalar, const uint8_t* mask,
                                   const float* entropy, const float* row_max, const float* cut_e,
                                   const int32_t* cut_index, const float* log_norm,
                                   const float* grad_entropy, void* grad_logits,
                                   int64_t grad_row_stride, int device, cudaStream_t stream);

cudaError_t top_p_mask_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                            int64_t row_stride, const float* temperature,
                            double temperature_scalar, const uint8_t* mask, double top_p,
                            bool inclusive, uint8_t* mask_out, int64_t out_row_stride, int device,
                            cudaStream_t stream);

cudaError_t min_p_logprobs_fwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                                    int64_t row_stride, const float* temperature,
                                    double temperature_scalar, const void* labels,
                                    bool labels_int32, int64_t ignore_index, const uint8_t* mask,
                                    double min_p, float* logp_out, float* row_max_out,
                                    float* log_norm_out, int device, cudaStream_t stream);

cudaError_t min_p_logprobs_bwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                                    int64_t row_stride, const float* temperature,
                                    double temperature_scalar, const void* labels,
                                    bool labels_int32, int64_t ignore_index, const uint8_t* mask,
                                    double min_p, const float* row_max, const float* log_norm,
                                    const float* grad_logp, void* grad_logits,
                                    int64_t grad_row_stride, int device, cudaStream_t stream);

cudaError_t token_stats_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                             int64_t row_stride, const float* temperature,
                             double temperature_scalar, const void* labels, bool labels_int32,
                             int64_t ignore_index, const uint8_t* mask, float* lse_out,
                             float* entropy_out, float* logp_out, float* max_logp_out,
                             float* collision_out, float* varentropy_out,
                             float* self_certainty_out, float* entropy_drift_out, int device,
                             cudaStream_t stream);

// The token-level kernels (entropy_ops/backends/token_kernel.py gives the rules): packed [N]
// tokens in their dtype (codes 0..3; top_k scores also kInt64Code = 4), mask / eligible as bool
// bytes or null (all valid), cu int64 [n_seq + 1] offsets. n == 0 launches nothing. Buffers come
// from Python: window_entropy_bwd's `share` ([n], the gradient's dtype), radix_select's rank,
// prefix (zeroed) and hist (n_targets * 256 zeroed counts, zeroed again when it returns).
// window_entropy_fwd: out [n] in the accumulation dtype (float64 for code 3, else float32).
// window_entropy_bwd: grad and out [n] in the accumulation dtype (code 0 or 3).
cudaError_t window_entropy_fwd_cuda(const void* x, int dtype, const uint8_t* mask, const int64_t* cu,
                                    int64_t n, int64_t n_seq, int64_t window, int64_t offset,
                                    void* out, int device, cudaStream_t stream);
cudaError_t window_entropy_bwd_cuda(const void* grad, int dtype, const uint8_t* mask, const int64_t* cu,
                                    int64_t n, int64_t n_seq, int64_t window, int64_t offset,
                                    void* share, void* out, int device, cudaStream_t stream);
// Per sequence s and quantile q[i]: count[s] valid entries (mask and not NaN) and the float64
// order statistics v_lo[i, s] = v_(floor r), v_hi[i, s] = v_(ceil r), r = max(q (n - 1), 0); NaN
// where count is 0.
cudaError_t masked_quantile_seq_cuda(const void* x, int dtype, const uint8_t* mask, const int64_t* cu,
                                     int64_t n_seq, const double* q, int64_t n_q, double* v_lo,
                                     double* v_hi, int64_t* count, int device, cudaStream_t stream);
// Over all n entries (valid: non-NaN and `valid` true), for each target t the entry of 0-based
// rank[t] in ascending (descending) order: prefix[t] its key's bits above the dtype's low bits,
// rank[t] its rank among the entries of that key, value[t] (ascending floats; may be null) its
// float64 value. 2 launches per 8-bit digit.
cudaError_t radix_select_cuda(const void* x, int dtype, const uint8_t* valid, int64_t n, int64_t* rank,
                              int64_t* prefix, int64_t n_targets, unsigned long long* hist,
                              double* value, bool descending, int device, cudaStream_t stream);
// above[i] / tie[i] (bool bytes): eligible and descending key (above the low bits) < / == *threshold.
cudaError_t top_k_mark_cuda(const void* scores, int dtype, const uint8_t* eligible, int64_t n,
                            const int64_t* threshold, uint8_t* above, uint8_t* tie, int device,
                            cudaStream_t stream);
// Clip-Cov's random keys: out[i] = random_key(*seed, *first + i) for i < n (int64 [n];
// entropy_ops/random_keys.h), seed and first int64 [1] device pointers read by the kernel.
cudaError_t random_keys_cuda(const int64_t* seed, const int64_t* first, int64_t n, int64_t* out,
                             int device, cudaStream_t stream);

// Version and device queries; none of them allocates or synchronizes.
cudaError_t driver_version_cuda(int* version);   // 0 when no driver is installed
cudaError_t runtime_version_cuda(int* version);  // the static cudart this module carries
cudaError_t device_count_cuda(int* count);  // 0, not an error, when there is no GPU or driver

// Whether kernels can run here; when not, `reason` says why (no driver, driver older than the
// static cudart needs, no device). Calls only the queries above.
bool available_cuda(std::string* reason);

}  // namespace entropy_ops
