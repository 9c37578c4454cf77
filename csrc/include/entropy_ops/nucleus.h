// The selection rules of the selective row ops, shared by the CPU and CUDA kernels (torch-free,
// device-compatible). entropy_ops/backends/kernel.py states the rules in full; in short, with
// e_j = exp((x_j - max x) / T) of the row in the compute type:
//
//   top-p:  kept_j = e_j > cut_e  or  (e_j == cut_e and j <= cut_index)
//   min-p:  kept_j = e_j >= min_p
//
// Each backend finds the crossing value kappa (= cut_e) its own way (histograms, selection); what
// it does with kappa is fixed here, so the tie rule is the same everywhere.
#pragma once

#include <math.h>
#include <stdint.h>

#include "entropy_ops/dtype.h"

namespace entropy_ops {

// How many of the `count` tokens of value kappa the nucleus keeps, given `above` = the summed e
// of the tokens with e > kappa and target = top_p * sum_j e_j:
//   exclusive: r = #{i in 1..count : above + i kappa < target}, at least 1 when nothing is above;
//   inclusive: one more (the crossing token), at most count.
// The closed form ceil(q) - 1 is exact when q = (target - above) / kappa is an integer (equal
// masses that add up to top_p exactly keep no crossing token, as the strict `<` says).
template <typename T>
EO_HOST_DEVICE inline int64_t nucleus_ties_kept(T target, T above, T kappa, int64_t count,
                                                bool any_above, bool inclusive) {
  const T q = (target - above) / kappa;
  int64_t r;
  if (!(q > T(0))) {
    r = 0;
  } else if (q >= static_cast<T>(count) + T(1)) {
    r = count;
  } else {
    r = static_cast<int64_t>(ceil(static_cast<double>(q))) - 1;
    r = r < 0 ? 0 : (r > count ? count : r);
  }
  if (inclusive) return r + 1 < count ? r + 1 : count;
  return (r == 0 && !any_above) ? 1 : r;
}

template <typename T>
EO_HOST_DEVICE inline bool nucleus_kept(T e, int64_t j, T cut_e, int64_t cut_index) {
  return e > cut_e || (e == cut_e && j <= cut_index);
}

template <typename T>
EO_HOST_DEVICE inline bool min_p_kept(T e, T min_p) {
  return e >= min_p;
}

// The order of e >= 0 as an unsigned integer: the IEEE bit pattern of a non-negative float is
// monotone in its value, so radix selection on these keys selects on e (descending e = descending
// key). Only for e >= 0 (never NaN: bad rows are handled before any selection).
EO_HOST_DEVICE inline uint32_t order_key(float e) { return float_to_bits(e); }
EO_HOST_DEVICE inline uint64_t order_key(double e) { return double_to_bits(e); }

}  // namespace entropy_ops
