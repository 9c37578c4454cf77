// Portable row kernels: the "scalar" ISA for fp32/bf16/fp16, and fp64 on every ISA.
// Same blocked one-pass algorithm as the vector bodies, with the libm exp.
#include <algorithm>
#include <cmath>

#include "cpu/elem_io.h"
#include "cpu/entropy_kernels.h"

namespace entropy_ops {
namespace cpu {
namespace {

template <typename Acc>
constexpr Acc exp_floor() {
  return sizeof(Acc) == sizeof(float) ? Acc(kExpFloorF) : Acc(kExpFloorD);
}

template <int Code>
OnlineSoftmax<typename ElemIO<Code>::Acc> fwd_row(const void* row, int64_t vocab,
                                                  typename ElemIO<Code>::Acc s) {
  using Acc = typename ElemIO<Code>::Acc;
  constexpr Acc kFloor = exp_floor<Acc>();
  OnlineSoftmax<Acc> st = OnlineSoftmax<Acc>::empty();
  Acc buf[kBlock];
  for (int64_t b0 = 0; b0 < vocab; b0 += kBlock) {
    const int64_t n = std::min(kBlock, vocab - b0);
    Acc m = -INFINITY;
    bool has_nan = false;
    for (int64_t j = 0; j < n; ++j) {
      const Acc x = ElemIO<Code>::load(row, b0 + j);
      buf[j] = x;
      m = x > m ? x : m;
      has_nan |= x != x;
    }
    if (has_nan) return OnlineSoftmax<Acc>::nan();
    if (m == -INFINITY) continue;  // an all -inf block adds exactly nothing
    const Acc m_new = std::max(m, st.max);
    // The block's sums in double: one fp32 accumulator over 2048 equal terms (ties, quantized
    // rows) drifts by ~n eps / 2 (measured 1.7e-4 in H at V = 151936), where the vector bodies
    // spread the block over 32-64 lanes. Next to the libm exp the double adds cost nothing.
    double sum = 0, sum_z = 0;
    for (int64_t j = 0; j < n; ++j) {
      const Acc d = (buf[j] - m_new) * s;
      if (!(d < kFloor)) {  // written so that a NaN d (from +inf - +inf) is kept
        const Acc e = std::exp(d);
        sum += e;
        sum_z += static_cast<double>(e * d);
      }
    }
    st = merge(st, OnlineSoftmax<Acc>{m_new, static_cast<Acc>(sum), static_cast<Acc>(sum_z)}, s);
  }
  return st;
}

// Formed in double so that for fp32 it is the exact product minus log_sum, rounded once, as the
// vector bodies' fma does.
template <typename Acc>
inline Acc log_prob(Acc x, const BwdRowArgs<Acc>& a) {
  return static_cast<Acc>(static_cast<double>(x - a.x_shift) * static_cast<double>(a.inv_t) -
                          static_cast<double>(a.log_sum));
}

template <int Code>
void bwd_row(const void* row, void* grad, int64_t vocab,
             const BwdRowArgs<typename ElemIO<Code>::Acc>& a) {
  using Acc = typename ElemIO<Code>::Acc;
  constexpr Acc kFloor = exp_floor<Acc>();
  const bool use_h = a.grad_entropy != 0;
  const bool use_lp = a.grad_logp != 0;
  for (int64_t j = 0; j < vocab; ++j) {
    const Acc lp = log_prob(ElemIO<Code>::load(row, j), a);
    Acc g = 0;
    if (!(lp < kFloor)) {  // p_j == 0 terms stay exactly 0 (lp = -inf would give 0 * -inf)
      const Acc p = std::exp(lp);
      if (use_h) g -= a.grad_entropy * (p * (lp + a.entropy));
      if (use_lp) g -= a.grad_logp * p;
    }
    if (use_lp && j == a.label) g += a.grad_logp;
    ElemIO<Code>::store(grad, j, g * a.inv_t);
  }
}

}  // namespace

constexpr RowKernels kScalarKernels = {
    "scalar",
    {fwd_row<kFloat32>, fwd_row<kBFloat16>, fwd_row<kFloat16>},
    {bwd_row<kFloat32>, bwd_row<kBFloat16>, bwd_row<kFloat16>},
};

OnlineSoftmax<double> entropy_fwd_row_f64(const void* row, int64_t vocab, double inv_t) {
  return fwd_row<kFloat64>(row, vocab, inv_t);
}

void entropy_bwd_row_f64(const void* row, void* grad, int64_t vocab, const BwdRowArgs<double>& a) {
  bwd_row<kFloat64>(row, grad, vocab, a);
}

}  // namespace cpu
}  // namespace entropy_ops
