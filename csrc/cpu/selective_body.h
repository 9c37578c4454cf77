// The row kernels of selective_kernels.h (top-p, min-p, token_stats' second pass), written once
// over the vector vocabulary S; make_selective_ops<S, Code>() is one ISA's table for one dtype.
// Same inclusion rules as selective_passes.h.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu/nucleus_select.h"
#include "cpu/selective_kernels.h"
#include "cpu/selective_passes.h"

namespace entropy_ops {
namespace cpu {
namespace {

template <class S, int Code>
NucleusCut<typename S::Acc> top_p_cut_row(const void* row, int64_t n, typename S::Acc inv_t,
                                          double top_p, bool inclusive, typename S::Acc* buf,
                                          typename S::Acc* cand) {
  NucleusCut<typename S::Acc> out{};
  out.bad = scan_row<S, Code>(row, n, out.max);
  if (out.bad) return out;
  const ExpRow<S> ex = exp_row<S, Code>(row, n, out.max, inv_t, buf);
  find_cut<S>(buf, n, ex, top_p, inclusive, cand, out.cut_e, out.cut_index);
  return out;
}

template <class S, int Code>
NucleusSums<typename S::Acc> top_p_sums_row(const void* row, int64_t n, typename S::Acc inv_t,
                                            typename S::Acc max, typename S::Acc cut_e,
                                            int64_t cut_index, const typename S::Acc* buf) {
  using V = typename S::V;
  const V m = S::set1(max), s = S::set1(inv_t), ce = S::set1(cut_e), zero = S::zero();
  double se_total = 0, ses_total = 0;
  for (int64_t b = 0; b < n; b += sum_block<S>()) {
    const int64_t b_end = b + sum_block<S>() < n ? b + sum_block<S>() : n;
    V se = zero, ses = zero;
    for (int64_t j = b; j < b_end; j += S::W) {
      const V d = S::mul(S::sub(load_row<S, Code>(row, j, n), m), s);
      const V e = S::loadu(buf + j);
      const typename S::M kept = nucleus_kept_v<S>(e, j, ce, cut_index);
      se = S::mask_add(se, kept, e);
      // e = 0 terms are left out, never 0 * -inf (keep-all rows keep their -inf logits).
      ses = S::mask_add(ses, S::mand(kept, S::gt(e, zero)), S::mul(e, d));
    }
    se_total += S::hsum(se);
    ses_total += S::hsum(ses);
  }
  return {static_cast<typename S::Acc>(se_total), static_cast<typename S::Acc>(ses_total)};
}

template <class S>
void top_p_mask_row(const typename S::Acc* buf, int64_t n, typename S::Acc cut_e, int64_t cut_index,
                    uint8_t* out) {
  const typename S::V ce = S::set1(cut_e);
  int64_t j = 0;
  for (; j + S::W <= n; j += S::W) {
    S::store_bool(out + j, nucleus_kept_v<S>(S::loadu(buf + j), j, ce, cut_index));
  }
  if (j == n) return;
  const uint32_t b = S::bits(nucleus_kept_v<S>(S::loadu(buf + j), j, ce, cut_index));
  for (int64_t i = 0; j + i < n; ++i) out[j + i] = static_cast<uint8_t>((b >> i) & 1u);
}

// g_j = -gH q_j (log q_j + H) s on K with e_j > 0, else exactly 0; log q_j = d_j - log S_K.
template <class S, int Code>
void top_p_bwd_row(const void* row, void* grad, int64_t n, const TopPBwdArgs<typename S::Acc>& a) {
  using V = typename S::V;
  const V m = S::set1(a.row_max), s = S::set1(a.inv_t), ce = S::set1(a.cut_e);
  const V neg_log_norm = S::set1(-a.log_norm), inv_norm = S::set1(a.inv_norm);
  const V h = S::set1(a.entropy), coef = S::set1(-a.grad_entropy), zero = S::zero();
  for (int64_t j = 0; j < n; j += S::W) {
    V d;
    const V e = e_of<S>(load_row<S, Code>(row, j, n), m, s, d);
    const typename S::M live = S::mand(nucleus_kept_v<S>(e, j, ce, a.cut_index), S::gt(e, zero));
    const V q = S::mul(e, inv_norm);
    const V g = S::mul(S::mul(coef, S::mul(q, S::add(S::add(d, neg_log_norm), h))), s);
    store_row<S, Code>(grad, j, n, S::maskz(live, g));
  }
}

template <class S, int Code>
MinPRow<typename S::Acc> min_p_sums_row(const void* row, int64_t n, typename S::Acc inv_t,
                                        typename S::Acc min_p) {
  using V = typename S::V;
  MinPRow<typename S::Acc> out{};
  out.bad = scan_row<S, Code>(row, n, out.max);
  if (out.bad) return out;
  const V m = S::set1(out.max), s = S::set1(inv_t), mp = S::set1(min_p);
  double total = 0;
  for (int64_t b = 0; b < n; b += sum_block<S>()) {
    const int64_t b_end = b + sum_block<S>() < n ? b + sum_block<S>() : n;
    V a0 = S::zero(), a1 = a0;
    int64_t j = b;
    for (; j + 2 * S::W <= b_end; j += 2 * S::W) {
      V d;
      const V e0 = e_of<S>(S::template load<Code>(row, j), m, s, d);
      const V e1 = e_of<S>(S::template load<Code>(row, j + S::W), m, s, d);
      a0 = S::mask_add(a0, S::ge(e0, mp), e0);
      a1 = S::mask_add(a1, S::ge(e1, mp), e1);
    }
    for (; j < b_end; j += S::W) {
      V d;
      const V e = e_of<S>(load_row<S, Code>(row, j, n), m, s, d);
      a0 = S::mask_add(a0, S::ge(e, mp), e);
    }
    total += S::hsum(S::add(a0, a1));
  }
  out.sum_e = static_cast<typename S::Acc>(total);
  return out;
}

template <class S>
typename S::Acc e_at(typename S::Acc x, typename S::Acc max, typename S::Acc inv_t) {
  typename S::V d;
  return S::first(e_of<S>(S::set1(x), S::set1(max), S::set1(inv_t), d));
}

// g_j = glogp (1[j=y] - q_j) s on the kept set (e_j >= min_p), else exactly 0.
template <class S, int Code>
void min_p_bwd_row(const void* row, void* grad, int64_t n, const MinPBwdArgs<typename S::Acc>& a) {
  using V = typename S::V;
  const V m = S::set1(a.row_max), s = S::set1(a.inv_t), mp = S::set1(a.min_p);
  const V inv_norm = S::set1(a.inv_norm), coef = S::set1(a.grad_logp);
  for (int64_t j = 0; j < n; j += S::W) {
    V d;
    const V e = e_of<S>(load_row<S, Code>(row, j, n), m, s, d);
    V val = S::sub(S::zero(), S::mul(e, inv_norm));
    if (a.label >= j && a.label < j + S::W) {  // 1 - q_y at the label's lane
      typename S::Acc t[S::W];
      S::storeu(t, val);
      t[a.label - j] += 1;
      val = S::loadu(t);
    }
    store_row<S, Code>(grad, j, n, S::maskz(S::ge(e, mp), S::mul(S::mul(val, coef), s)));
  }
}

// token_stats' second pass: with lp = d - log S and c = lp + H, the sums of p^2, p c^2, p^2 c
// (p = 0 terms left out, never 0 * -inf) and the mean of x - max over all V entries, in raw-logit
// units (the driver divides by T in double). That mean is exact to about a double rounding,
// because a row of many equal logits (a vocabulary masked with one value) would repeat any
// rounding in every term (SPEC §2's bound missed by 5% at T = 0.05 before):
//   - x - max is taken with its rounding error (TwoSum, exact in fp32), summed on the side;
//   - each term is scaled by 2^-k with 2^k > V, exactly (1/V would round every term alike), so
//     that a sum of finfo.min entries (masked_fill's idiom) stays finite; 2^k / V is applied in
//     double;
//   - the terms go into a compensated (Kahan) sum per lane, the lanes added in double.
template <class S, int Code>
StatsSums stats_sums_row(const void* row, int64_t n, typename S::Acc max, typename S::Acc inv_t,
                         typename S::Acc log_sum, typename S::Acc entropy) {
  using V = typename S::V;
  using M = typename S::M;
  using Acc = typename S::Acc;
  const V m = S::set1(max), neg_m = S::set1(-max), s = S::set1(inv_t), floor = S::set1(S::kFloor);
  const V neg_log_sum = S::set1(-log_sum), h = S::set1(entropy);
  const V ninf = S::set1(-static_cast<Acc>(INFINITY));
  const int scale_bits = 64 - __builtin_clzll(static_cast<unsigned long long>(n));  // 2^k > n
  const V scale = S::set1(static_cast<Acc>(ldexp(1.0, -scale_bits)));
  double total[3] = {0, 0, 0};
  V ks = S::zero(), kc = ks, rounding = ks;
  M neg = S::none();
  for (int64_t b = 0; b < n; b += sum_block<S>()) {
    const int64_t b_end = b + sum_block<S>() < n ? b + sum_block<S>() : n;
    V coll = S::zero(), var = coll, drift = coll;
    for (int64_t j = b; j < b_end; j += S::W) {
      const V x = load_row<S, Code>(row, j, n);
      const V dx = S::sub(x, m);
      const V part = S::sub(dx, x);  // TwoSum of x and -max: dx + err is x - max exactly
      const V err = S::add(S::sub(x, S::sub(dx, part)), S::sub(neg_m, part));
      const V d = S::mul(dx, s);
      const M valid = lanes_upto<S>(j, n - 1);
      neg = S::mor(neg, S::mand(valid, S::eq(dx, ninf)));
      const M summed = S::mand(valid, S::gt(dx, ninf));
      const V y = S::sub(S::maskz(summed, S::mul(dx, scale)), kc);
      const V t = S::add(ks, y);
      kc = S::sub(S::sub(t, ks), y);
      ks = t;
      rounding = S::add(rounding, S::maskz(summed, S::mul(err, scale)));
      const V lp = S::add(d, neg_log_sum);
      const M live = S::ge(lp, floor);
      const V p = S::maskz(live, S::exp(S::max(floor, lp)));
      const V pc = S::maskz(live, S::mul(p, S::add(lp, h)));
      coll = S::add(coll, S::mul(p, p));
      var = S::mask_add(var, live, S::mul(pc, S::add(lp, h)));
      drift = S::add(drift, S::mul(p, pc));
    }
    total[0] += S::hsum(coll);
    total[1] += S::hsum(var);
    total[2] += S::hsum(drift);
  }
  Acc lanes_s[S::W], lanes_c[S::W], lanes_r[S::W];
  S::storeu(lanes_s, ks);
  S::storeu(lanes_c, kc);
  S::storeu(lanes_r, rounding);
  double sum_d = 0;
  for (int i = 0; i < S::W; ++i) sum_d += (static_cast<double>(lanes_s[i]) - lanes_c[i]) + lanes_r[i];
  return {total[0], total[1], total[2],
          S::any(neg) ? -static_cast<double>(INFINITY) : sum_d * (ldexp(1.0, scale_bits) / static_cast<double>(n))};
}

// constexpr, and so are the tables built from it: they are constant-initialized (data in the
// library, no initializer run at load). A dynamic initializer would be compiled for the ISA of its
// file, and run at import on CPUs without that ISA (SIGILL in `import entropy_ops._C`).
template <class S, int Code>
constexpr SelectiveRowOps<typename S::Acc> make_selective_ops() {
  return {top_p_cut_row<S, Code>, top_p_sums_row<S, Code>, top_p_mask_row<S>,
          top_p_bwd_row<S, Code>, min_p_sums_row<S, Code>, e_at<S>,
          min_p_bwd_row<S, Code>, stats_sums_row<S, Code>};
}

}  // namespace
}  // namespace cpu
}  // namespace entropy_ops
