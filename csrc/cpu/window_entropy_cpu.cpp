// window_entropy_fwd_cpu / window_entropy_bwd_cpu (token_cpu.h).
//
// Every output sums its own window: there is no running sum or prefix-sum difference across a
// sequence, whose rounding (eps times everything before t) would grow with the sequence length.
// - Windows of at most kDirectMax tokens (ARES uses 4) add their terms in order (ShortWindows).
// - Longer windows use a block decomposition (van Herk / Gil-Werman): the sequence is cut into
//   blocks of `window` tokens aligned at the side where windows are truncated (the sequence's end
//   for the forward windows, its start for the transposed windows of the backward), so that a
//   window is the suffix of one block plus the prefix of the next, or a suffix or prefix of one
//   block. Each block's suffix and prefix sums are Kahan-compensated in the accumulation type:
//   O(N) work whatever the window, and an error of a few ulps of the window's own sum, which
//   grows neither with the window (1000 tokens summed in order in fp32 would lose ~3e-5 relative
//   in the worst case) nor with the sequence.
// Counts of valid tokens are integers, exact in any order. Masked tokens are skipped, never
// multiplied (a NaN in the padding stays out). Every value depends only on its own sequence: the
// blocks are placed by the sequence's bounds, never by N or by the split between threads.
#include <math.h>

#include <algorithm>
#include <vector>

#include "cpu/elem_io.h"
#include "cpu/thread_pool.h"
#include "cpu/token_cpu.h"

namespace entropy_ops {
namespace cpu {
namespace {

constexpr int64_t kDirectMax = 16;

int token_workers(int64_t n, int num_threads) {
  return static_cast<int>(std::min<int64_t>(std::max(num_threads, 1),
                                            std::max<int64_t>(1, n / (int64_t(1) << 14))));
}

// Runs f(s, e, t0, t1) on the pieces [t0, t1) of the sequences [s, e) that split [0, n) between
// the workers.
template <typename F>
void for_each_piece(const int64_t* cu, int64_t n_seq, int64_t n, int num_threads, const F& f) {
  parallel_for(n, token_workers(n, num_threads), [&](int64_t begin, int64_t end) {
    int64_t s = std::upper_bound(cu + 1, cu + n_seq + 1, begin) - (cu + 1);
    for (int64_t t = begin; t < end; ++s) {
      if (cu[s + 1] <= t) continue;  // an empty sequence
      const int64_t stop = std::min(cu[s + 1], end);
      f(cu[s], cu[s + 1], t, stop);
      t = stop;
    }
  });
}

template <typename Acc>
struct Kahan {
  Acc sum = 0, c = 0;  // c: what the rounding of sum added, to take out of the next term
  void add(Acc v) {
    const Acc y = v - c;
    const Acc t = sum + y;
    // Once the sum is infinite (or NaN) it is the answer: c would be NaN (inf - inf) and, kept,
    // would make every later partial sum NaN (a window holding an inf gave NaN, not inf).
    c = isfinite(t) ? (t - sum) - y : Acc(0);
    sum = t;
  }
  Acc value() const { return isfinite(sum) ? sum - c : sum; }
};

// Valid tokens in [lo, hi), windows visited with non-decreasing lo and hi: O(1) amortized.
class SlidingCount {
 public:
  explicit SlidingCount(const uint8_t* mask) : mask_(mask) {}
  int64_t operator()(int64_t lo, int64_t hi) {
    if (mask_ == nullptr) return hi - lo;
    if (lo >= hi_) lo_ = hi_ = lo, n_ = 0;
    for (; hi_ < hi; ++hi_) n_ += mask_[hi_];
    for (; lo_ < lo; ++lo_) n_ -= mask_[lo_];
    return n_;
  }

