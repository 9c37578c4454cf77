// token_stats_cuda: the eight per-row statistics of token_stats (SPEC §3.1; token_stats_torch in
// entropy_ops/backends/torch_backend.py defines them), one block per row (selective_rows.cuh).
//
//   pass 1  the online-softmax state {max, S, sum_exp_z} (thread_state / block_merge, as the
//           entropy kernels): lse, entropy, max_logp = -log S, and the label's log-prob;
//   pass 2  with log p_j = (x_j - max) / T - log S:  collision = sum p^2,
//           varentropy = sum p (log p + H)^2 (never negative, no cancellation of two H^2 terms),
//           entropy_drift = sum p^2 (log p + H), and sum_j (x_j - max) for
//           self_certainty = lse - mean z - log V = log S - mean (x - max) / T - log V.
// Everything is relative to the row's own max (shifted), so rows shifted by 1e4 keep their digits;
// lse and self_certainty are finished in double and rounded once (as token_stats_cpu does), so
// they are never further from the float64 reference than one correct rounding.
#include "cuda/launchers.h"
#include "cuda/selective_rows.cuh"
#include "cuda/util.cuh"

namespace entropy_ops {
namespace gpu {
namespace {

struct StatsOut {
  float* lse;
  float* entropy;
  float* logp;  // null without labels
  float* max_logp;
  float* collision;
  float* varentropy;
  float* self_certainty;
  float* entropy_drift;
};

__device__ inline void store_all(const StatsOut& o, int64_t i, float value, float logp) {
  o.lse[i] = o.entropy[i] = o.max_logp[i] = o.collision[i] = value;
  o.varentropy[i] = o.self_certainty[i] = o.entropy_drift[i] = value;
  if (o.logp != nullptr) o.logp[i] = logp;
}

template <int Code, bool kAligned>
__global__ void __launch_bounds__(kSelThreads)
token_stats_kernel(RowArgs r, StatsOut o) {
  const int len = int(r.vocab);
  for_each_row(r.n_rows, [&](int64_t i) {
    if (!row_active(r, i)) {  // not read
      if (threadIdx.x == 0) store_all(o, i, 0.0f, 0.0f);
      return;
    }
    const float s = inv_temperature(r, i);
    const void* row = row_ptr<Code>(r.logits, i, r.row_stride);
    const OnlineSoftmax<float> st = block_merge<kSelThreads>(
        thread_state<Code, kAligned>(row, len, threadIdx.x, kSelThreads, s), s);
    const SoftmaxStats<float> stats = finalize(st, s);
    const bool has_label = r.labels != nullptr;
    const int64_t y = has_label ? label_at(r, i) : 0;
    if (eo_isnan(stats.entropy)) {  // all -inf, or NaN/+inf entries
      if (threadIdx.x == 0) {
        store_all(o, i, quiet_nan<float>(), y == r.ignore_index ? 0.0f : quiet_nan<float>());
      }
      return;
    }
    const float log_s = eo_log(st.sum_exp);
    const float h = stats.entropy;
    float acc[3] = {0.0f, 0.0f, 0.0f};  // collision, varentropy, drift
    // sum_j (x_j - max) in double: -inf with a -inf logit, so self_certainty = +inf, as the
    // reference says; a float sum would overflow to -inf on a few finfo.min entries (the
    // masked_fill idiom), where the mean is finite.
    double sum_d[1] = {0.0};
    for_each_group<Code, kAligned>(row, len, [&](const auto& x, int, int n) {
      double group_d = 0.0;
#pragma unroll
      for (int e = 0; e < kVecWidth<Code>; ++e) {
        if (e >= n) continue;  // padding would add -inf to the sum of x - max
        const float d = x[e] - st.max;
        // x - max rounded to fp32 would put the same rounding into every one of many equal
        // logits (a row masked with one value): in double the difference is exact.
        group_d += double(x[e]) - double(st.max);
        const float lp = fmaf(d, s, -log_s);
        if (lp < kExpFloor) continue;  // p_j = 0 terms add exactly 0
        const float p = eo_exp(lp);
        const float c = lp + h;
        acc[0] += p * p;
        acc[1] += p * c * c;
        acc[2] += p * p * c;
      }
      sum_d[0] += group_d;
    });
    block_sum(acc);
    block_sum(sum_d);
    if (threadIdx.x != 0) return;
    // T as the reference takes it (the per-row fp32 value, or the Python float itself): max * s
    // in fp32 would add the rounding of 1/T, ~4e-4 on a row shifted by 1e4.
    const double t = temperature_at(r, i);
    float logp = 0.0f;
    if (has_label && y != r.ignore_index) {
      logp = (y < 0 || y >= r.vocab) ? quiet_nan<float>()
                                     : label_log_prob(load_elem<Code>(row, y), st.max, t, log_s);
    }
    const double vocab = double(len);
    o.lse[i] = float(double(st.max) / t + double(log_s));
    o.entropy[i] = h;
    if (o.logp != nullptr) o.logp[i] = logp;
    o.max_logp[i] = -log_s;
    o.collision[i] = acc[0];
    o.varentropy[i] = acc[1];
    o.self_certainty[i] = float(double(log_s) - sum_d[0] / vocab / t - log(vocab));
    o.entropy_drift[i] = acc[2];
  });
}

}  // namespace
}  // namespace gpu

cudaError_t token_stats_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                             int64_t row_stride, const float* temperature,
                             double temperature_scalar, const void* labels, bool labels_int32,
                             int64_t ignore_index, const uint8_t* mask, float* lse_out,
                             float* entropy_out, float* logp_out, float* max_logp_out,
                             float* collision_out, float* varentropy_out,
                             float* self_certainty_out, float* entropy_drift_out, int device,
                             cudaStream_t stream) {
  using namespace gpu;
  if (n_rows <= 0) return cudaSuccess;
  if (!launchable(dtype, 0, 0) || (labels == nullptr) != (logp_out == nullptr)) {
    return cudaErrorInvalidValue;
  }
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  const RowArgs r = make_row_args(logits, n_rows, vocab, row_stride, temperature,
                                  temperature_scalar, labels, labels_int32, ignore_index, mask);
  const StatsOut o = {lse_out,       entropy_out,    logp_out,           max_logp_out,
                      collision_out, varentropy_out, self_certainty_out, entropy_drift_out};
  return launch_rows(dtype, rows_aligned(logits, row_stride, dtype), n_rows, stream,
                     [&](auto tag, dim3 grid, dim3 block, cudaStream_t st) {
    using Tag = decltype(tag);
    token_stats_kernel<Tag::kCode, Tag::kAligned><<<grid, block, 0, st>>>(r, o);
  });
}

}  // namespace entropy_ops
