// min_p_logprobs_{fwd,bwd}_cpu (selective_cpu.h): rows over the thread pool, each row by one
// worker: a max pass, then one pass summing the kept e_j >= min_p (selective_kernels.h).
#include <math.h>

#include "cpu/rows_common.h"
#include "cpu/selective_cpu.h"
#include "cpu/selective_kernels.h"
#include "cpu/thread_pool.h"
#include "entropy_ops/nucleus.h"

namespace entropy_ops {
namespace cpu {
namespace {

template <typename Acc>
void fwd_rows(const RowsArgs& r, const SelectiveRowOps<Acc>& ops, Acc min_p, Acc* logp,
              Acc* row_max, Acc* log_norm) {
  parallel_for(r.n_rows, row_workers(r), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      logp[i] = row_max[i] = log_norm[i] = 0;
      if (!row_live(r, i)) continue;
      const void* row = row_at(r.logits, i, r.row_stride, r.dtype);
      const Acc s = row_inv_temperature<Acc>(r, i);
      const MinPRow<Acc> k = ops.min_p_sums(row, r.vocab, s, min_p);
      const int64_t y = r.labels ? row_label(r, i) : r.ignore_index;
      if (k.bad) {
        row_max[i] = log_norm[i] = quiet_nan<Acc>();
        logp[i] = y == r.ignore_index ? Acc(0) : quiet_nan<Acc>();
        continue;
      }
      // S >= 1: the max token (e = 1 >= min_p) is always kept.
      const Acc ln = eo_log(k.sum_e);
      row_max[i] = k.max;
      log_norm[i] = ln;
      if (y == r.ignore_index) continue;
      if (y < 0 || y >= r.vocab) {
        logp[i] = quiet_nan<Acc>();
        continue;
      }
      const Acc x_y = row_logit<Acc>(row, r.dtype, y);
      logp[i] = min_p_kept(ops.e_at(x_y, k.max, s), min_p)
                    ? label_log_prob(x_y, k.max, row_temperature<Acc>(r, i), ln)
                    : -static_cast<Acc>(INFINITY);
    }
  });
}

template <typename Acc>
void bwd_rows(const RowsArgs& r, const SelectiveRowOps<Acc>& ops, Acc min_p, const Acc* row_max,
              const Acc* log_norm, const Acc* grad_logp, void* grad, int64_t grad_row_stride) {
  parallel_for(r.n_rows, row_workers(r), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      void* grow = row_at(grad, i, grad_row_stride, r.dtype);
      const Acc g = grad_logp ? grad_logp[i] : Acc(0);
      const int64_t y = r.labels ? row_label(r, i) : r.ignore_index;
      // Zero rows: masked, zero upstream gradient, ignored label, or an out-of-range one (its
      // logp is a NaN constant; the op rejects such labels on CPU before any kernel runs).
      if (!row_live(r, i) || g == 0 || y == r.ignore_index || y < 0 || y >= r.vocab) {
        fill_row(grow, r.dtype, r.vocab, false);
        continue;
      }
      if (eo_isnan(log_norm[i])) {  // a bad row
        fill_row(grow, r.dtype, r.vocab, true);
        continue;
      }
      const void* row = row_at(r.logits, i, r.row_stride, r.dtype);
      MinPBwdArgs<Acc> a;
      a.inv_t = row_inv_temperature<Acc>(r, i);
      a.row_max = row_max[i];
      a.min_p = min_p;
      a.inv_norm = eo_exp(-log_norm[i]);
      a.grad_logp = g;
      a.label = y;
      if (!min_p_kept(ops.e_at(row_logit<Acc>(row, r.dtype, y), a.row_max, a.inv_t), min_p)) {
        fill_row(grow, r.dtype, r.vocab, false);  // a filtered label: logp = -inf, a constant
        continue;
      }
      ops.min_p_bwd(row, grow, r.vocab, a);
    }
  });
}

}  // namespace

void min_p_logprobs_fwd_cpu(const RowsArgs& r, double min_p, void* logp_out, void* row_max_out,
                            void* log_norm_out) {
  if (r.n_rows <= 0) return;
  if (r.dtype == kFloat64) {
    fwd_rows<double>(r, kSelectiveF64, min_p, static_cast<double*>(logp_out),
                     static_cast<double*>(row_max_out), static_cast<double*>(log_norm_out));
    return;
  }
  fwd_rows<float>(r, selective_ops(r.dtype), static_cast<float>(min_p),
                  static_cast<float*>(logp_out), static_cast<float*>(row_max_out),
                  static_cast<float*>(log_norm_out));
}

void min_p_logprobs_bwd_cpu(const RowsArgs& r, double min_p, const void* row_max,
                            const void* log_norm, const void* grad_logp, void* grad,
                            int64_t grad_row_stride) {
  if (r.n_rows <= 0) return;
  if (r.dtype == kFloat64) {
    bwd_rows<double>(r, kSelectiveF64, min_p, static_cast<const double*>(row_max),
                     static_cast<const double*>(log_norm), static_cast<const double*>(grad_logp),
                     grad, grad_row_stride);
    return;
  }
  bwd_rows<float>(r, selective_ops(r.dtype), static_cast<float>(min_p),
                  static_cast<const float*>(row_max), static_cast<const float*>(log_norm),
                  static_cast<const float*>(grad_logp), grad, grad_row_stride);
}

}  // namespace cpu
}  // namespace entropy_ops
