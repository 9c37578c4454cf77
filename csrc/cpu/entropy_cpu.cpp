#include "cpu/entropy_cpu.h"

#include "cpu/entropy_kernels.h"
#include "cpu/isa.h"
#include "cpu/rows_common.h"
#include "cpu/thread_pool.h"

namespace entropy_ops {
namespace cpu {
namespace {

// Above this |lse| an fp32 lse carries an absolute error (half an ulp, >= 3.8e-6) large enough
// to show in p_j = e^(z_j - lse): the backward then recomputes the row's exact max and log S
// (one more exp per element, for such rows only; LLM logits stay well below).
constexpr float kExactLseBound = 64.0f;

template <typename Acc>
void fwd_rows(const RowsArgs& r, FwdRowFn<Acc> fwd, Acc* lse_out, Acc* ent_out, Acc* logp_out) {
  parallel_for(r.n_rows, row_workers(r), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Acc lse = 0, ent = 0, logp = 0;
      if (row_live(r, i)) {
        const void* row = row_at(r.logits, i, r.row_stride, r.dtype);
        const Acc s = row_inv_temperature<Acc>(r, i);
        const OnlineSoftmax<Acc> st = fwd(row, r.vocab, s);
        const SoftmaxStats<Acc> stats = finalize(st, s);
        lse = stats.lse;
        ent = stats.entropy;
        if (r.labels != nullptr) {
          const int64_t y = row_label(r, i);
          if (y == r.ignore_index) {
            logp = 0;
          } else if (y < 0 || y >= r.vocab || eo_isnan(lse)) {
            logp = quiet_nan<Acc>();
          } else {
            // z_y - lse written as s (x_y - max) - log S: the shift is exact, so a row shifted
            // by 1e4 keeps full precision in its log-prob too.
            logp = (row_logit<Acc>(row, r.dtype, y) - st.max) * s - eo_log(st.sum_exp);
          }
        }
      }
      if (lse_out) lse_out[i] = lse;
      if (ent_out) ent_out[i] = ent;
      if (logp_out) logp_out[i] = logp;
    }
  });
}

template <typename Acc>
void set_log_prob_shift(const RowsArgs& r, FwdRowFn<Acc> fwd, const void* row, Acc lse,
                        BwdRowArgs<Acc>& a) {
  // NaN fails the test; an infinite lse (max / T overflowing, e.g. a row of finfo.min at T < 1)
  // is the case that most needs the exact shift.
  const Acc mag = lse < 0 ? -lse : lse;
  if (sizeof(Acc) != sizeof(float) || !(mag >= kExactLseBound)) return;
  const OnlineSoftmax<Acc> st = fwd(row, r.vocab, a.inv_t);
  if (st.max == -INFINITY || eo_isnan(st.max)) return;
  a.x_shift = st.max;
  a.log_sum = eo_log(st.sum_exp);
}

template <typename Acc>
void bwd_rows(const RowsArgs& r, FwdRowFn<Acc> fwd, BwdRowFn<Acc> bwd, const Acc* lse,
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
      a.x_shift = 0;
      a.log_sum = lse[i];
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
      if (a.grad_entropy != 0 || a.grad_logp != 0) set_log_prob_shift(r, fwd, row, lse[i], a);
      bwd(row, grow, r.vocab, a);
    }
  });
}

}  // namespace

void entropy_fwd_cpu(const RowsArgs& r, void* lse_out, void* entropy_out, void* logp_out) {
  if (r.n_rows <= 0) return;
  if (r.dtype == kFloat64) {
    fwd_rows<double>(r, entropy_fwd_row_f64, static_cast<double*>(lse_out),
                     static_cast<double*>(entropy_out), static_cast<double*>(logp_out));
    return;
  }
  fwd_rows<float>(r, active_kernels().fwd[r.dtype], static_cast<float*>(lse_out),
                  static_cast<float*>(entropy_out), static_cast<float*>(logp_out));
}

void entropy_bwd_cpu(const RowsArgs& r, const void* lse, const void* entropy,
                     const void* grad_entropy, const void* grad_logp, void* grad_logits,
                     int64_t grad_row_stride) {
  if (r.n_rows <= 0) return;
  if (r.dtype == kFloat64) {
    bwd_rows<double>(r, entropy_fwd_row_f64, entropy_bwd_row_f64, static_cast<const double*>(lse),
                     static_cast<const double*>(entropy), static_cast<const double*>(grad_entropy),
                     static_cast<const double*>(grad_logp), grad_logits, grad_row_stride);
    return;
  }
  const RowKernels& k = active_kernels();
  bwd_rows<float>(r, k.fwd[r.dtype], k.bwd[r.dtype], static_cast<const float*>(lse),
                  static_cast<const float*>(entropy), static_cast<const float*>(grad_entropy),
                  static_cast<const float*>(grad_logp), grad_logits, grad_row_stride);
}

}  // namespace cpu
}  // namespace entropy_ops
