// top_k_cpu (token_cpu.h): the k eligible entries of largest score, ties to the lowest index.
// RadixSelect (order_select.h) histograms the top digit of the keys and narrows to the bucket P
// holding the k-th largest key. One pass then marks the entries above P and gathers those inside
// it (key and index, in index order: at most RadixSelect::cap() of them, re-read only in the
// 64-entry blocks that hold some); the threshold T is the right rank among the candidates, and
// they are marked last: above T, then the first k - #above ties. Where P is one key (every
// candidate ties) the pass marks the ties itself, counting them per chunk from the histogram.
// Two reads of the input (more only where P's bucket is large), whatever k. The chunks are fixed
// by n and the thread count, and the tie order by the index alone, so the selection is the same
// for any split. k is read here, from the device (CPU) tensor.
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
  // Branch-free: the key is read whether or not the entry is eligible. Captures by value, as
  // RadixSelect asks (and so do the passes below, which store bytes that may alias anything).
  const auto alive = [eligible, load](int64_t j, Key* key) {
    *key = load(j);
    return eligible[j] != 0;
  };
  const int workers = static_cast<int>(
      std::min<int64_t>(std::max(num_threads, 1), std::max<int64_t>(1, n / (int64_t(1) << 16))));
  const RadixSelect<Key, decltype(alive)> select(n, workers, alive);
  const int64_t m = select.total();
  if (k >= m) {  // every eligible entry
    parallel_for(n, workers, [&](int64_t b, int64_t e) {
      const uint8_t* const el = eligible;  // locals: a byte store could alias the captures
      uint8_t* const o = out;
      for (int64_t j = b; j < e; ++j) o[j] = el[j] != 0;
    });
    return;
  }
  const RankBucket<Key> bucket = select.narrow(m - k);  // ascending rank of the k-th largest
  const int chunks = select.chunks();
  const Key mask = bucket.prefix.mask(), value = bucket.prefix.value;
  const int64_t n_above_bucket = m - bucket.below - bucket.count();
  if (bucket.prefix.exact()) {  // T = value; ties in index order, per chunk from the counts
    const int64_t take_ties = k - n_above_bucket;
    std::vector<int64_t> ties_before(chunks, 0);
    for (int c = 1; c < chunks; ++c) ties_before[c] = ties_before[c - 1] + bucket.counts[c - 1];
    select.for_chunks([&](int c, int64_t b, int64_t e) {
      const auto ld = alive;
      const Key t = value;
      const int64_t take = take_ties;
      uint8_t* const o = out;
      int64_t tie = ties_before[c];
      Key key;
      for (int64_t j = b; j < e; ++j) {
        const bool a = ld(j, &key);
        const bool eq = a & (key == t);
        o[j] = (a & (key > t)) | (eq & (tie < take));
        tie += eq;
      }
    });
    return;
  }
  // Mark above the bucket; gather the bucket's keys and indices, chunk c's at offset[c].
  std::vector<int64_t> offset(chunks + 1, 0);
  for (int c = 0; c < chunks; ++c) offset[c + 1] = offset[c] + bucket.counts[c];
  std::vector<Key> cand_key(offset[chunks]);
  std::vector<int64_t> cand_idx(offset[chunks]);
  // Candidates under 1/128 of the entries: under ~40% of the 64-entry blocks hold one, and the
  // blocked loop below pays off (k = 589 of 4M fp32 normal: 1/3 less time; k = 100000: 10% more).
  const bool sparse = offset[chunks] * 128 < n;
  select.for_chunks([&](int c, int64_t b, int64_t e) {
    const auto ld = alive;
    const Key pm = mask, pv = value;
    uint8_t* const o = out;
    Key* const ck = cand_key.data();
    int64_t* const ci = cand_idx.data();
    int64_t pos = offset[c];
    if (!sparse) {
      for (int64_t j = b; j < e; ++j) {
        Key key;
        const bool a = ld(j, &key);
        const Key masked = key & pm;
        o[j] = a & (masked > pv);
        if (a & (masked == pv)) {
          ck[pos] = key;
          ci[pos++] = j;
        }
      }
      return;
    }
    // Blocks of 64: a branch-free (vectorizable) marking loop that also counts the block's
    // candidates, and a second look at the few blocks holding some.
    for (int64_t b0 = b; b0 < e; b0 += 64) {
      const int64_t b1 = std::min(e, b0 + 64);
      uint32_t in_bucket = 0;
      for (int64_t j = b0; j < b1; ++j) {
        Key key;
        const bool a = ld(j, &key);
        const Key masked = key & pm;
        o[j] = a & (masked > pv);
        in_bucket += a & (masked == pv);
      }
      if (in_bucket == 0) continue;
      for (int64_t j = b0; j < b1; ++j) {
        Key key;
        if (ld(j, &key) && (key & pm) == pv) {
          ck[pos] = key;
          ci[pos++] = j;
        }
      }
    }
  });
  std::vector<Key> sorted(cand_key);
  const auto nth = sorted.begin() + (m - k - bucket.below);
  std::nth_element(sorted.begin(), nth, sorted.end());
  const Key threshold = *nth;
  int64_t take_ties = k - n_above_bucket;
  for (const Key key : cand_key) take_ties -= key > threshold;
  for (size_t i = 0; i < cand_key.size(); ++i) {
    const Key key = cand_key[i];
    if (key > threshold || (key == threshold && take_ties-- > 0)) out[cand_idx[i]] = 1;
  }
}

template <int Code>
void top_k_float(const void* scores, const uint8_t* eligible, int64_t n, int64_t k, uint8_t* out,
                 int num_threads) {
  using Value = typename ElemIO<Code>::Acc;
  using Key = decltype(order_key(Value(0)));
  top_k_keys<Key>(eligible, n, k, [scores](int64_t j) { return order_key(ElemIO<Code>::load(scores, j)); },
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
      top_k_keys<uint64_t>(eligible, n, want, [s](int64_t j) { return order_key(s[j]); }, out,
                           num_threads);
    }
  }
}

}  // namespace cpu
}  // namespace entropy_ops
