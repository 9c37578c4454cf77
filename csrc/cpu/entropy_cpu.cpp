#include "cpu/entropy_cpu.h"

#include "cpu/entropy_kernels.h"
#include "cpu/isa.h"
#include "cpu/rows_common.h"
#include "cpu/thread_pool.h"

namespace entropy_ops {
namespace cpu {
namespace {

template <typename Acc>
void fwd_rows(const RowsArgs& r, FwdRowFn<Acc> fwd, Acc* row_max_out, Acc* log_norm_out,
              Acc* ent_out, Acc* logp_out) {
  parallel_for(r.n_rows, row_workers(r), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Acc row_max = 0, log_norm = 0, ent = 0, logp = 0;
      if (row_live(r, i)) {
        const void* row = row_at(r.logits, i, r.row_stride, r.dtype);
        const Acc s = row_inv_temperature<Acc>(r, i);
        const OnlineSoftmax<Acc> st = fwd(row, r.vocab, s);
        const SoftmaxStats<Acc> stats = finalize(st, s);
        row_max = st.max;
        log_norm = stats.log_norm;
        ent = stats.entropy;
        if (r.labels != nullptr) {
          const int64_t y = row_label(r, i);
          if (y == r.ignore_index) {
            logp = 0;
          } else if (y < 0 || y >= r.vocab || eo_isnan(stats.lse)) {
            logp = quiet_nan<Acc>();
          } else {
            // z_y - lse written as (x_y - max) / T - log S: the shift is exact, so a row shifted
            // by 1e4 keeps full precision in its log-prob too.
            logp = label_log_prob(row_logit<Acc>(row, r.dtype, y), st.max, row_temperature<Acc>(r, i),
                                  stats.log_norm);
          }
        }
      }
      if (row_max_out) row_max_out[i] = row_max;
      if (log_norm_out) log_norm_out[i] = log_norm;
      if (ent_out) ent_out[i] = ent;
      if (logp_out) logp_out[i] = logp;
    }
  });
}

template <typename Acc>
void bwd_rows(const RowsArgs& r, BwdRowFn<Acc> bwd, const Acc* row_max, const Acc* log_norm,
              const Acc* ent, const Acc* grad_ent, const Acc* grad_logp, void* grad,
              int64_t grad_row_stride) {
  parallel_for(r.n_rows, row_workers(r), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      char* grow = row_at(grad, i, grad_row_stride, r.dtype);
      if (!row_live(r, i)) {
        fill_row(grow, r.dtype, r.vocab, false);
        continue;
      }
      const void* row = row_at(r.logits, i, r.row_stride, r.dtype);
      BwdRowArgs<Acc> a;
      a.inv_t = row_inv_temperature<Acc>(r, i);
      a.x_shift = row_max[i];
      a.log_sum = log_norm[i];
      a.entropy = ent[i];
      a.grad_entropy = grad_ent ? grad_ent[i] : Acc(0);
      a.grad_logp = 0;
      a.label = -1;
      if (grad_logp != nullptr && r.labels != nullptr) {
        const int64_t y = row_label(r, i);
        if (y != r.ignore_index) {
          a.grad_logp = grad_logp[i];
          // An out-of-range label (unchecked input) keeps the -p_j part and drops 1[j=y].
          a.label = (y >= 0 && y < r.vocab) ? y : -1;
        }
      }
      bwd(row, grow, r.vocab, a);
    }
  });
}

}  // namespace

void entropy_fwd_cpu(const RowsArgs& r, void* row_max_out, void* log_norm_out, void* entropy_out,
                     void* logp_out) {
  if (r.n_rows <= 0) return;
  if (r.dtype == kFloat64) {
    fwd_rows<double>(r, entropy_fwd_row_f64, static_cast<double*>(row_max_out),
                     static_cast<double*>(log_norm_out), static_cast<double*>(entropy_out),
                     static_cast<double*>(logp_out));
    return;
  }
  fwd_rows<float>(r, active_kernels().fwd[r.dtype], static_cast<float*>(row_max_out),
                  static_cast<float*>(log_norm_out), static_cast<float*>(entropy_out),
                  static_cast<float*>(logp_out));
}

void entropy_bwd_cpu(const RowsArgs& r, const void* row_max, const void* log_norm,
                     const void* entropy, const void* grad_entropy, const void* grad_logp,
                     void* grad_logits, int64_t grad_row_stride) {
  if (r.n_rows <= 0) return;
  if (r.dtype == kFloat64) {
    bwd_rows<double>(r, entropy_bwd_row_f64, static_cast<const double*>(row_max),
                     static_cast<const double*>(log_norm), static_cast<const double*>(entropy),
                     static_cast<const double*>(grad_entropy),
                     static_cast<const double*>(grad_logp), grad_logits, grad_row_stride);
    return;
  }
  bwd_rows<float>(r, active_kernels().bwd[r.dtype], static_cast<const float*>(row_max),
                  static_cast<const float*>(log_norm), static_cast<const float*>(entropy),
                  static_cast<const float*>(grad_entropy), static_cast<const float*>(grad_logp),
                  grad_logits, grad_row_stride);
}

}  // namespace cpu
}  // namespace entropy_ops
