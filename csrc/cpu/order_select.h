// Exact order statistics without sorting: order-preserving unsigned keys of the values, and a
// radix selection over many entries (masked_quantile over all tokens, top_k).
#pragma once

#include <stdint.h>

#include <algorithm>
#include <vector>

#include "cpu/thread_pool.h"
#include "entropy_ops/dtype.h"

namespace entropy_ops {
namespace cpu {

// Unsigned keys in the order of the (non-NaN) values: the bit pattern with the sign bit set for
// positive numbers and every bit flipped for negative ones. -0.0 takes +0.0's key (the values
// are equal, so neither may rank before the other). Branch-free: the signs of real scores are a
// coin toss for the branch predictor.
inline uint32_t order_key(float v) {
  uint32_t u = float_to_bits(v);
  u &= -static_cast<uint32_t>((u << 1) != 0);  // -0.0 -> +0.0
  const uint32_t neg = static_cast<uint32_t>(static_cast<int32_t>(u) >> 31);
  return u ^ (neg | 0x80000000u);
}
inline uint64_t order_key(double v) {
  uint64_t u = double_to_bits(v);
  u &= -static_cast<uint64_t>((u << 1) != 0);  // -0.0 -> +0.0
  const uint64_t neg = static_cast<uint64_t>(static_cast<int64_t>(u) >> 63);
  return u ^ (neg | (uint64_t(1) << 63));
}
inline uint64_t order_key(int64_t v) { return static_cast<uint64_t>(v) ^ (uint64_t(1) << 63); }

inline float key_value(uint32_t k) { return bits_to_float((k >> 31) ? (k & 0x7fffffffu) : ~k); }
inline double key_value(uint64_t k) {
  return bits_to_double((k >> 63) ? (k & ~(uint64_t(1) << 63)) : ~k);
}

// A set of keys sharing their top `bits` bits: key & mask == value.
template <typename Key>
struct KeyPrefix {
  static constexpr int kBits = 8 * sizeof(Key);
  int bits = 0;
  Key value = 0;
  Key mask() const { return bits == 0 ? Key(0) : Key(~Key(0) << (kBits - bits)); }
  bool exact() const { return bits == kBits; }
  bool operator==(const KeyPrefix& o) const { return bits == o.bits && value == o.value; }
};

// Where a rank's key lies once narrowed: its prefix, the alive entries below the prefix, and the
// per-chunk counts of the entries inside it (chunks in index order).
template <typename Key>
struct RankBucket {
  KeyPrefix<Key> prefix;
  int64_t below = 0;
  std::vector<int64_t> counts;
  int64_t count() const {
    int64_t c = 0;
    for (int64_t x : counts) c += x;
    return c;
  }
};

// Selection over entries j in [0, n) given by load(j, &key) -> alive (load writes a key, any one,
// even for a dead entry, so that the passes are branch-free). `load` is copied, and each pass
// works on its own copy: it must capture by value, since a capture by reference would be reloaded
// after every store of a counter or an output byte (they may alias it). MSD radix: one pass histograms the
// top digit (11 bits for 32-bit keys: 2K 32-bit counters per sub-histogram stay in L1; 16 for
// 64-bit keys, whose top 12 bits are little more than the exponent); narrow() descends into a
// rank's bucket with one more pass per 11-bit digit while the bucket holds more than cap()
// entries, so that the gathered candidates stay small whatever the distribution; an exact
// prefix (every key equal) is never gathered. 20M fp32 entries: torch's sort takes ~2.5 s on 2
// cores; this, two to three reads of the input.
template <typename Key, typename Load>
class RadixSelect {
 public:
  static constexpr int kBits = 8 * sizeof(Key);
  static constexpr int kFirstDigit = sizeof(Key) == 4 ? 11 : 16;
  static constexpr int kDigit = 11;

  RadixSelect(int64_t n, int workers, Load load)
      : n_(n), chunks_(static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(workers, n)))),
        load_(load) {
    top_ = histogram<true>(KeyPrefix<Key>(), kFirstDigit);
    const int64_t buckets = int64_t(1) << kFirstDigit;
    top_below_.assign(buckets + 1, 0);
    for (int64_t b = 0; b < buckets; ++b) {
      int64_t sum = 0;
      for (int c = 0; c < chunks_; ++c) sum += top_[c * buckets + b];
      top_below_[b + 1] = top_below_[b] + sum;
    }
  }

  int64_t total() const { return top_below_.back(); }
  int chunks() const { return chunks_; }
  // Buckets larger than this are split further rather than gathered.
  int64_t cap() const { return std::max<int64_t>(n_ / 32, int64_t(1) << 14); }

  // The bucket of ascending rank `rank` (in [0, total())): exact, or holding at most cap() entries.
  RankBucket<Key> narrow(int64_t rank) const {
    RankBucket<Key> r;
    const int64_t buckets = int64_t(1) << kFirstDigit;
    const int64_t b =
        std::upper_bound(top_below_.begin() + 1, top_below_.end(), rank) - (top_below_.begin() + 1);
    r.prefix.bits = kFirstDigit;
    r.prefix.value = Key(Key(b) << (kBits - kFirstDigit));
    r.below = top_below_[b];
    r.counts.resize(chunks_);
    for (int c = 0; c < chunks_; ++c) r.counts[c] = top_[c * buckets + b];
    while (!r.prefix.exact() && r.count() > cap()) {
      const int digit = std::min(kDigit, kBits - r.prefix.bits);
      const int64_t sub = int64_t(1) << digit;
      const std::vector<int64_t> h = histogram<false>(r.prefix, digit);
      int64_t below = r.below, d = 0;
      for (;; ++d) {
        int64_t sum = 0;
        for (int c = 0; c < chunks_; ++c) sum += h[c * sub + d];
        if (rank < below + sum || d == sub - 1) break;
        below += sum;
      }
      r.prefix.bits += digit;
      r.prefix.value |= Key(Key(d) << (kBits - r.prefix.bits));
      r.below = below;
      for (int c = 0; c < chunks_; ++c) r.counts[c] = h[c * sub + d];
    }
    return r;
  }

