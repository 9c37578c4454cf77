// top_p_entropy_{fwd,bwd}_cpu and top_p_mask_cpu (selective_cpu.h): rows over the thread pool,
// each row by one worker with the row kernels of the ISA in use (selective_kernels.h).
#include <math.h>

#include "cpu/rows_common.h"
#include "cpu/selective_cpu.h"
#include "cpu/selective_kernels.h"
#include "cpu/thread_pool.h"

namespace entropy_ops {
namespace cpu {
namespace {

template <typename Acc>
void fwd_rows(const RowsArgs& r, const SelectiveRowOps<Acc>& ops, double top_p, Acc* entropy,
              Acc* row_max, Acc* cut_e, int32_t* cut_index, Acc* log_norm) {
  parallel_for(r.n_rows, row_workers(r), [&](int64_t begin, int64_t end) {
    const int64_t scratch = selective_scratch_elems(r.vocab);
    Acc* buf = thread_scratch<Acc>(0, scratch);
    Acc* cand = thread_scratch<Acc>(1, scratch);
    for (int64_t i = begin; i < end; ++i) {
      entropy[i] = row_max[i] = cut_e[i] = log_norm[i] = 0;
      cut_index[i] = 0;
      if (!row_live(r, i)) continue;
      const void* row = row_at(r.logits, i, r.row_stride, r.dtype);
      const Acc s = row_inv_temperature<Acc>(r, i);
      const NucleusCut<Acc> cut = ops.top_p_cut(row, r.vocab, s, top_p, false, buf, cand);
      if (cut.bad) {
        entropy[i] = log_norm[i] = row_max[i] = quiet_nan<Acc>();
        cut_index[i] = -1;
        continue;
      }
      const NucleusSums<Acc> k =
          ops.top_p_sums(row, r.vocab, s, cut.max, cut.cut_e, cut.cut_index, buf);
      // S_K >= 1 (the max token, e = 1, is always kept), so the log is finite.
      const Acc ln = eo_log(k.sum_e);
      row_max[i] = cut.max;
      entropy[i] = ln - k.sum_e_s / k.sum_e;
      log_norm[i] = ln;
      cut_e[i] = cut.cut_e;
      cut_index[i] = static_cast<int32_t>(cut.cut_index);
    }
  });
}

template <typename Acc>
void bwd_rows(const RowsArgs& r, const SelectiveRowOps<Acc>& ops, const Acc* entropy,
              const Acc* row_max, const Acc* cut_e, const int32_t* cut_index, const Acc* log_norm,
              const Acc* grad_entropy, void* grad, int64_t grad_row_stride) {
  parallel_for(r.n_rows, row_workers(r), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      void* grow = row_at(grad, i, grad_row_stride, r.dtype);
      const Acc g = grad_entropy ? grad_entropy[i] : Acc(0);
      // Zero means zero: a masked row or a zero upstream gradient writes +0 without reading.
      if (!row_live(r, i) || g == 0) {
        fill_row(grow, r.dtype, r.vocab, false);
        continue;
      }
      if (eo_isnan(log_norm[i]) || eo_isnan(entropy[i])) {  // a bad row
        fill_row(grow, r.dtype, r.vocab, true);
        continue;
      }
      TopPBwdArgs<Acc> a;
      a.inv_t = row_inv_temperature<Acc>(r, i);
      a.row_max = row_max[i];
      a.cut_e = cut_e[i];
      a.cut_index = cut_index[i];
      a.log_norm = log_norm[i];
      a.inv_norm = eo_exp(-log_norm[i]);
      a.entropy = entropy[i];
      a.grad_entropy = g;
      ops.top_p_bwd(row_at(r.logits, i, r.row_stride, r.dtype), grow, r.vocab, a);
    }
  });
}

template <typename Acc>
void mask_rows(const RowsArgs& r, const SelectiveRowOps<Acc>& ops, double top_p, bool inclusive,
               uint8_t* out, int64_t out_row_stride) {
  parallel_for(r.n_rows, row_workers(r), [&](int64_t begin, int64_t end) {
    const int64_t scratch = selective_scratch_elems(r.vocab);
    Acc* buf = thread_scratch<Acc>(0, scratch);
    Acc* cand = thread_scratch<Acc>(1, scratch);
    for (int64_t i = begin; i < end; ++i) {
      uint8_t* orow = out + i * out_row_stride;
      if (!row_live(r, i)) {
        memset(orow, 0, static_cast<size_t>(r.vocab));
        continue;
      }
      const void* row = row_at(r.logits, i, r.row_stride, r.dtype);
      const NucleusCut<Acc> cut = ops.top_p_cut(row, r.vocab, row_inv_temperature<Acc>(r, i),
                                                top_p, inclusive, buf, cand);
      if (cut.bad) {
        memset(orow, 0, static_cast<size_t>(r.vocab));
        continue;
      }
      ops.top_p_mask(buf, r.vocab, cut.cut_e, cut.cut_index, orow);
    }
  });
}

}  // namespace

void top_p_entropy_fwd_cpu(const RowsArgs& r, double top_p, void* entropy_out, void* row_max_out,
                           void* cut_e_out, int32_t* cut_index_out, void* log_norm_out) {
  if (r.n_rows <= 0) return;
  if (r.dtype == kFloat64) {
    fwd_rows<double>(r, kSelectiveF64, top_p, static_cast<double*>(entropy_out),
                     static_cast<double*>(row_max_out), static_cast<double*>(cut_e_out),
                     cut_index_out, static_cast<double*>(log_norm_out));
    return;
  }
  fwd_rows<float>(r, selective_ops(r.dtype), top_p, static_cast<float*>(entropy_out),
                  static_cast<float*>(row_max_out), static_cast<float*>(cut_e_out), cut_index_out,
                  static_cast<float*>(log_norm_out));
}

void top_p_entropy_bwd_cpu(const RowsArgs& r, const void* entropy, const void* row_max,
                           const void* cut_e, const int32_t* cut_index, const void* log_norm,
                           const void* grad_entropy, void* grad, int64_t grad_row_stride) {
  if (r.n_rows <= 0) return;
  if (r.dtype == kFloat64) {
    bwd_rows<double>(r, kSelectiveF64, static_cast<const double*>(entropy),
                     static_cast<const double*>(row_max), static_cast<const double*>(cut_e),
                     cut_index, static_cast<const double*>(log_norm),
                     static_cast<const double*>(grad_entropy), grad, grad_row_stride);
    return;
  }
  bwd_rows<float>(r, selective_ops(r.dtype), static_cast<const float*>(entropy),
                  static_cast<const float*>(row_max), static_cast<const float*>(cut_e), cut_index,
                  static_cast<const float*>(log_norm), static_cast<const float*>(grad_entropy),
                  grad, grad_row_stride);
}

void top_p_mask_cpu(const RowsArgs& r, double top_p, bool inclusive, uint8_t* out,
                    int64_t out_row_stride) {
  if (r.n_rows <= 0) return;
  if (r.dtype == kFloat64) {
    mask_rows<double>(r, kSelectiveF64, top_p, inclusive, out, out_row_stride);
    return;
  }
  mask_rows<float>(r, selective_ops(r.dtype), top_p, inclusive, out, out_row_stride);
}

}  // namespace cpu
}  // namespace entropy_ops
