// The top-p crossing search on a row's buffer of e_j (selective_passes.h), for each ISA: a
// weighted selection, never a sort. Same inclusion rules as selective_passes.h.
//
// M(t) = sum of the e_j >= t. kappa, the crossing value, is the largest e with M(kappa) >= target
// (kernel.py). The search keeps a range [lo, hi) holding kappa, with `above` = the mass >= hi:
//   1. t = 1 (e of the max, counted by exp_row): peaked rows often end here.
//   2. Bisection on the exponent, t = 2^k, each probe a masked vector sum over the whole buffer
//      (the first probe at 2^floor(log2((S - target) / V)): the tokens below it cannot hold the
//      missing mass, so the probe usually succeeds and the range is short), until at most 1/8 of
//      the row lies in [lo, hi).
//   3. Those elements are packed into `cand`; then bisection on the bit pattern between their min
//      and max (order_key: the bits of e >= 0 order like e), packing the side that holds kappa
//      each round, until the candidates are all equal: kappa, with c = their count.
// Every full-buffer sum has the accumulation order of exp_row's S, and adding a non-negative term
// never lowers a rounded sum, so M(t) over the buffer is exactly monotone in t and M(2^-126) = S:
// the range never empties. Masses are fp32 lane sums over blocks of 64 vectors, added in double
// (long runs of equal e would otherwise drift by ~1e-5 of the mass). The rounding of the sums differs from another backend's only at the
// cut (kernel.py allows that); the tie rule is nucleus.h's.
#pragma once

#include <math.h>
#include <stdint.h>

#include "cpu/selective_passes.h"
#include "entropy_ops/nucleus.h"

namespace entropy_ops {
namespace cpu {
namespace {

inline float from_key(uint32_t k) { return bits_to_float(k); }
inline double from_key(uint64_t k) { return bits_to_double(k); }

// A value t with lo < t <= hi halfway between them in bit pattern (0 <= lo < hi).
template <typename T>
inline T key_midpoint(T lo, T hi) {
  const auto kl = order_key(lo), kh = order_key(hi);
  return from_key(static_cast<decltype(kl)>(kl + (kh - kl + 1) / 2));
}

// Sets (cut_e, cut_index) of the nucleus of buf[0, n), as exp_row left it and returned `ex`.
template <class S>
inline void find_cut(const typename S::Acc* buf, int64_t n, ExpRow<S> ex, double top_p,
                     bool inclusive, typename S::Acc* cand, typename S::Acc& cut_e,
                     int64_t& cut_index) {
  using Acc = typename S::Acc;
  const double total = ex.sum;
  constexpr int kMinExp = sizeof(Acc) == sizeof(float) ? -126 : -1022;  // below: e = 0 exactly
  const int64_t n_pad = round_up<S>(n, 4 * S::W);
  cut_e = 0;  // keep all, unless a crossing is found
  cut_index = n - 1;
  if (top_p >= 1.0) return;
  const double target = top_p * total;

  Acc kappa;
  double above;
  int64_t count, n_above;
  // M(1) sums ex.ones values 1 exactly: a whole number below 2^24 (2^53) needs no pass.
  const bool ones_exact = ex.ones < (int64_t(1) << (sizeof(Acc) == sizeof(float) ? 24 : 53));
  const MassCount<S> top = ones_exact ? MassCount<S>{static_cast<double>(ex.ones), ex.ones}
                                      : mass_at_least<S>(buf, n_pad, Acc(1));
  if (top.mass >= target) {
    kappa = 1;
    above = 0;
    count = top.count;
    n_above = 0;
  } else {
    int lo = kMinExp - 1, hi = 0;  // exponents; lo = kMinExp - 1 stands for t = 0
    int64_t n_lo = n, n_hi = top.count;
    above = top.mass;
    const double spare = (total - target) / static_cast<double>(n);
    int probe = spare > 0 ? ilogb(spare) : lo;
    while (hi - lo > 1 && (n_lo - n_hi) * 2 > n) {
      const int mid = (probe > lo && probe < hi) ? probe : lo + (hi - lo) / 2;
      probe = lo;
      const MassCount<S> mc = mass_at_least<S>(buf, n_pad, ldexp(Acc(1), mid));
      if (mc.count == n_hi) {  // nothing in [2^mid, 2^hi)
        hi = mid;
      } else if (mc.count == n_lo) {  // nothing in [2^lo, 2^mid)
        lo = mid;
      } else if (mc.mass >= target) {
        lo = mid;
        n_lo = mc.count;
      } else {
        hi = mid;
        n_hi = mc.count;
        above = mc.mass;
      }
    }
    const Acc t_lo = ldexp(Acc(1), lo < kMinExp ? kMinExp : lo);
    Compacted<S> c = compact<S>(buf, n_pad, t_lo, ldexp(Acc(1), hi), cand);
    n_above = n_hi;
    while (c.count > 0 && c.min < c.max) {
      const Acc t = key_midpoint(c.min, c.max);
      const int64_t nc = round_up<S>(c.count, S::W);
      const MassCount<S> mc = mass_at_least<S>(cand, nc, t);
      if (above + mc.mass >= target) {
        c = compact<S>(cand, nc, t, static_cast<Acc>(INFINITY), cand);
      } else {
        above += mc.mass;
        n_above += mc.count;
        c = compact<S>(cand, nc, Acc(0), t, cand);
      }
    }
    if (c.count == 0) return;  // unreachable (see above); keep all rather than guess
    kappa = c.min;
    count = c.count;
  }
  if (!(kappa > 0)) return;
  const int64_t r = nucleus_ties_kept(target, above, static_cast<double>(kappa), count,
                                      n_above > 0, inclusive);
  cut_e = kappa;
  cut_index = r == 0 ? -1 : nth_equal<S>(buf, n_pad, kappa, r);
}

}  // namespace
}  // namespace cpu
}  // namespace entropy_ops
