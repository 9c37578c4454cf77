// The online-softmax state of one row (or of a slice of it) and its merge and finalize.
// Shared by the CPU and CUDA kernels, so torch-free and device-compatible.
//
//   sum_exp   = sum_j e^(s (x_j - max))
//   sum_exp_z = sum_j e^(s (x_j - max)) * s (x_j - max)
//
// with s = 1/T. The sums are SHIFTED by the max: a row shifted by 1e4 keeps full precision in
// the entropy, where an unshifted sum_j p_j z_j loses ~1e-3 to cancellation. `max` is kept in
// the units of the input x (not z = s x): x_j - max is exact for nearby values (Sterbenz), and
// only then is it scaled, so a temperature costs one rounding instead of a rounded z_j per term.
// Pass s = 1 when the state is built on z directly.
#pragma once

#include <math.h>

#include "entropy_ops/dtype.h"

namespace entropy_ops {

EO_HOST_DEVICE inline float eo_exp(float x) { return ::expf(x); }
EO_HOST_DEVICE inline double eo_exp(double x) { return ::exp(x); }
EO_HOST_DEVICE inline float eo_log(float x) { return ::logf(x); }
EO_HOST_DEVICE inline double eo_log(double x) { return ::log(x); }
EO_HOST_DEVICE inline bool eo_isnan(float x) { return x != x; }
EO_HOST_DEVICE inline bool eo_isnan(double x) { return x != x; }

template <typename T>
EO_HOST_DEVICE inline T quiet_nan();
template <>
EO_HOST_DEVICE inline float quiet_nan<float>() { return bits_to_float(0x7fc00000u); }
template <>
EO_HOST_DEVICE inline double quiet_nan<double>() { return bits_to_double(0x7ff8000000000000ull); }

template <typename T>
struct OnlineSoftmax {
  T max;        // -inf: empty state (nothing seen, or only -inf entries)
  T sum_exp;
  T sum_exp_z;

  EO_HOST_DEVICE static OnlineSoftmax empty() { return {-static_cast<T>(INFINITY), T(0), T(0)}; }
  EO_HOST_DEVICE static OnlineSoftmax nan() {
    return {quiet_nan<T>(), quiet_nan<T>(), quiet_nan<T>()};
  }

  // The same state expressed relative to new_max >= max:
  //   e^(s(x-new)) = e^(s(x-max)) f,  s(x-new) = s(x-max) + delta,  delta = s(max-new), f = e^delta
  // An empty state stays exactly empty (no -inf - -inf), an equal max leaves the bits untouched.
  EO_HOST_DEVICE OnlineSoftmax rescaled(T new_max, T s = T(1)) const {
    if (max == new_max || max == -static_cast<T>(INFINITY)) return {new_max, sum_exp, sum_exp_z};
    const T delta = (max - new_max) * s;
    const T f = eo_exp(delta);
    return {new_max, sum_exp * f, (sum_exp_z + sum_exp * delta) * f};
  }
};

// Merge of two states of disjoint slices of one row. Exact when either is empty; NaN anywhere
// (a NaN max, or NaN sums from a NaN/+inf entry) stays NaN.
template <typename T>
EO_HOST_DEVICE inline OnlineSoftmax<T> merge(const OnlineSoftmax<T>& a, const OnlineSoftmax<T>& b,
                                             T s = T(1)) {
  if (eo_isnan(a.max) || eo_isnan(b.max)) return OnlineSoftmax<T>::nan();
  if (b.max == -static_cast<T>(INFINITY)) return a;
  if (a.max == -static_cast<T>(INFINITY)) return b;
  const T m = a.max > b.max ? a.max : b.max;
  const OnlineSoftmax<T> ra = a.rescaled(m, s);
  const OnlineSoftmax<T> rb = b.rescaled(m, s);
  return {m, ra.sum_exp + rb.sum_exp, ra.sum_exp_z + rb.sum_exp_z};
}

template <typename T>
struct SoftmaxStats {
  T lse;      // log sum_j e^(z_j)
  T entropy;  // lse - sum_j p_j z_j
};

// lse = s max + log S, entropy = log S - Sz / S (the shift cancels in the entropy). A row that is
// all -inf (empty state) has no distribution: NaN, never -inf or a silent 0.
template <typename T>
EO_HOST_DEVICE inline SoftmaxStats<T> finalize(const OnlineSoftmax<T>& st, T s = T(1)) {
  if (st.max == -static_cast<T>(INFINITY)) return {quiet_nan<T>(), quiet_nan<T>()};
  const T log_s = eo_log(st.sum_exp);
  return {st.max * s + log_s, log_s - st.sum_exp_z / st.sum_exp};
}

}  // namespace entropy_ops
