// masked_quantile_cpu (token_cpu.h): the two order statistics v_(floor r), v_(ceil r) of every
// quantile, exact, by selection rather than a sort.
// - Per sequence (sequences in parallel, split by token count): the valid entries' order keys are
//   compacted into a per-thread buffer and nth_element finds v_(floor r); v_(ceil r) is the
//   smallest key after it. O(m) per quantile.
// - Over all tokens (one sequence of any size, no 16M cap): RadixSelect (order_select.h), two
//   parallel passes over the input (more only where a bucket holds over n/32 entries) and no
//   copy of it.
// Keys are compared as unsigned integers, so -0.0 == +0.0, infinities rank as values, and the
// key read back is the value itself (bf16 / fp16 widened exactly to fp32). The ranks are the
// contract's float64 r = max(q (m - 1), 0), the same IEEE product that Python's interpolation
// then recomputes.
#include <math.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/elem_io.h"
#include "cpu/order_select.h"
#include "cpu/thread_pool.h"
#include "cpu/token_cpu.h"

namespace entropy_ops {
namespace cpu {
namespace {

// The ranks floor(r) and ceil(r) of quantile q among m >= 1 entries.
inline void quantile_ranks(double q, int64_t m, int64_t* lo, int64_t* hi) {
  const double r = std::max(q * static_cast<double>(m - 1), 0.0);
  *lo = static_cast<int64_t>(floor(r));
  *hi = static_cast<int64_t>(ceil(r));
}

template <int Code>
struct QuantileTypes {
  using Value = typename ElemIO<Code>::Acc;  // float or double: holds the value exactly
  using Key = std::conditional_t<std::is_same<Value, double>::value, uint64_t, uint32_t>;
};

template <int Code>
void per_sequence(const void* x, const uint8_t* mask, const int64_t* cu, int64_t n_seq, int64_t n,
                  const double* q, int64_t n_q, double* v_lo, double* v_hi, int64_t* count,
                  int num_threads) {
  using Value = typename QuantileTypes<Code>::Value;
  using Key = typename QuantileTypes<Code>::Key;
  const int workers = static_cast<int>(
      std::min<int64_t>(std::max(num_threads, 1), std::max<int64_t>(1, n / (int64_t(1) << 14))));
  // A worker takes the sequences that start in its share of the tokens (the last one also those
  // starting at n: empty sequences at the end).
  parallel_for(std::max<int64_t>(n, 1), workers, [&](int64_t begin, int64_t end) {
    const int64_t s0 = std::lower_bound(cu, cu + n_seq, begin) - cu;
    const int64_t s1 = end >= n ? n_seq : std::lower_bound(cu, cu + n_seq, end) - cu;
    std::vector<Key> keys;
    for (int64_t s = s0; s < s1; ++s) {
      keys.clear();
      for (int64_t j = cu[s]; j < cu[s + 1]; ++j) {
        const Value v = ElemIO<Code>::load(x, j);
        if ((mask == nullptr || mask[j]) && !isnan(v)) keys.push_back(order_key(v));
      }
      const int64_t m = static_cast<int64_t>(keys.size());
      count[s] = m;
      for (int64_t i = 0; i < n_q; ++i) {
        double* lo_out = v_lo + i * n_seq + s;
        double* hi_out = v_hi + i * n_seq + s;
        if (m == 0) {
          *lo_out = *hi_out = NAN;
          continue;
        }
        int64_t lo, hi;
        quantile_ranks(q[i], m, &lo, &hi);
        const auto nth = keys.begin() + lo;
        std::nth_element(keys.begin(), nth, keys.end());
        const Key above = hi == lo ? *nth : *std::min_element(nth + 1, keys.end());
        *lo_out = static_cast<double>(key_value(*nth));
        *hi_out = static_cast<double>(key_value(above));
      }
    }
  });
}

template <int Code>
void over_all(const void* x, const uint8_t* mask, int64_t n, const double* q, int64_t n_q,
              double* v_lo, double* v_hi, int64_t* count, int num_threads) {
  using Value = typename QuantileTypes<Code>::Value;
  using Key = typename QuantileTypes<Code>::Key;
  // RadixSelect wants a key written for every entry (its passes are branch-free) and captures
  // by value.
  const auto load = [x, mask](int64_t j, Key* key) {
    const Value v = ElemIO<Code>::load(x, j);
    *key = order_key(v);
    return (mask == nullptr || mask[j] != 0) & !isnan(v);
  };
  const int workers = static_cast<int>(
      std::min<int64_t>(std::max(num_threads, 1), std::max<int64_t>(1, n / (int64_t(1) << 16))));
  const RadixSelect<Key, decltype(load)> select(n, workers, load);
  const int64_t m = select.total();
  count[0] = m;
  if (m == 0) {
    for (int64_t i = 0; i < n_q; ++i) v_lo[i] = v_hi[i] = NAN;
    return;
  }
  std::vector<int64_t> ranks(2 * n_q);
  for (int64_t i = 0; i < n_q; ++i) quantile_ranks(q[i], m, &ranks[2 * i], &ranks[2 * i + 1]);
  std::vector<Key> keys(2 * n_q);
  select.select(ranks.data(), static_cast<int>(2 * n_q), keys.data());
  for (int64_t i = 0; i < n_q; ++i) {
    v_lo[i] = static_cast<double>(key_value(keys[2 * i]));
    v_hi[i] = static_cast<double>(key_value(keys[2 * i + 1]));
  }
}

template <int Code>
void quantile_typed(const void* x, const uint8_t* mask, const int64_t* cu, int64_t n_seq, int64_t n,
                    const double* q, int64_t n_q, double* v_lo, double* v_hi, int64_t* count,
                    int num_threads) {
  if (cu == nullptr) {
    over_all<Code>(x, mask, n, q, n_q, v_lo, v_hi, count, num_threads);
  } else {
    per_sequence<Code>(x, mask, cu, n_seq, n, q, n_q, v_lo, v_hi, count, num_threads);
  }
}

}  // namespace

void masked_quantile_cpu(const void* x, int dtype, const uint8_t* mask, const int64_t* cu,
                         int64_t n_seq, int64_t n, const double* q, int64_t n_q, double* v_lo,
                         double* v_hi, int64_t* count, int num_threads) {
  switch (dtype) {
    case kFloat32:
      return quantile_typed<kFloat32>(x, mask, cu, n_seq, n, q, n_q, v_lo, v_hi, count, num_threads);
    case kBFloat16:
      return quantile_typed<kBFloat16>(x, mask, cu, n_seq, n, q, n_q, v_lo, v_hi, count, num_threads);
    case kFloat16:
      return quantile_typed<kFloat16>(x, mask, cu, n_seq, n, q, n_q, v_lo, v_hi, count, num_threads);
    default:
      return quantile_typed<kFloat64>(x, mask, cu, n_seq, n, q, n_q, v_lo, v_hi, count, num_threads);
  }
}

}  // namespace cpu
}  // namespace entropy_ops
