// top_p_entropy_fwd_cuda / top_p_entropy_bwd_cuda / top_p_mask_cuda: the top-p nucleus of
// entropy_ops/backends/kernel.py, one block per row (selective_rows.cuh), never a sort.
//
// Forward and mask, per row:
//   1. the row max (and whether the row is bad);
//   2. radix selection of the crossing value kappa on order_key(e) (< 2^30 since e <= 1): up to
//      three rounds of 10 bits, each one pass over the row building a shared-memory histogram of
//      the mass of the elements whose key shares the digits chosen so far, then a block scan of
//      the bins from the high end (largest e) finds the bin where the mass reaches the target.
//      The second round also records each bin's smallest and largest key: a bin holding a single
//      value (bf16 logits, usually) is kappa already and the third round is skipped.
//   3. one pass over the kept set: `nucleus_ties_kept` gives how many of the c tokens equal to
//      kappa are kept, the first r in index order; when 0 < r < c a block-wide prefix count of
//      the kappa tokens per tile of kSelThreads groups gives each one its rank. The forward sums
//      S_K = sum_K e_j and sum_K e_j (x_j - max) and writes (entropy, row_max, cut_e, cut_index,
//      log_norm); the mask kernel writes the bools.
//
// Masses are summed as integers, mass_j = floor(e_j 2^40) (exact and order-free, so the same row
// selects the same cut in any batch; below fp32's rounding of a sum of e_j). Since kappa is where
// an integer running sum first reaches ceil(top_p * sum mass) > 0, kappa always has mass >= 1:
// tokens with e_j < 2^-40 are never the crossing token and never kept (unless top_p >= 1).
// V < 2^23 keeps every sum < 2^63.
//
// Backward: one read of x and one write of the gradient per row; the kept set is re-derived from
// (row_max, cut_e, cut_index) with the same select_e.
#include "cuda/launchers.h"
#include "cuda/selective_rows.cuh"
#include "cuda/util.cuh"

