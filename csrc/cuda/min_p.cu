// min_p_logprobs_fwd_cuda / min_p_logprobs_bwd_cuda: Lp-Reg's min-p proxy of
// entropy_ops/backends/kernel.py, one block per row (selective_rows.cuh).
//
//   kept_j = e_j >= min_p (min_p_kept, nucleus.h), e_j = select_e(x_j, max, log2(e) / T)
//   log_norm = log sum_kept e_j,  logp = (x_y - max) / T - log_norm  (-inf when y is filtered)
//   grad_j = grad_logp (1[j = y] - q_j) / T over kept j, q_j = exp((x_j - max) / T - log_norm)
//
// Forward: two passes over the row (its max, then the kept sum: kept_j needs the final max).
// Backward: one read of x and one write of the gradient; the saved row_max gives the same e_j.
#include "cuda/launchers.h"
#include "cuda/selective_rows.cuh"
#include "cuda/util.cuh"

namespace entropy_ops {
namespace gpu {
namespace {

struct MinPOut {
  float* logp;
  float* row_max;
  float* log_norm;
};

template <int Code, bool kAligned>
__global__ void __launch_bounds__(kSelThreads)
min_p_fwd_kernel(RowArgs r, float min_p, MinPOut o) {
  const int len = int(r.vocab);
  for_each_row(r.n_rows, [&](int64_t i) {
    if (!row_active(r, i)) {  // not read
      if (threadIdx.x == 0) o.logp[i] = o.row_max[i] = o.log_norm[i] = 0.0f;
      return;
    }
    const void* row = row_ptr<Code>(r.logits, i, r.row_stride);
    const int64_t y = label_at(r, i);
    const RowMax rm = row_max_pass<Code, kAligned>(row, len);
    if (rm.bad) {
      if (threadIdx.x == 0) {
        o.logp[i] = y == r.ignore_index ? 0.0f : quiet_nan<float>();
        o.row_max[i] = rm.value;
        o.log_norm[i] = quiet_nan<float>();
      }
      return;
    }
    const float s = inv_temperature(r, i);
    const float k = select_k(s);
    float sum[1] = {0.0f};
    for_each_group<Code, kAligned>(row, len, [&](const auto& x, int, int) {
#pragma unroll
      for (int e = 0; e < kVecWidth<Code>; ++e) {  // padding: e = 0 adds exactly 0
        const float ev = select_e(x[e], rm.value, k);
        if (min_p_kept(ev, min_p)) sum[0] += ev;
      }
    });
    block_sum(sum);  // >= 1: the max token (e = 1 >= min_p) is always kept
    if (threadIdx.x != 0) return;
    const float log_norm = eo_log(sum[0]);
    float logp;
    if (y == r.ignore_index) {
      logp = 0.0f;
    } else if (y < 0 || y >= r.vocab) {
      logp = quiet_nan<float>();
    } else {
      const float x_y = load_elem<Code>(row, y);
      logp = min_p_kept(select_e(x_y, rm.value, k), min_p)
                 ? label_log_prob(x_y, rm.value, temperature_at(r, i), log_norm)
                 : -INFINITY;
    }
    o.logp[i] = logp;
    o.row_max[i] = rm.value;
    o.log_norm[i] = log_norm;
  });
}

struct MinPBwdIn {
  const float* row_max;
  const float* log_norm;
  const float* grad_logp;  // null: no gradient
  void* grad;
  int64_t grad_row_stride;
};

template <int Code, bool kAligned>
__global__ void __launch_bounds__(kSelThreads)
min_p_bwd_kernel(RowArgs r, float min_p, MinPBwdIn b) {
  const int len = int(r.vocab);
  for_each_row(r.n_rows, [&](int64_t i) {
    void* grad = row_ptr<Code>(b.grad, i, b.grad_row_stride);
    const int64_t y = label_at(r, i);
    const float g_l = b.grad_logp != nullptr ? b.grad_logp[i] : 0.0f;
    if (!row_active(r, i) || y == r.ignore_index || g_l == 0.0f) {
      fill_row<Code, kAligned>(grad, len, 0.0f);
      return;
    }
    const float row_max = b.row_max[i];
    // A bad row (NaN/+inf, all -inf) or an out-of-range label (unchecked input): NaN logp, so a
    // NaN gradient row, as the Triton kernel writes it.
    if (!(fabsf(row_max) < INFINITY) || y < 0 || y >= r.vocab) {
      fill_row<Code, kAligned>(grad, len, quiet_nan<float>());
      return;
    }
    const float s = inv_temperature(r, i);
    const float k = select_k(s);
    const void* x_row = row_ptr<Code>(r.logits, i, r.row_stride);
    if (!min_p_kept(select_e(load_elem<Code>(x_row, y), row_max, k), min_p)) {
      fill_row<Code, kAligned>(grad, len, 0.0f);  // a filtered label: logp = -inf, a constant
      return;
    }
    const int label = int(y);
    const float log_norm = b.log_norm[i];
    map_groups<Code, kAligned>(x_row, grad, len, [&](const auto& x, int j, int n, auto& out) {
#pragma unroll
      for (int e = 0; e < kVecWidth<Code>; ++e) {
        float g = 0.0f;
        if (e < n && min_p_kept(select_e(x[e], row_max, k), min_p)) {
          const float q = eo_exp(fmaf(x[e] - row_max, s, -log_norm));  // -inf logit: q = 0
          g = (j + e == label ? g_l - g_l * q : -g_l * q) * s;
        }
        out[e] = g;
      }
    });
  });
}

// launch_selective with labels (required: none is cudaErrorInvalidValue).
template <typename F>
cudaError_t launch_min_p(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                         int64_t row_stride, const float* temperature, double temperature_scalar,
                         const void* labels, bool labels_int32, int64_t ignore_index,
                         const uint8_t* mask, bool out_aligned, int device, cudaStream_t stream,
                         F&& launch) {
  return launch_selective(logits, dtype, n_rows, vocab, row_stride, temperature,
                          temperature_scalar, labels, labels_int32, ignore_index, mask,
                          labels != nullptr, out_aligned, device, stream, launch);
}

}  // namespace
}  // namespace gpu

cudaError_t min_p_logprobs_fwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                                    int64_t row_stride, const float* temperature,
                                    double temperature_scalar, const void* labels,
                                    bool labels_int32, int64_t ignore_index, const uint8_t* mask,
                                    double min_p, float* logp_out, float* row_max_out,
                                    float* log_norm_out, int device, cudaStream_t stream) {
  using namespace gpu;
  const MinPOut o = {logp_out, row_max_out, log_norm_out};
  // min_p in the compute type, as torch compares an fp32 tensor with a Python float.
  const float min_p_f = static_cast<float>(min_p);
  return launch_min_p(logits, dtype, n_rows, vocab, row_stride, temperature, temperature_scalar,
                      labels, labels_int32, ignore_index, mask, true, device, stream,
                      [&](auto tag, const RowArgs& r, dim3 grid, dim3 block, cudaStream_t st) {
    using Tag = decltype(tag);
    min_p_fwd_kernel<Tag::kCode, Tag::kAligned><<<grid, block, 0, st>>>(r, min_p_f, o);
  });
}

cudaError_t min_p_logprobs_bwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                                    int64_t row_stride, const float* temperature,
                                    double temperature_scalar, const void* labels,
                                    bool labels_int32, int64_t ignore_index, const uint8_t* mask,
                                    double min_p, const float* row_max, const float* log_norm,
                                    const float* grad_logp, void* grad_logits,
                                    int64_t grad_row_stride, int device, cudaStream_t stream) {
  using namespace gpu;
  const MinPBwdIn b = {row_max, log_norm, grad_logp, grad_logits, grad_row_stride};
  const float min_p_f = static_cast<float>(min_p);
  return launch_min_p(logits, dtype, n_rows, vocab, row_stride, temperature, temperature_scalar,
                      labels, labels_int32, ignore_index, mask,
                      rows_aligned(grad_logits, grad_row_stride, dtype), device, stream,
                      [&](auto tag, const RowArgs& r, dim3 grid, dim3 block, cudaStream_t st) {
    using Tag = decltype(tag);
    min_p_bwd_kernel<Tag::kCode, Tag::kAligned><<<grid, block, 0, st>>>(r, min_p_f, b);
  });
}

}  // namespace entropy_ops
