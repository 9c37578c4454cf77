// top_k_cpu (token_cpu.h): the k eligible entries of largest score, ties to the lowest index.
// The k-th largest key T comes from RadixSelect (order_select.h: a histogram pass and a gather
// pass, no sort); then one pass counts, per chunk in index order, the entries above T and those
// equal to it, and a last pass marks the entries above T and the first k - #above ties. The
// chunks are fixed by n and the thread count, and the tie order by the index alone, so the
// selection is the same for any split. k is read here, from the device (CPU) tensor.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/elem_io.h"
#include "cpu/order_select.h"
#include "cpu/thread_pool.h"
#include "cpu/token_cpu.h"

namespace entropy_ops {
namespace cpu {
namespace {

template <typename Key, typename Load>
void top_k_keys(const uint8_t* eligible, int64_t n, int64_t k, const Load& load, uint8_t* out,
                int num_threads) {
  const auto alive = [&](int64_t j, Key* key) {
    if (!eligible[j]) return false;
    *key = load(j);
    return true;
  };
  const int workers = static_cast<int>(
      std::min<int64_t>(std::max(num_threads, 1), std::max<int64_t>(1, n / (int64_t(1) << 16))));
  const RadixSelect<Key, decltype(alive)> select(n, workers, alive);
  const int64_t m = select.total();
  if (k >= m) {  // every eligible entry
    parallel_for(n, workers, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) out[j] = eligible[j] ? 1 : 0;
    });
    return;
  }
  const int64_t rank = m - k;  // ascending rank of the k-th largest
  Key threshold;
  select.select(&rank, 1, &threshold);
  const int chunks = select.chunks();
  std::vector<int64_t> above(chunks, 0), ties(chunks, 0);
  select.for_chunks([&](int c, int64_t b, int64_t e) {
    Key key;
    for (int64_t j = b; j < e; ++j) {
      if (!alive(j, &key)) continue;
      above[c] += key > threshold;
      ties[c] += key == threshold;
    }
  });
  int64_t n_above = 0;
  for (int c = 0; c < chunks; ++c) n_above += above[c];
  std::vector<int64_t> ties_before(chunks, 0);  // ties in the chunks before c
  for (int c = 1; c < chunks; ++c) ties_before[c] = ties_before[c - 1] + ties[c - 1];
  const int64_t take_ties = k - n_above;
  select.for_chunks([&](int c, int64_t b, int64_t e) {
    int64_t tie = ties_before[c];
    Key key;
    for (int64_t j = b; j < e; ++j) {
      bool chosen = false;
      if (alive(j, &key)) chosen = key > threshold || (key == threshold && tie++ < take_ties);
      out[j] = chosen ? 1 : 0;
    }
  });
}

template <int Code>
void top_k_float(const void* scores, const uint8_t* eligible, int64_t n, int64_t k, uint8_t* out,
                 int num_threads) {
  using Value = typename ElemIO<Code>::Acc;
  using Key = decltype(order_key(Value(0)));
  top_k_keys<Key>(eligible, n, k, [&](int64_t j) { return order_key(ElemIO<Code>::load(scores, j)); },
                  out, num_threads);
}

}  // namespace

void top_k_cpu(const void* scores, int dtype, const uint8_t* eligible, int64_t n, const int64_t* k,
               uint8_t* out, int num_threads) {
  if (n <= 0) return;
  const int64_t want = *k;
  if (want <= 0) {
    memset(out, 0, static_cast<size_t>(n));
    return;
  }
  switch (dtype) {
    case kFloat32:
      return top_k_float<kFloat32>(scores, eligible, n, want, out, num_threads);
    case kBFloat16:
      return top_k_float<kBFloat16>(scores, eligible, n, want, out, num_threads);
    case kFloat16:
      return top_k_float<kFloat16>(scores, eligible, n, want, out, num_threads);
    case kFloat64:
      return top_k_float<kFloat64>(scores, eligible, n, want, out, num_threads);
    default: {
      const int64_t* s = static_cast<const int64_t*>(scores);
      top_k_keys<uint64_t>(eligible, n, want, [&](int64_t j) { return order_key(s[j]); }, out,
                           num_threads);
    }
  }
}

}  // namespace cpu
}  // namespace entropy_ops