namespace entropy_ops {
namespace gpu {
namespace {

constexpr int kDigitBits = 10;
constexpr int kBins = 1 << kDigitBits;
constexpr int kBinsPerThread = kBins / kSelThreads;
constexpr int kRounds = 3;  // 30 key bits
constexpr float kMassScale = 1099511627776.0f;  // 2^40: e * 2^40 is exact

__device__ __forceinline__ uint64_t mass_of(float e) { return __float2ull_rz(e * kMassScale); }

// A bin's mass is mass_hi[b] 2^32 + mass_lo[b]: two 32-bit shared atomics (native, where a 64-bit
// shared atomicAdd is a compare-and-swap loop), the low word's wrap-around carried into the high
// word exactly; most tokens have mass < 2^32 (e < 2^-8) and need only the low one.
struct SelectShared {
  unsigned int mass_lo[kBins];
  unsigned int mass_hi[kBins];
  unsigned int lo[kBins];  // smallest / largest key in the bin (round 1 only)
  unsigned int hi[kBins];
  unsigned long long sel_above;
  unsigned long long sel_mass;
  int sel_digit;  // -1: the mass never reaches the target
};

__device__ __forceinline__ void add_mass(SelectShared& sh, uint32_t d, unsigned long long m) {
  const unsigned int low = static_cast<unsigned int>(m);
  const unsigned int old = atomicAdd(&sh.mass_lo[d], low);
  const unsigned int high = static_cast<unsigned int>(m >> 32) + (old + low < old ? 1u : 0u);
  if (high != 0) atomicAdd(&sh.mass_hi[d], high);
}

__device__ __forceinline__ unsigned long long bin_mass(const SelectShared& sh, int d) {
  return (static_cast<unsigned long long>(sh.mass_hi[d]) << 32) | sh.mass_lo[d];
}

// The kept set before cut_index: e > kappa, and the first kept_ties of the ties (e == kappa) in
// index order; keep_all keeps every token.
struct Cut {
  float kappa;
  int64_t ties;
  int64_t kept_ties;
  bool keep_all;
};

__device__ inline Cut keep_all_cut() { return {0.0f, 0, 0, true}; }

template <int Code, bool kAligned>
__device__ Cut find_cut(const void* row, int len, float row_max, float k, double top_p,
                        bool inclusive, SelectShared& sh) {
  if (top_p >= 1.0) return keep_all_cut();
  uint32_t prefix = 0;
  unsigned long long above = 0, need = 0;
  double target = 0.0;
  for (int round = 0; round < kRounds; ++round) {
    const int shift = (kRounds - 1 - round) * kDigitBits;
    const bool track = round == 1;
    __syncthreads();  // the previous round's readers of sh are done
    for (int b = threadIdx.x; b < kBins; b += kSelThreads) {
      sh.mass_lo[b] = 0;
      sh.mass_hi[b] = 0;
      sh.lo[b] = 0xffffffffu;
      sh.hi[b] = 0;
    }
    if (threadIdx.x == 0) sh.sel_digit = -1;
    __syncthreads();
    for_each_group<Code, kAligned>(row, len, [&](const auto& x, int, int) {
#pragma unroll
      for (int e = 0; e < kVecWidth<Code>; ++e) {  // padding: e = 0, no mass
        const float ev = select_e(x[e], row_max, k);
        const unsigned long long m = mass_of(ev);
        const uint32_t key = order_key(ev);
        if (m == 0 || (key >> (shift + kDigitBits)) != prefix) continue;
        const uint32_t d = (key >> shift) & (kBins - 1);
        add_mass(sh, d, m);
        if (track) {
          atomicMin(&sh.lo[d], key);
          atomicMax(&sh.hi[d], key);
        }
      }
    });
    __syncthreads();
    // Thread t owns the digits kBins-1-(t kBinsPerThread + u): thread order is descending e.
    unsigned long long local = 0;
#pragma unroll
    for (int u = 0; u < kBinsPerThread; ++u) {
      local += bin_mass(sh, kBins - 1 - (threadIdx.x * kBinsPerThread + u));
    }
    unsigned long long total;
    unsigned long long run = above + block_exclusive_scan(local, &total);
    if (round == 0) {  // total = the row's mass; need > 0 since the max token has mass 2^40
      target = top_p * double(total);
      need = static_cast<unsigned long long>(ceil(target));
    }
#pragma unroll
    for (int u = 0; u < kBinsPerThread; ++u) {
      const int d = kBins - 1 - (threadIdx.x * kBinsPerThread + u);
      const unsigned long long m = bin_mass(sh, d);
      if (run < need && run + m >= need) {  // one digit of the block: the sums are monotone
        sh.sel_digit = d;
        sh.sel_above = run;
        sh.sel_mass = m;
      }
      run += m;
    }
    __syncthreads();
    const int digit = sh.sel_digit;
    if (digit < 0) return keep_all_cut();  // fp rounding of target (round 0 only)
    above = sh.sel_above;
    prefix = (prefix << kDigitBits) | uint32_t(digit);
    if (round == kRounds - 1 || (track && sh.lo[digit] == sh.hi[digit])) {
      const uint32_t key = round == kRounds - 1 ? prefix : sh.lo[digit];
      const float kappa = bits_to_float(key);
      const unsigned long long km = mass_of(kappa);
      const int64_t ties = int64_t(sh.sel_mass / km);  // every tie carries the same mass
      const int64_t kept = nucleus_ties_kept<double>(target, double(above), double(km), ties,
                                                     above > 0, inclusive);
      return {kappa, ties, kept, false};
    }
  }
  return keep_all_cut();  // not reached: the last round always resolves
}

// f(j, e, x, kept) for every element j < len of the thread's groups, in increasing j.
template <int Code, bool kAligned, typename F>
__device__ void nucleus_pass(const void* row, int len, float row_max, float k, const Cut& cut,
                             F&& f) {
  constexpr int W = kVecWidth<Code>;
  const bool ranked = !cut.keep_all && cut.kept_ties > 0 && cut.kept_ties < cut.ties;
  if (!ranked) {
    const bool all_ties = cut.keep_all || cut.kept_ties == cut.ties;
    for_each_group<Code, kAligned>(row, len, [&](const auto& x, int j, int n) {
#pragma unroll
      for (int e = 0; e < W; ++e) {
        if (e < n) {
          const float ev = select_e(x[e], row_max, k);
          f(j + e, ev, x[e], ev > cut.kappa || (ev == cut.kappa && all_ties));
        }
      }
    });
    return;
  }
  // Some ties kept, some not: tile by tile (group g = tile + threadIdx.x), the kappa tokens are
  // ranked by a prefix count over the threads plus the count of the earlier tiles.
  const int full = len / W;
  const int groups = (len + W - 1) / W;
  int64_t seen = 0;
  for (int tile = 0; tile < groups; tile += kSelThreads) {  // uniform trip count: scans inside
    const int g = tile + threadIdx.x;
    const int n = g < full ? W : (g < groups ? len - g * W : 0);
    float x[W], ev[W];
    if (n == W) {
      load_group<Code, kAligned>(row, g * W, x);
    } else {
      load_partial<Code>(row, g * W, n, -INFINITY, x);
    }
    int ties = 0;
#pragma unroll
    for (int e = 0; e < W; ++e) {
      ev[e] = select_e(x[e], row_max, k);
      ties += (e < n && ev[e] == cut.kappa) ? 1 : 0;
    }
    int tile_ties;
    int64_t rank = seen + block_exclusive_scan(ties, &tile_ties);
#pragma unroll
    for (int e = 0; e < W; ++e) {
      if (e < n) {
        const bool tie = ev[e] == cut.kappa;
        f(g * W + e, ev[e], x[e], ev[e] > cut.kappa || (tie && rank < cut.kept_ties));
        rank += tie ? 1 : 0;
      }
    }
    seen += tile_ties;
  }
}

struct TopPOut {
  float* entropy;
  float* row_max;
  float* cut_e;
  int32_t* cut_index;
  float* log_norm;
};

template <int Code, bool kAligned>
__global__ void __launch_bounds__(kSelThreads)
top_p_entropy_fwd_kernel(RowArgs r, double top_p, TopPOut o) {
  __shared__ SelectShared sh;
  const int len = int(r.vocab);
  for_each_row(r.n_rows, [&](int64_t i) {
    if (!row_active(r, i)) {  // not read
      if (threadIdx.x == 0) {
        o.entropy[i] = o.row_max[i] = o.cut_e[i] = o.log_norm[i] = 0.0f;
        o.cut_index[i] = 0;
      }
      return;
    }
    const void* row = row_ptr<Code>(r.logits, i, r.row_stride);
    const RowMax rm = row_max_pass<Code, kAligned>(row, len);
    if (rm.bad) {
      if (threadIdx.x == 0) {
        o.entropy[i] = o.log_norm[i] = quiet_nan<float>();
        o.row_max[i] = rm.value;
        o.cut_e[i] = 0.0f;
        o.cut_index[i] = -1;
      }
      return;
    }
    const float s = inv_temperature(r, i);
    const float k = select_k(s);
    const Cut cut = find_cut<Code, kAligned>(row, len, rm.value, k, top_p, false, sh);
    float sums[2] = {0.0f, 0.0f};  // S_K, sum_K e_j (x_j - max)
    int last_tie = -1;
    nucleus_pass<Code, kAligned>(row, len, rm.value, k, cut,
                                 [&](int j, float ev, float x, bool kept) {
      if (!kept) return;
      if (ev > 0.0f) {  // a p = 0 term adds exactly 0 (never 0 * -inf)
        sums[0] += ev;
        sums[1] += ev * (x - rm.value);
      }
      if (ev == cut.kappa) last_tie = j;
    });
    block_sum(sums);
    last_tie = block_max(last_tie);
    if (threadIdx.x == 0) {
      const float log_norm = eo_log(sums[0]);
      o.entropy[i] = log_norm - s * sums[1] / sums[0];
      o.log_norm[i] = log_norm;
      o.row_max[i] = rm.value;
      o.cut_e[i] = cut.kappa;
      o.cut_index[i] = cut.keep_all ? int32_t(len - 1) : int32_t(last_tie);
    }
  });
}

struct TopPBwdIn {
  const float* entropy;
  const float* row_max;
  const float* cut_e;
  const int32_t* cut_index;
  const float* log_norm;
  const float* grad_entropy;  // null: no gradient
  void* grad;
  int64_t grad_row_stride;
};

// g_j = -gH q_j (log q_j + H) / T over the kept set, log q_j = (x_j - max) / T - log_norm.
template <int Code, bool kAligned>
__global__ void __launch_bounds__(kSelThreads)
top_p_entropy_bwd_kernel(RowArgs r, TopPBwdIn b) {
  const int len = int(r.vocab);
  for_each_row(r.n_rows, [&](int64_t i) {
    void* grad = row_ptr<Code>(b.grad, i, b.grad_row_stride);
    const float g_h = b.grad_entropy != nullptr ? b.grad_entropy[i] : 0.0f;
    if (!row_active(r, i) || g_h == 0.0f) {
      fill_row<Code, kAligned>(grad, len, 0.0f);
      return;
    }
    const float row_max = b.row_max[i];
    if (!(fabsf(row_max) < INFINITY)) {  // a bad row (NaN/+inf, all -inf): NaN gradient
      fill_row<Code, kAligned>(grad, len, quiet_nan<float>());
      return;
    }
    const float s = inv_temperature(r, i);
    const float k = select_k(s);
    const float cut_e = b.cut_e[i];
    const int64_t cut_index = b.cut_index[i];
    const float log_norm = b.log_norm[i];
    const float h = b.entropy[i];
    const void* x_row = row_ptr<Code>(r.logits, i, r.row_stride);
    map_groups<Code, kAligned>(x_row, grad, len, [&](const auto& x, int j, int n, auto& y) {
#pragma unroll
      for (int e = 0; e < kVecWidth<Code>; ++e) {
        const float ev = select_e(x[e], row_max, k);
        float g = 0.0f;
        if (e < n && ev > 0.0f && nucleus_kept(ev, int64_t(j + e), cut_e, cut_index)) {
          const float lq = fmaf(x[e] - row_max, s, -log_norm);
          g = -g_h * (eo_exp(lq) * (lq + h)) * s;
        }
        y[e] = g;
      }
    });
  });
}

template <int Code, bool kAligned>
__global__ void __launch_bounds__(kSelThreads)
top_p_mask_kernel(RowArgs r, double top_p, bool inclusive, uint8_t* out, int64_t out_row_stride) {
  __shared__ SelectShared sh;
  const int len = int(r.vocab);
  for_each_row(r.n_rows, [&](int64_t i) {
    uint8_t* out_row = out + i * out_row_stride;
    bool live = row_active(r, i);
    const void* row = row_ptr<Code>(r.logits, i, r.row_stride);
    RowMax rm = {0.0f, false};
    if (live) {
      rm = row_max_pass<Code, kAligned>(row, len);
      live = !rm.bad;
    }
    if (!live) {  // masked (not read) or bad: all False
      for (int j = threadIdx.x; j < len; j += kSelThreads) out_row[j] = 0;
      return;
    }
    const float k = select_k(inv_temperature(r, i));
    const Cut cut = find_cut<Code, kAligned>(row, len, rm.value, k, top_p, inclusive, sh);
    nucleus_pass<Code, kAligned>(row, len, rm.value, k, cut,
                                 [&](int j, float, float, bool kept) { out_row[j] = kept; });
  });
}

// launch_selective with no labels; vocab >= kTopPMaxVocab is cudaErrorInvalidValue.
template <typename F>
cudaError_t launch_top_p(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                         int64_t row_stride, const float* temperature, double temperature_scalar,
                         const uint8_t* mask, bool out_aligned, int device, cudaStream_t stream,
                         F&& launch) {
  return launch_selective(logits, dtype, n_rows, vocab, row_stride, temperature,
                          temperature_scalar, nullptr, false, 0, mask, vocab < kTopPMaxVocab,
                          out_aligned, device, stream, launch);
}

}  // namespace
}  // namespace gpu

cudaError_t top_p_entropy_fwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                                   int64_t row_stride, const float* temperature,
                                   double temperature_scalar, const uint8_t* mask, double top_p,
                                   float* entropy_out, float* row_max_out, float* cut_e_out,
                                   int32_t* cut_index_out, float* log_norm_out, int device,
                                   cudaStream_t stream) {
  using namespace gpu;
  const TopPOut o = {entropy_out, row_max_out, cut_e_out, cut_index_out, log_norm_out};
  return launch_top_p(logits, dtype, n_rows, vocab, row_stride, temperature, temperature_scalar,
                      mask, true, device, stream,
                      [&](auto tag, const RowArgs& r, dim3 grid, dim3 block, cudaStream_t st) {
    using Tag = decltype(tag);
    top_p_entropy_fwd_kernel<Tag::kCode, Tag::kAligned><<<grid, block, 0, st>>>(r, top_p, o);
  });
}