 private:
  const uint8_t* mask_;
  int64_t lo_ = 0, hi_ = 0, n_ = 0;
};

// Window sums of load(j) over one sequence [s, e), windows of at most `width` tokens visited with
// non-decreasing lo and hi. Block boundaries sit at anchor + multiples of width (anchor = e or s);
// a window that crosses none must end at its block's end or start at its block's start, which
// the anchoring at the truncated side guarantees.
template <typename Acc, typename Load>
class BlockSums {
 public:
  BlockSums(const Load& load, int64_t s, int64_t e, int64_t width, int64_t anchor)
      : load_(load), s_(s), e_(e), width_(width), anchor_(anchor) {}

  Acc operator()(int64_t lo, int64_t hi) {  // lo < hi
    const int64_t b_lo = raw_start(lo), b_hi = raw_start(hi - 1);
    if (b_lo == b_hi && hi != std::min(e_, b_lo + width_)) {  // a prefix: lo is the block start
      return prefix(b_hi)[hi - 1 - std::max(s_, b_hi)];
    }
    const Acc head = suffix(b_lo)[lo - std::max(s_, b_lo)];
    return b_lo == b_hi ? head : head + prefix(b_hi)[hi - 1 - std::max(s_, b_hi)];
  }

 private:
  int64_t raw_start(int64_t j) const {
    const int64_t r = (j - anchor_) % width_;
    return j - (r < 0 ? r + width_ : r);
  }

  const Acc* suffix(int64_t b) {
    if (b != suffix_block_) {
      suffix_.resize(width_);  // allocated on first use: a window as long as the sequence
      const int64_t lo = std::max(s_, b), hi = std::min(e_, b + width_);
      Kahan<Acc> k;
      for (int64_t j = hi - 1; j >= lo; --j) {
        k.add(load_(j));
        suffix_[j - lo] = k.value();
      }
      suffix_block_ = b;
    }
    return suffix_.data();
  }

  const Acc* prefix(int64_t b) {
    if (b != prefix_block_) {
      prefix_.resize(width_);  // never needs the prefixes
      const int64_t lo = std::max(s_, b), hi = std::min(e_, b + width_);
      Kahan<Acc> k;
      for (int64_t j = lo; j < hi; ++j) {
        k.add(load_(j));
        prefix_[j - lo] = k.value();
      }
      prefix_block_ = b;
    }
    return prefix_.data();
  }

  const Load& load_;
  const int64_t s_, e_, width_, anchor_;
  std::vector<Acc> suffix_, prefix_;
  int64_t suffix_block_ = INT64_MIN, prefix_block_ = INT64_MIN;
};

// The forward window of t in [s, e): [lo, hi).
inline void forward_window(int64_t t, int64_t e, int64_t window, int64_t offset, int64_t* lo,
                           int64_t* hi) {
  *lo = t + std::min(offset, e - t);
  *hi = *lo + std::min(window, e - *lo);
}

// Short windows (width <= kDirectMax), kTile outputs at a time: the terms the tile reads are
// staged (converted; masked ones, and those past the sequence, as 0), then summed one window
// position d per pass over the tile, so the outputs fill SIMD lanes while each adds its own terms
// in order d = 0, 1, ... (the order of the torch path's shifted slices: the same bits; a staged
// 0 adds nothing, x + 0 == x).
constexpr int64_t kTile = 1024;

template <typename Acc>
class ShortWindows {
 public:
  explicit ShortWindows(int64_t width) : width_(width), staged_(kTile + width), sums_(kTile) {}

  Acc* staged() { return staged_.data(); }  // the len + width - 1 terms of len outputs

  // sums[i] = sum over d < width of staged[i + d] (of staged[i + width - 1 - d] when reverse).
  const Acc* sum(int64_t len, bool reverse) {
    Acc* __restrict out = sums_.data();
    std::fill(out, out + len, Acc(0));
    for (int64_t d = 0; d < width_; ++d) {
      const Acc* __restrict src = staged_.data() + (reverse ? width_ - 1 - d : d);
      for (int64_t i = 0; i < len; ++i) out[i] += src[i];
    }
    return out;
  }