  // out[i] = the key of ascending rank ranks[i] (each in [0, total())). One gather pass for all
  // the buckets that are not exact, then nth_element inside each.
  void select(const int64_t* ranks, int n_ranks, Key* out) const {
    std::vector<RankBucket<Key>> buckets;
    std::vector<int> bucket_of(n_ranks);
    for (int i = 0; i < n_ranks; ++i) {
      RankBucket<Key> r = narrow(ranks[i]);
      int s = 0;
      while (s < static_cast<int>(buckets.size()) && !(buckets[s].prefix == r.prefix)) ++s;
      if (s == static_cast<int>(buckets.size())) buckets.push_back(std::move(r));
      bucket_of[i] = s;
    }
    // members[s]: bucket s's keys, chunk c's at offset[s][c] (sizes known from the histograms).
    const int n_b = static_cast<int>(buckets.size());
    std::vector<std::vector<Key>> members(n_b);
    std::vector<std::vector<int64_t>> offset(n_b, std::vector<int64_t>(chunks_ + 1, 0));
    std::vector<int> gathered;
    for (int s = 0; s < n_b; ++s) {
      if (buckets[s].prefix.exact()) continue;
      for (int c = 0; c < chunks_; ++c) offset[s][c + 1] = offset[s][c] + buckets[s].counts[c];
      members[s].resize(offset[s][chunks_]);
      gathered.push_back(s);
    }
    if (!gathered.empty()) {
      for_chunks([&](int c, int64_t begin, int64_t end) {
        std::vector<Key*> dst(n_b);
        for (int s : gathered) dst[s] = members[s].data() + offset[s][c];
        const Load load = load_;
        Key key;
        for (int64_t j = begin; j < end; ++j) {
          if (!load(j, &key)) continue;
          for (int s : gathered) {
            if ((key & buckets[s].prefix.mask()) == buckets[s].prefix.value) {
              *dst[s]++ = key;
              break;
            }
          }
        }
      });
    }
    for (int i = 0; i < n_ranks; ++i) {
      const RankBucket<Key>& r = buckets[bucket_of[i]];
      if (r.prefix.exact()) {
        out[i] = r.prefix.value;
        continue;
      }
      std::vector<Key>& m = members[bucket_of[i]];
      const auto nth = m.begin() + (ranks[i] - r.below);
      std::nth_element(m.begin(), nth, m.end());
      out[i] = *nth;
    }
  }

  // f(chunk, begin, end) over the chunks of [0, n), in parallel.
  template <typename F>
  void for_chunks(const F& f) const {
    parallel_for(chunks_, chunks_, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        f(static_cast<int>(c), n_ * c / chunks_, n_ * (c + 1) / chunks_);
      }
    });
  }

 private:
  // Per-chunk counts ([chunks, 2^digit]) of the next `digit` bits of the alive keys in `prefix`.
  // Two interleaved 32-bit sub-histograms (runs of equal buckets would otherwise serialize on
  // one counter), flushed to int64 every 2^30 entries; a dead entry adds 0 (no branch). The top
  // digit (kTop) has a constant shift and no prefix test: ~40% less time for that hot pass.
  template <bool kTop>
  std::vector<int64_t> histogram(const KeyPrefix<Key>& prefix, int digit) const {
    const int64_t buckets = int64_t(1) << digit;
    const int shift = kBits - prefix.bits - digit;
    const Key mask = prefix.mask(), value = prefix.value, low = Key(buckets - 1);
    std::vector<int64_t> hist(static_cast<size_t>(chunks_) * buckets, 0);
    for_chunks([&](int c, int64_t begin, int64_t end) {
      std::vector<uint32_t> h(2 * buckets);
      uint32_t* h0 = h.data();
      uint32_t* h1 = h0 + buckets;
      for (int64_t b0 = begin; b0 < end; b0 += int64_t(1) << 30) {
        const int64_t b1 = std::min(end, b0 + (int64_t(1) << 30));
        const Load load = load_;
        const Key m = mask, v = value, lo = low;
        const int sh = shift;
        const auto add = [&](uint32_t* to, int64_t j) {
          Key key;
          if (kTop) {
            const uint32_t in = load(j, &key);
            to[key >> (kBits - kFirstDigit)] += in;
          } else {
            const bool in = load(j, &key) & ((key & m) == v);
            to[(key >> sh) & lo] += in;
          }
        };
        int64_t j = b0;
        for (; j + 1 < b1; j += 2) {
          add(h0, j);
          add(h1, j + 1);
        }
        if (j < b1) add(h0, j);
        int64_t* out = hist.data() + c * buckets;
        for (int64_t d = 0; d < buckets; ++d) out[d] += int64_t(h0[d]) + h1[d];
        std::fill(h.begin(), h.end(), 0u);
      }
    });
    return hist;
  }

  const int64_t n_;
  const int chunks_;
  const Load load_;
  std::vector<int64_t> top_;        // [chunks, 2^kFirstDigit] counts of the top digit
  std::vector<int64_t> top_below_;  // top_below_[b]: alive entries in the top buckets before b
};

}  // namespace cpu
}  // namespace entropy_ops