cudaError_t top_p_entropy_bwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                                   int64_t row_stride, const float* temperature,
                                   double temperature_scalar, const uint8_t* mask,
                                   const float* entropy, const float* row_max, const float* cut_e,
                                   const int32_t* cut_index, const float* log_norm,
                                   const float* grad_entropy, void* grad_logits,
                                   int64_t grad_row_stride, int device, cudaStream_t stream) {
  using namespace gpu;
  const TopPBwdIn b = {entropy,      row_max,     cut_e,          cut_index,
                       log_norm,     grad_entropy, grad_logits,   grad_row_stride};
  return launch_top_p(logits, dtype, n_rows, vocab, row_stride, temperature, temperature_scalar,
                      mask, rows_aligned(grad_logits, grad_row_stride, dtype), device, stream,
                      [&](auto tag, const RowArgs& r, dim3 grid, dim3 block, cudaStream_t st) {
    using Tag = decltype(tag);
    top_p_entropy_bwd_kernel<Tag::kCode, Tag::kAligned><<<grid, block, 0, st>>>(r, b);
  });
}

cudaError_t top_p_mask_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                            int64_t row_stride, const float* temperature,
                            double temperature_scalar, const uint8_t* mask, double top_p,
                            bool inclusive, uint8_t* mask_out, int64_t out_row_stride, int device,
                            cudaStream_t stream) {
  using namespace gpu;
  return launch_top_p(logits, dtype, n_rows, vocab, row_stride, temperature, temperature_scalar,
                      mask, true, device, stream,
                      [&](auto tag, const RowArgs& r, dim3 grid, dim3 block, cudaStream_t st) {
    using Tag = decltype(tag);
    top_p_mask_kernel<Tag::kCode, Tag::kAligned><<<grid, block, 0, st>>>(r, top_p, inclusive,
                                                                         mask_out, out_row_stride);
  });
}

}  // namespace entropy_ops
