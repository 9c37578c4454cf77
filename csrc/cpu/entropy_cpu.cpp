#include "cpu/entropy_cpu.h"

#include <algorithm>
#include <cstring>

#include "cpu/elem_io.h"
#include "cpu/entropy_kernels.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"

namespace entropy_ops {
namespace cpu {
namespace {

// Below this many elements per worker, waking a thread costs more than it saves.
constexpr int64_t kMinElemsPerWorker = 1 << 15;

// Above this |lse| an fp32 lse carries an absolute error (half an ulp, >= 3.8e-6) large enough
// to show in p_j = e^(z_j - lse): the backward then recomputes the row's exact max and log S
// (one more exp per element, for such rows only; LLM logits stay well below).
constexpr float kExactLseBound = 64.0f;

int64_t elem_size(int dtype) {
  return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2;
}

int n_workers(const RowsArgs& r) {
  const int64_t by_work = std::max<int64_t>(1, r.n_rows * r.vocab / kMinElemsPerWorker);
  return static_cast<int>(std::min<int64_t>(std::max(r.num_threads, 1), by_work));
}

const char* row_ptr(const void* base, int64_t i, int64_t stride, int dtype) {
  return static_cast<const char*>(base) + i * stride * elem_size(dtype);
}

int64_t label_at(const RowsArgs& r, int64_t i) {
  return r.labels_int32 ? static_cast<const int32_t*>(r.labels)[i]
                        : static_cast<const int64_t*>(r.labels)[i];
}

template <typename Acc>
Acc inv_temperature(const RowsArgs& r, int64_t i) {
  const Acc t = r.temperature ? static_cast<const Acc*>(r.temperature)[i]
                              : static_cast<Acc>(r.temperature_scalar);
  return Acc(1) / t;
}

template <typename Acc>
Acc load_acc(const void* row, int dtype, int64_t j) {
  switch (dtype) {
    case kFloat32: return static_cast<Acc>(ElemIO<kFloat32>::load(row, j));
    case kBFloat16: return static_cast<Acc>(ElemIO<kBFloat16>::load(row, j));
    case kFloat16: return static_cast<Acc>(ElemIO<kFloat16>::load(row, j));
    default: return static_cast<Acc>(ElemIO<kFloat64>::load(row, j));
  }
}

template <typename Acc>
void fwd_rows(const RowsArgs& r, FwdRowFn<Acc> fwd, Acc* lse_out, Acc* ent_out, Acc* logp_out) {
  parallel_for(r.n_rows, n_workers(r), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Acc lse = 0, ent = 0, logp = 0;
      if (r.mask == nullptr || r.mask[i]) {
        const void* row = row_ptr(r.logits, i, r.row_stride, r.dtype);
        const Acc s = inv_temperature<Acc>(r, i);
        const OnlineSoftmax<Acc> st = fwd(row, r.vocab, s);
        const SoftmaxStats<Acc> stats = finalize(st, s);
        lse = stats.lse;
        ent = stats.entropy;
        if (r.labels != nullptr) {
          const int64_t y = label_at(r, i);
          if (y == r.ignore_index) {
            logp = 0;
          } else if (y < 0 || y >= r.vocab || eo_isnan(lse)) {
            logp = quiet_nan<Acc>();
          } else {
            // z_y - lse written as s (x_y - max) - log S: the shift is exact, so a row shifted
            // by 1e4 keeps full precision in its log-prob too.
            logp = (load_acc<Acc>(row, r.dtype, y) - st.max) * s - eo_log(st.sum_exp);
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
  const Acc mag = lse < 0 ? -lse : lse;  // NaN fails the test below, inf passes neither check
  if (sizeof(Acc) != sizeof(float) || !(mag >= kExactLseBound) || mag == INFINITY) return;
  const OnlineSoftmax<Acc> st = fwd(row, r.vocab, a.inv_t);
  if (st.max == -INFINITY || eo_isnan(st.max)) return;
  a.x_shift = st.max;
  a.log_sum = eo_log(st.sum_exp);
}

template <typename Acc>
void bwd_rows(const RowsArgs& r, FwdRowFn<Acc> fwd, BwdRowFn<Acc> bwd, const Acc* lse,
              const Acc* ent, const Acc* grad_ent, const Acc* grad_logp, void* grad,
              int64_t grad_row_stride) {
  parallel_for(r.n_rows, n_workers(r), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      char* grow = const_cast<char*>(row_ptr(grad, i, grad_row_stride, r.dtype));
      if (r.mask != nullptr && !r.mask[i]) {
        std::memset(grow, 0, static_cast<size_t>(r.vocab * elem_size(r.dtype)));  // +0.0 bits
        continue;
      }
      const void* row = row_ptr(r.logits, i, r.row_stride, r.dtype);
      BwdRowArgs<Acc> a;
      a.inv_t = inv_temperature<Acc>(r, i);
      a.x_shift = 0;
      a.log_sum = lse[i];
      a.entropy = ent[i];
      a.grad_entropy = grad_ent ? grad_ent[i] : Acc(0);
      a.grad_logp = 0;
      a.label = -1;
      if (grad_logp != nullptr && r.labels != nullptr) {
        const int64_t y = label_at(r, i);
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
