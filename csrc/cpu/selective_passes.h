// The passes over a row or a buffer that the selective row kernels are built from, written once
// over the vector vocabulary S (SimdAvx512, SimdAvx2, SimdScalar<T>): S::W lanes of S::Acc.
//
// Included by each per-ISA translation unit (selective_kernels_*.cpp) inside its target region;
// everything is in an unnamed namespace, so each unit has its own copy compiled for its ISA.
#pragma once

#include <math.h>
#include <stdint.h>

#include "cpu/elem_io.h"
#include "entropy_ops/online_softmax.h"

namespace entropy_ops {
namespace cpu {
namespace {

template <class S>
constexpr int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

// Value sums (not the selection's masses) are taken in vector lanes over blocks of 64 vectors,
// each block's total then added in double: the rounding of a 152K-term fp32 sum stays far below
// the 1e-5 of SPEC §2 on every ISA (the scalar one has a single lane). Fixed per ISA, so a row's
// bits depend on V alone.
template <class S>
constexpr int64_t sum_block() {
  return 64 * S::W;
}

// Vectors of the row at j; lanes past the end read -inf (so e = 0 there).
template <class S, int Code>
inline typename S::V load_row(const void* row, int64_t j, int64_t n) {
  if (j + S::W <= n) return S::template load<Code>(row, j);
  typename S::Acc t[S::W];
  for (int i = 0; i < S::W; ++i) {
    t[i] = j + i < n ? static_cast<typename S::Acc>(ElemIO<Code>::load(row, j + i))
                     : -static_cast<typename S::Acc>(INFINITY);
  }
  return S::loadu(t);
}

template <class S, int Code>
inline void store_row(void* row, int64_t j, int64_t n, typename S::V v) {
  if (j + S::W <= n) return S::template store<Code>(row, j, v);
  typename S::Acc t[S::W];
  S::storeu(t, v);
  for (int64_t i = 0; j + i < n; ++i) ElemIO<Code>::store(row, j + i, t[i]);
}

// THE e_j of a lane: d = (x - max) s, e = exp(d), exactly 0 below the exp floor (-inf logits,
// tail lanes). Every kernel of an ISA gets its e_j from here, so they agree bit for bit.
template <class S>
inline typename S::V e_of(typename S::V x, typename S::V m, typename S::V s, typename S::V& d) {
  const typename S::V floor = S::set1(S::kFloor);
  d = S::mul(S::sub(x, m), s);
  return S::maskz(S::ge(d, floor), S::exp(S::max(floor, d)));
}

// Lanes of the vector at j whose index is <= last.
template <class S>
inline typename S::M lanes_upto(int64_t j, int64_t last) {
  const int64_t k = last - j + 1;
  return S::first_lanes(k <= 0 ? 0 : (k >= S::W ? S::W : static_cast<int>(k)));
}

// kept_j = e_j > cut_e or (e_j == cut_e and j <= cut_index) (nucleus.h's nucleus_kept).
template <class S>
inline typename S::M nucleus_kept_v(typename S::V e, int64_t j, typename S::V cut_e,
                                    int64_t cut_index) {
  return S::mor(S::gt(e, cut_e), S::mand(S::eq(e, cut_e), lanes_upto<S>(j, cut_index)));
}

// The raw max of the row and whether the row is bad (NaN or +inf anywhere, or all -inf).
template <class S, int Code>
inline bool scan_row(const void* row, int64_t n, typename S::Acc& max_out) {
  using V = typename S::V;
  using Acc = typename S::Acc;
  constexpr int W = S::W;
  const V ninf = S::set1(-static_cast<Acc>(INFINITY));
  V m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  typename S::M nan = S::none();
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    const V x0 = S::template load<Code>(row, j), x1 = S::template load<Code>(row, j + W);
    const V x2 = S::template load<Code>(row, j + 2 * W), x3 = S::template load<Code>(row, j + 3 * W);
    m0 = S::max(m0, x0);
    m1 = S::max(m1, x1);
    m2 = S::max(m2, x2);
    m3 = S::max(m3, x3);
    nan = S::mor(nan, S::mor(S::mor(S::is_nan(x0), S::is_nan(x1)),
                             S::mor(S::is_nan(x2), S::is_nan(x3))));
  }
  for (; j < n; j += W) {
    const V x = load_row<S, Code>(row, j, n);
    m0 = S::max(m0, x);
    nan = S::mor(nan, S::is_nan(x));
  }
  const Acc mx = S::hmax(S::max(S::max(m0, m1), S::max(m2, m3)));
  max_out = mx;
  return S::any(nan) || !(mx > -static_cast<Acc>(INFINITY)) || mx == static_cast<Acc>(INFINITY);
}

template <class S>
struct ExpRow {
  double sum;    // sum_j e_j
  int64_t ones;  // #{j : e_j >= 1} (the max and its ties: e <= 1)
};

// Writes e_j to buf[0, round_up(n, 4W)) (zero padded) and returns their sum. The sum is taken
// exactly as mass_at_least takes its masked sums (per block of sum_block elements four vector
// accumulators, vector k into k % 4, reduced and added in double), so the mass of every e_j > 0
// equals it bit for bit.
template <class S, int Code>
inline ExpRow<S> exp_row(const void* row, int64_t n, typename S::Acc max, typename S::Acc inv_t,
                         typename S::Acc* buf) {
  using V = typename S::V;
  constexpr int W = S::W;
  const V m = S::set1(max), s = S::set1(inv_t), one = S::set1(1);
  double total = 0;
  int64_t ones = 0;
  const int64_t n_pad = round_up<S>(n, 4 * W);
  for (int64_t b = 0; b < n_pad; b += sum_block<S>()) {
    const int64_t b_end = b + sum_block<S>() < n_pad ? b + sum_block<S>() : n_pad;
    V a0 = S::zero(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t j = b; j < b_end; j += 4 * W) {
      V e[4], d;
      for (int u = 0; u < 4; ++u) {
        const int64_t k = j + u * W;
        e[u] = k < n ? e_of<S>(load_row<S, Code>(row, k, n), m, s, d) : S::zero();
        S::storeu(buf + k, e[u]);
        ones += S::count(S::ge(e[u], one));
      }
      a0 = S::add(a0, e[0]);
      a1 = S::add(a1, e[1]);
      a2 = S::add(a2, e[2]);
      a3 = S::add(a3, e[3]);
    }
    total += S::hsum(S::add(S::add(a0, a1), S::add(a2, a3)));
  }
  return {total, ones};
}

template <class S>
struct MassCount {
  double mass;    // sum of the values >= t
  int64_t count;  // how many
};

// Over values[0, n), n a multiple of W (NaN padding is never counted).
template <class S>
inline MassCount<S> mass_at_least(const typename S::Acc* values, int64_t n, typename S::Acc t) {
  using V = typename S::V;
  using M = typename S::M;
  constexpr int W = S::W;
  const V tv = S::set1(t);
  double total = 0;
  int64_t c0 = 0, c1 = 0;
  for (int64_t b = 0; b < n; b += sum_block<S>()) {
    const int64_t b_end = b + sum_block<S>() < n ? b + sum_block<S>() : n;
    V a0 = S::zero(), a1 = a0, a2 = a0, a3 = a0;
    int64_t j = b;
    for (; j + 4 * W <= b_end; j += 4 * W) {
      const V v0 = S::loadu(values + j), v1 = S::loadu(values + j + W);
      const V v2 = S::loadu(values + j + 2 * W), v3 = S::loadu(values + j + 3 * W);
      const M k0 = S::ge(v0, tv), k1 = S::ge(v1, tv), k2 = S::ge(v2, tv), k3 = S::ge(v3, tv);
      a0 = S::mask_add(a0, k0, v0);
      a1 = S::mask_add(a1, k1, v1);
      a2 = S::mask_add(a2, k2, v2);
      a3 = S::mask_add(a3, k3, v3);
      c0 += S::count(k0) + S::count(k1);
      c1 += S::count(k2) + S::count(k3);
    }
    for (; j < b_end; j += W) {
      const V v = S::loadu(values + j);
      const M k = S::ge(v, tv);
      a0 = S::mask_add(a0, k, v);
      c0 += S::count(k);
    }
    total += S::hsum(S::add(S::add(a0, a1), S::add(a2, a3)));
  }
  return {total, c0 + c1};
}

template <class S>
struct Compacted {
  int64_t count;
  typename S::Acc min, max;  // of the values kept (inf, -inf when none)
};

// Packs the values v of in[0, n) (n a multiple of W) with lo <= v < hi into out (out == in is
// allowed), then W NaNs after them; out needs room for n + W values. Four vectors a step, their
// counts taken before the stores, so the store addresses do not wait on a popcount chain; a step
// with nothing selected (most of them, once the range is narrow) stores nothing.
template <class S>
inline Compacted<S> compact(const typename S::Acc* in, int64_t n, typename S::Acc lo,
                            typename S::Acc hi, typename S::Acc* out) {
  using V = typename S::V;
  using M = typename S::M;
  using Acc = typename S::Acc;
  constexpr int W = S::W;
  const V lo_v = S::set1(lo), hi_v = S::set1(hi);
  V min0 = S::set1(static_cast<Acc>(INFINITY)), min1 = min0;
  V max0 = S::set1(-static_cast<Acc>(INFINITY)), max1 = max0;
  int64_t k = 0, j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    const V v0 = S::loadu(in + j), v1 = S::loadu(in + j + W);
    const V v2 = S::loadu(in + j + 2 * W), v3 = S::loadu(in + j + 3 * W);
    const M s0 = S::mand(S::ge(v0, lo_v), S::lt(v0, hi_v));
    const M s1 = S::mand(S::ge(v1, lo_v), S::lt(v1, hi_v));
    const M s2 = S::mand(S::ge(v2, lo_v), S::lt(v2, hi_v));
    const M s3 = S::mand(S::ge(v3, lo_v), S::lt(v3, hi_v));
    if (!S::any(S::mor(S::mor(s0, s1), S::mor(s2, s3)))) continue;
    min0 = S::mask_min(S::mask_min(min0, s0, v0), s2, v2);
    min1 = S::mask_min(S::mask_min(min1, s1, v1), s3, v3);
    max0 = S::mask_max(S::mask_max(max0, s0, v0), s2, v2);
    max1 = S::mask_max(S::mask_max(max1, s1, v1), s3, v3);
    const int c0 = S::count(s0), c1 = S::count(s1), c2 = S::count(s2);
    S::compress_store(out + k, s0, v0);
    S::compress_store(out + k + c0, s1, v1);
    S::compress_store(out + k + c0 + c1, s2, v2);
    k += c0 + c1 + c2 + S::compress_store(out + k + c0 + c1 + c2, s3, v3);
  }
  for (; j < n; j += W) {
    const V v = S::loadu(in + j);
    const M sel = S::mand(S::ge(v, lo_v), S::lt(v, hi_v));
    min0 = S::mask_min(min0, sel, v);
    max0 = S::mask_max(max0, sel, v);
    k += S::compress_store(out + k, sel, v);
  }
  for (int i = 0; i < W; ++i) out[k + i] = quiet_nan<Acc>();
  return {k, S::hmin(S::min(min0, min1)), S::hmax(S::max(max0, max1))};
}

// The index of the r-th (1-based, in index order) value equal to kappa > 0 in buf[0, n).
template <class S>
inline int64_t nth_equal(const typename S::Acc* buf, int64_t n, typename S::Acc kappa, int64_t r) {
  const typename S::V kv = S::set1(kappa);
  int64_t seen = 0;
  for (int64_t j = 0; j < n; j += S::W) {
    const typename S::M k = S::eq(S::loadu(buf + j), kv);
    const int c = S::count(k);
    if (seen + c < r) {
      seen += c;
      continue;
    }
    for (uint32_t b = S::bits(k); b != 0; b &= b - 1) {
      if (++seen == r) return j + __builtin_ctz(b);
    }
  }
  return -1;
}

}  // namespace
}  // namespace cpu
}  // namespace entropy_ops