 private:
  const int64_t width_;
  std::vector<Acc> staged_, sums_;
};

// How many of the `size` staged tokens from `first` lie before the sequence's end e.
inline int64_t staged_inside(int64_t e, int64_t first, int64_t size) {
  return std::max<int64_t>(0, std::min(size, e - first));
}

// Valid tokens in the forward windows of t in [a, a + len) of a sequence ending at e (width:
// the longest window there), as exact small floats.
template <typename Acc>
const Acc* short_counts(ShortWindows<Acc>& counts, const uint8_t* mask, int64_t e, int64_t a,
                        int64_t len, int64_t width, int64_t offset) {
  Acc* c = counts.staged();
  const int64_t inside = staged_inside(e, a + offset, len + width - 1);
  if (mask == nullptr) {
    std::fill(c, c + inside, Acc(1));
  } else {
    const uint8_t* m = mask + a + offset;
    for (int64_t i = 0; i < inside; ++i) c[i] = static_cast<Acc>(m[i]);
  }
  std::fill(c + inside, c + len + width - 1, Acc(0));
  return counts.sum(len, false);
}

template <int Code>
void fwd_typed(const void* x, const uint8_t* mask, const int64_t* cu, int64_t n_seq, int64_t n,
               int64_t window, int64_t offset, void* out_ptr, int num_threads) {
  using Acc = typename ElemIO<Code>::Acc;
  Acc* out = static_cast<Acc*>(out_ptr);
  const auto load = [&](int64_t j) -> Acc {
    return mask == nullptr || mask[j] ? ElemIO<Code>::load(x, j) : Acc(0);
  };
  for_each_piece(cu, n_seq, n, num_threads, [&](int64_t s, int64_t e, int64_t t0, int64_t t1) {
    const int64_t width = std::min(window, e - s);
    if (width <= kDirectMax) {
      ShortWindows<Acc> values(width), counts(width);
      for (int64_t a = t0; a < t1; a += kTile) {
        const int64_t len = std::min(kTile, t1 - a);
        const Acc* n_valid = short_counts(counts, mask, e, a, len, width, offset);
        Acc* v = values.staged();
        const int64_t inside = staged_inside(e, a + offset, len + width - 1);
        for (int64_t i = 0; i < inside; ++i) v[i] = load(a + offset + i);
        std::fill(v + inside, v + len + width - 1, Acc(0));
        const Acc* sum = values.sum(len, false);
        for (int64_t i = 0; i < len; ++i) {
          const Acc mean = sum[i] / std::max(n_valid[i], Acc(1));  // no branch: SIMD lanes
          out[a + i] = n_valid[i] > 0 ? mean : Acc(0);
        }
      }
      return;
    }
    SlidingCount count(mask);
    BlockSums<Acc, decltype(load)> blocks(load, s, e, width, e);
    for (int64_t t = t0; t < t1; ++t) {
      int64_t lo, hi;
      forward_window(t, e, window, offset, &lo, &hi);
      const int64_t valid = lo < hi ? count(lo, hi) : 0;
      out[t] = valid > 0 ? blocks(lo, hi) / static_cast<Acc>(valid) : Acc(0);
    }
  });
}

template <typename Acc>
void bwd_typed(const Acc* grad, const uint8_t* mask, const int64_t* cu, int64_t n_seq, int64_t n,
               int64_t window, int64_t offset, Acc* share, Acc* out, int num_threads) {
  // share[t] = grad[t] / #valid(t), 0 where t's window is empty (a NaN gradient there stays out).
  for_each_piece(cu, n_seq, n, num_threads, [&](int64_t s, int64_t e, int64_t t0, int64_t t1) {
    const int64_t width = std::min(window, e - s);
    if (width <= kDirectMax) {
      ShortWindows<Acc> counts(width);
      for (int64_t a = t0; a < t1; a += kTile) {
        const int64_t len = std::min(kTile, t1 - a);
        const Acc* n_valid = short_counts(counts, mask, e, a, len, width, offset);
        for (int64_t i = 0; i < len; ++i) {
          const Acc part = grad[a + i] / std::max(n_valid[i], Acc(1));
          share[a + i] = n_valid[i] > 0 ? part : Acc(0);
        }
      }
      return;
    }
    SlidingCount count(mask);
    for (int64_t t = t0; t < t1; ++t) {
      int64_t lo, hi;
      forward_window(t, e, window, offset, &lo, &hi);
      const int64_t valid = lo < hi ? count(lo, hi) : 0;
      share[t] = valid > 0 ? grad[t] / static_cast<Acc>(valid) : Acc(0);
    }
  });
  // Token j is read by the t in [max(s, j - offset - window + 1), max(s, j - offset + 1)).
  const auto load = [&](int64_t t) -> Acc { return share[t]; };
  const auto valid = [&](int64_t j) { return mask == nullptr || mask[j]; };
  for_each_piece(cu, n_seq, n, num_threads, [&](int64_t s, int64_t e, int64_t j0, int64_t j1) {
    const int64_t width = std::min(window, e - s);
    if (width <= kDirectMax) {
      // Output j = a + i adds t = j - offset - d for d = 0, 1, ..., staged from the lowest t.
      ShortWindows<Acc> shares(width);
      for (int64_t a = j0; a < j1; a += kTile) {
        const int64_t len = std::min(kTile, j1 - a);
        Acc* v = shares.staged();
        for (int64_t i = 0; i < len + width - 1; ++i) {
          const int64_t t = a - offset - (width - 1) + i;
          v[i] = t >= s ? share[t] : Acc(0);
        }
        const Acc* sum = shares.sum(len, true);
        for (int64_t i = 0; i < len; ++i) out[a + i] = valid(a + i) ? sum[i] : Acc(0);
      }
      return;
    }
    BlockSums<Acc, decltype(load)> blocks(load, s, e, width, s);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t lo = std::max(s, j - offset - window + 1), hi = std::max(s, j - offset + 1);
      out[j] = valid(j) && lo < hi ? blocks(lo, hi) : Acc(0);
    }
  });
}

}  // namespace

void window_entropy_fwd_cpu(const void* x, int dtype, const uint8_t* mask, const int64_t* cu,
                            int64_t n_seq, int64_t n, int64_t window, int64_t offset, void* out,
                            int num_threads) {
  if (n <= 0) return;
  switch (dtype) {
    case kFloat32:
      return fwd_typed<kFloat32>(x, mask, cu, n_seq, n, window, offset, out, num_threads);
    case kBFloat16:
      return fwd_typed<kBFloat16>(x, mask, cu, n_seq, n, window, offset, out, num_threads);
    case kFloat16:
      return fwd_typed<kFloat16>(x, mask, cu, n_seq, n, window, offset, out, num_threads);
    default:
      return fwd_typed<kFloat64>(x, mask, cu, n_seq, n, window, offset, out, num_threads);
  }
}

void window_entropy_bwd_cpu(const void* grad, int dtype, const uint8_t* mask, const int64_t* cu,
                            int64_t n_seq, int64_t n, int64_t window, int64_t offset, void* share,
                            void* out, int num_threads) {
  if (n <= 0) return;
  if (dtype == kFloat64) {
    bwd_typed<double>(static_cast<const double*>(grad), mask, cu, n_seq, n, window, offset,
                      static_cast<double*>(share), static_cast<double*>(out), num_threads);
  } else {
    bwd_typed<float>(static_cast<const float*>(grad), mask, cu, n_seq, n, window, offset,
                     static_cast<float*>(share), static_cast<float*>(out), num_threads);
  }
}

}  // namespace cpu
}  // namespace entropy_ops
