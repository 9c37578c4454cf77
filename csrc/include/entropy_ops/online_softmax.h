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
EO_HOST_DEVICE inline float eo_exp2(float x) { return ::exp2f(x); }
EO_HOST_DEVICE inline double eo_exp2(double x) { return ::exp2(x); }
EO_HOST_DEVICE inline float eo_fmax(float a, float b) { return ::fmaxf(a, b); }
EO_HOST_DEVICE inline double eo_fmax(double a, double b) { return ::fmax(a, b); }

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
  // Where f underflows to 0 the state's terms are exactly 0: `sum_exp * delta` is not formed
  // there, since it overflows to -inf for a slice masked with a huge negative logit (finfo.min:
  // delta ~ -3.4e38) and -inf * 0 would be NaN. A NaN state stays NaN (NaN * 0).
  EO_HOST_DEVICE OnlineSoftmax rescaled(T new_max, T s = T(1)) const {
    if (max == new_max || max == -static_cast<T>(INFINITY)) return {new_max, sum_exp, sum_exp_z};
    const T delta = (max - new_max) * s;
    const T f = eo_exp(delta);
    if (f == T(0)) return {new_max, sum_exp * f, sum_exp_z * f};
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

// The CPU kernels' exp floor (-87, in units of z) in log2 units: terms below it are exactly 0,
// and every kept 2^t is a normal fp32.
constexpr float kExp2FloorF = -125.5f;

// A running state fed a few raw logits at a time (one vector load of a GPU thread), with one exp2
// per element: in raw-logit units,
//
//   sum_exp   = sum_j 2^(t_j),  sum_exp_d = sum_j 2^(t_j) (x_j - max),  t_j = (x_j - max) k,
//
// k = log2(e) s, so sum_exp is the OnlineSoftmax's and sum_exp_z = s sum_exp_d (`state`). A group
// first raises the max (one rescale when it grew), then adds its terms. Terms with t_j < floor2
// are left out (exactly 0, never 0 * -inf; -inf logits and padding); a NaN term is kept, and a
// +inf logit makes its own term NaN (inf - inf), so either poisons sum_exp and `state` is NaN.
// `max` ignores NaN (fmax) and stays -inf for a slice of only -inf: shifting by 0 then keeps
// -inf - -inf out of the terms.
template <typename T>
struct Exp2Accumulator {
  T max;
  T sum_exp;
  T sum_exp_d;

  EO_HOST_DEVICE static Exp2Accumulator empty() {
    return {-static_cast<T>(INFINITY), T(0), T(0)};
  }

  template <int N>
  EO_HOST_DEVICE void add(const T (&x)[N], T k, T floor2) {
    T group_max = x[0];
    for (int i = 1; i < N; ++i) group_max = eo_fmax(group_max, x[i]);
    if (group_max > max) {
      if (max != -static_cast<T>(INFINITY)) {
        const T delta = max - group_max;
        const T f = eo_exp2(delta * k);
        // f = 0: exactly 0, without the product that overflows for finfo.min (see `rescaled`).
        sum_exp_d = f == T(0) ? sum_exp_d * f : (sum_exp_d + sum_exp * delta) * f;
        sum_exp *= f;
      }
      max = group_max;
    }
    const T base = max == -static_cast<T>(INFINITY) ? T(0) : max;
    for (int i = 0; i < N; ++i) {
      const T d = x[i] - base;
      const T t = d * k;
      const T e = eo_exp2(t);
      if (!(t < floor2)) {  // written so that a NaN t is kept
        sum_exp += e;
        sum_exp_d += e * d;
      }
    }
  }

  EO_HOST_DEVICE OnlineSoftmax<T> state(T s) const {
    if (eo_isnan(sum_exp)) return OnlineSoftmax<T>::nan();
    return {max, sum_exp, sum_exp_d * s};
  }
};

template <typename T>
struct SoftmaxStats {
  T lse;       // log sum_j e^(z_j)
  T entropy;   // lse - sum_j p_j z_j
  T log_norm;  // log S = lse - s max: with the row's max, log p_j = s (x_j - max) - log S keeps
               // every digit, where z_j - lse inherits lse's rounding (scaled by 1/T)
};

// lse = s max + log S, entropy = log S - Sz / S (the shift cancels in the entropy). A row that is
// all -inf (empty state) has no distribution: NaN, never -inf or a silent 0 (a NaN or +inf row
// has a NaN sum_exp, so NaN too).
template <typename T>
EO_HOST_DEVICE inline SoftmaxStats<T> finalize(const OnlineSoftmax<T>& st, T s = T(1)) {
  if (st.max == -static_cast<T>(INFINITY)) return {quiet_nan<T>(), quiet_nan<T>(), quiet_nan<T>()};
  const T log_s = eo_log(st.sum_exp);
  return {st.max * s + log_s, log_s - st.sum_exp_z / st.sum_exp, log_s};
}

// log p_y = (x_y - max) / T - log S of one label, formed in double and rounded once, with T as the
// caller holds it (the per-row value, or the Python float itself). (x_y - max) s - log S in the
// accumulation type rounds s = 1/T and the product at the size of log p_y: an ulp of it, which at
// low temperatures (|log p_y| in the hundreds) is beyond eager's error.
template <typename T>
EO_HOST_DEVICE inline T label_log_prob(T x_y, T max, double temperature, T log_norm) {
  return static_cast<T>((static_cast<double>(x_y) - static_cast<double>(max)) / temperature -
                        static_cast<double>(log_norm));
}

}  // namespace entropy_ops
