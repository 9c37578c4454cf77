// token_stats_cpu (selective_cpu.h): two passes per row, each row by one worker. Pass 1 is the
// entropy kernel's online softmax (max, S, sum e s: lse, H, max_logp); pass 2, knowing the max,
// log S and H, sums p^2, p (log p + H)^2, p^2 (log p + H) and the shifted logits for the mean.
// The centred varentropy is never negative and has no cancellation between two H^2-sized terms.
#include <math.h>

#include "cpu/entropy_kernels.h"
#include "cpu/isa.h"
#include "cpu/rows_common.h"
#include "cpu/selective_cpu.h"
#include "cpu/selective_kernels.h"
#include "cpu/thread_pool.h"

namespace entropy_ops {
namespace cpu {
namespace {

enum Field { kLse, kEntropy, kLogp, kMaxLogp, kCollision, kVarentropy, kSelfCertainty, kDrift };

template <typename Acc>
void stats_rows(const RowsArgs& r, FwdRowFn<Acc> fwd, const SelectiveRowOps<Acc>& ops,
                Acc* const out[8]) {
  parallel_for(r.n_rows, row_workers(r), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Acc v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (row_live(r, i)) {
        const void* row = row_at(r.logits, i, r.row_stride, r.dtype);
        const Acc s = row_inv_temperature<Acc>(r, i);
        const OnlineSoftmax<Acc> st = fwd(row, r.vocab, s);
        const bool bad = !(st.max > -static_cast<Acc>(INFINITY)) ||
                         st.max == static_cast<Acc>(INFINITY) || eo_isnan(st.sum_exp);
        const int64_t y = r.labels ? row_label(r, i) : r.ignore_index;
        if (bad) {
          for (Acc& x : v) x = quiet_nan<Acc>();
        } else {
          const Acc log_s = eo_log(st.sum_exp);
          const Acc h = log_s - st.sum_exp_z / st.sum_exp;
          const StatsSums k = ops.stats_sums(row, r.vocab, st.max, s, log_s, h);
          // max / T + log S in double, rounded once: a row shifted by 1e4 gets the correctly
          // rounded lse (max * s in fp32 would add the rounding of 1/T, ~4e-4 at 1e4).
          const double t = row_temperature<Acc>(r, i);
          v[kLse] = static_cast<Acc>(static_cast<double>(st.max) / t + static_cast<double>(log_s));
          v[kEntropy] = h;
          v[kMaxLogp] = -log_s;  // max_j z_j - lse = (m - m) s - log S
          v[kCollision] = static_cast<Acc>(k.collision);
          v[kVarentropy] = static_cast<Acc>(k.varentropy);
          // lse - mean_j z_j - log V, the shift cancelling (+inf with any -inf logit), in double
          // (the mean divided by T itself, not multiplied by a rounded 1/T) and rounded once.
          v[kSelfCertainty] = static_cast<Acc>(static_cast<double>(log_s) - k.mean_d / t -
                                               log(static_cast<double>(r.vocab)));
          v[kDrift] = static_cast<Acc>(k.entropy_drift);
          v[kLogp] = (y < 0 || y >= r.vocab)
                         ? quiet_nan<Acc>()
                         : label_log_prob(row_logit<Acc>(row, r.dtype, y), st.max, t, log_s);
        }
        if (y == r.ignore_index) v[kLogp] = 0;
      }
      for (int f = 0; f < 8; ++f) {
        if (out[f] != nullptr) out[f][i] = v[f];
      }
    }
  });
}

}  // namespace

void token_stats_cpu(const RowsArgs& r, void* const out[8]) {
  if (r.n_rows <= 0) return;
  if (r.dtype == kFloat64) {
    double* o[8];
    for (int f = 0; f < 8; ++f) o[f] = static_cast<double*>(out[f]);
    stats_rows<double>(r, entropy_fwd_row_f64, kSelectiveF64, o);
    return;
  }
  float* o[8];
  for (int f = 0; f < 8; ++f) o[f] = static_cast<float*>(out[f]);
  stats_rows<float>(r, active_kernels().fwd[r.dtype], selective_ops(r.dtype), o);
}

}  // namespace cpu
}  // namespace entropy_ops
