// masked_quantile_seq_cuda / radix_select_cuda: order statistics by radix selection on order keys
// (token_select.cuh), never a sort (entropy_ops/backends/token_kernel.py gives the rules).
//
// Per sequence: a block per sequence (grid-stride over sequences, any S). One pass counts the valid
// entries; then, for each quantile, both order statistics (ranks floor r and ceil r) are selected in
// the same passes: per 8-bit digit from the top, a shared-memory histogram of the entries sharing
// the digits chosen so far, and one thread walks the 256 bins to the digit where the count passes
// the rank. Outputs v_lo, v_hi (float64) and the count; Python takes the lerp (torch.lerp, so the
// interpolation is torch.quantile's own).
//
// Over all tokens (radix_select_cuda, also the k-th largest of top_k): per digit round, one
// multi-block histogram launch (shared counts, then one 64-bit global atomic per non-empty bin:
// exact, and integer counts do not depend on the order of the adds, so the result does not depend
// on the batch) and one single-thread pick launch; ranks and prefixes stay on the device, and the
// number of launches depends on the dtype only.
#include "cuda/launchers.h"
#include "cuda/token_select.cuh"
#include "cuda/util.cuh"

namespace entropy_ops {
namespace gpu {
namespace {

constexpr int kSeqThreads = 256;
constexpr int kScanThreads = 256;
constexpr int kScanGridMax = 1024;

__device__ __forceinline__ bool is_valid(const uint8_t* mask, int64_t i) {
  return mask == nullptr || mask[i] != 0;
}

// Sum over the block (every thread gets it); two barriers, so back-to-back calls never race.
__device__ inline int64_t block_count(int64_t v) {
  __shared__ int64_t part[kSeqThreads / 32];
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  int64_t total = 0;
  for (int w = 0; w < kSeqThreads / 32; ++w) total += part[w];
  __syncthreads();
  return total;
}

struct PairState {
  unsigned long long hist[2][kRadixBins];
  uint64_t prefix[2];
  int64_t rank[2];
};

// No __launch_bounds__: with it ptxas aims at 8 blocks per SM, caps this kernel at 32 registers
// and spills (measured on sm80-sm100); it needs about 40.
template <int Code>
__global__ void quantile_seq_kernel(const void* __restrict__ x, const uint8_t* __restrict__ mask,
                    const int64_t* __restrict__ cu, int64_t n_seq, const double* __restrict__ q,
                    int64_t n_q, double* __restrict__ v_lo, double* __restrict__ v_hi,
                    int64_t* __restrict__ count_out) {
  __shared__ PairState st;
  for (int64_t s = blockIdx.x; s < n_seq; s += gridDim.x) {
    const int64_t start = cu[s], end = cu[s + 1];
    int64_t local = 0;
    for (int64_t i = start + threadIdx.x; i < end; i += kSeqThreads) {
      uint64_t key;
      local += is_valid(mask, i) && order_key<Code>(x, i, &key);
    }
    const int64_t n = block_count(local);
    if (threadIdx.x == 0) count_out[s] = n;
    for (int64_t qi = 0; qi < n_q; ++qi) {
      if (n == 0) {
        if (threadIdx.x == 0) v_lo[qi * n_seq + s] = v_hi[qi * n_seq + s] = __longlong_as_double(0x7ff8000000000000ll);
        continue;
      }
      const double r = fmax(q[qi] * double(n - 1), 0.0);
      const int64_t r_lo = static_cast<int64_t>(r);
      if (threadIdx.x == 0) {
        st.rank[0] = r_lo;
        st.rank[1] = r_lo + (r > double(r_lo) ? 1 : 0);
        st.prefix[0] = st.prefix[1] = 0;
      }
      for (int high = kKeyBits<Code>; high > kLowBits<Code>; high -= kDigitBits) {
        const int low = high - kDigitBits > kLowBits<Code> ? high - kDigitBits : kLowBits<Code>;
        for (int b = threadIdx.x; b < 2 * kRadixBins; b += kSeqThreads) st.hist[b / kRadixBins][b % kRadixBins] = 0;
        __syncthreads();
        const uint64_t p0 = st.prefix[0], p1 = st.prefix[1];
        const bool same = st.rank[0] == st.rank[1] && p0 == p1;
        for (int64_t i = start + threadIdx.x; i < end; i += kSeqThreads) {
          uint64_t key;
          if (!is_valid(mask, i) || !order_key<Code>(x, i, &key)) continue;
          const uint64_t above = key_above(key, high);
          const int digit = int((key >> low) & (kRadixBins - 1));
          if (above == p0) atomicAdd(&st.hist[0][digit], 1ull);
          if (!same && above == p1) atomicAdd(&st.hist[1][digit], 1ull);
        }
        __syncthreads();
        if (threadIdx.x < 2) {
          const int which = same ? 0 : threadIdx.x;
          int64_t rank = st.rank[threadIdx.x];
          uint64_t prefix = st.prefix[threadIdx.x];
          pick_digit(st.hist[which], high - low, &rank, &prefix);
          st.rank[threadIdx.x] = rank;
          st.prefix[threadIdx.x] = prefix;
        }
        __syncthreads();
      }
      if (threadIdx.x == 0) {
        v_lo[qi * n_seq + s] = key_value<Code>(st.prefix[0]);
        v_hi[qi * n_seq + s] = key_value<Code>(st.prefix[1]);
      }
      __syncthreads();
    }
  }
}

// hist[t][digit] += this block's share of the valid entries whose key has the digits prefix[t]
// above `high` (and `digit` in [low, high)).
template <int Code, bool kDescending>
__global__ void __launch_bounds__(kScanThreads)
radix_hist_kernel(const void* __restrict__ x, const uint8_t* __restrict__ valid, int64_t n,
                  const int64_t* __restrict__ prefix, int64_t n_targets, int high, int low,
                  unsigned long long* __restrict__ hist) {
  __shared__ unsigned int local[kRadixBins];
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = 0; t < n_targets; ++t) {
    for (int b = threadIdx.x; b < kRadixBins; b += kScanThreads) local[b] = 0;
    __syncthreads();
    const uint64_t p = static_cast<uint64_t>(prefix[t]);
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
      uint64_t key;
      if (!is_valid(valid, i) || !order_key<Code>(x, i, &key)) continue;
      if (kDescending) key = descending<Code>(key);
      if (key_above(key, high) == p) atomicAdd(&local[(key >> low) & (kRadixBins - 1)], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < kRadixBins; b += kScanThreads) {
      if (local[b] != 0) atomicAdd(&hist[t * kRadixBins + b], static_cast<unsigned long long>(local[b]));
    }
    __syncthreads();
  }
}

// Each target's digit from its histogram, which is then zeroed for the next round; after the last
// round, the selected value (ascending float keys).
template <int Code>
__global__ void radix_pick_kernel(unsigned long long* __restrict__ hist, int64_t* __restrict__ rank,
                                  int64_t* __restrict__ prefix, double* __restrict__ value,
                                  int64_t n_targets, int width, bool last) {
  if (threadIdx.x != 0) return;
  for (int64_t t = 0; t < n_targets; ++t) {
    unsigned long long* h = hist + t * kRadixBins;
    int64_t r = rank[t];
    uint64_t p = static_cast<uint64_t>(prefix[t]);
    pick_digit(h, width, &r, &p);
    for (int b = 0; b < kRadixBins; ++b) h[b] = 0;
    rank[t] = r;
    prefix[t] = static_cast<int64_t>(p);
    if (last && value != nullptr) value[t] = key_value<Code>(p);
  }
}

template <int Code>
cudaError_t quantile_seq(const void* x, const uint8_t* mask, const int64_t* cu, int64_t n_seq,
                         const double* q, int64_t n_q, double* v_lo, double* v_hi, int64_t* count,
                         cudaStream_t stream) {
  const int grid = int(n_seq < 65535 ? n_seq : 65535);
  quantile_seq_kernel<Code><<<grid, kSeqThreads, 0, stream>>>(x, mask, cu, n_seq, q, n_q, v_lo, v_hi, count);
  return cudaGetLastError();
}

template <int Code>
cudaError_t select(const void* x, const uint8_t* valid, int64_t n, int64_t* rank, int64_t* prefix,
                   int64_t n_targets, unsigned long long* hist, double* value, bool descending,
                   cudaStream_t stream) {
  const int64_t blocks = (n + 16 * kScanThreads - 1) / (16 * kScanThreads);
  const int grid = int(blocks < kScanGridMax ? blocks : kScanGridMax);
  for (int high = kKeyBits<Code>; high > kLowBits<Code>; high -= kDigitBits) {
    const int low = high - kDigitBits > kLowBits<Code> ? high - kDigitBits : kLowBits<Code>;
    if (descending) {
      radix_hist_kernel<Code, true><<<grid, kScanThreads, 0, stream>>>(x, valid, n, prefix, n_targets, high, low, hist);
    } else {
      radix_hist_kernel<Code, false><<<grid, kScanThreads, 0, stream>>>(x, valid, n, prefix, n_targets, high, low, hist);
    }
    EO_CUDA_CHECK(cudaGetLastError());
    radix_pick_kernel<Code><<<1, 32, 0, stream>>>(hist, rank, prefix, descending ? nullptr : value,
                                                  n_targets, high - low, low == kLowBits<Code>);
    EO_CUDA_CHECK(cudaGetLastError());
  }
  return cudaSuccess;
}

}  // namespace
}  // namespace gpu

cudaError_t masked_quantile_seq_cuda(const void* x, int dtype, const uint8_t* mask, const int64_t* cu,
                                     int64_t n_seq, const double* q, int64_t n_q, double* v_lo,
                                     double* v_hi, int64_t* count, int device, cudaStream_t stream) {
  if (n_seq == 0 || n_q == 0) return cudaSuccess;
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  switch (dtype) {
    case kFloat32: return gpu::quantile_seq<kFloat32>(x, mask, cu, n_seq, q, n_q, v_lo, v_hi, count, stream);
    case kBFloat16: return gpu::quantile_seq<kBFloat16>(x, mask, cu, n_seq, q, n_q, v_lo, v_hi, count, stream);
    case kFloat16: return gpu::quantile_seq<kFloat16>(x, mask, cu, n_seq, q, n_q, v_lo, v_hi, count, stream);
    case kFloat64: return gpu::quantile_seq<kFloat64>(x, mask, cu, n_seq, q, n_q, v_lo, v_hi, count, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t radix_select_cuda(const void* x, int dtype, const uint8_t* valid, int64_t n, int64_t* rank,
                              int64_t* prefix, int64_t n_targets, unsigned long long* hist,
                              double* value, bool descending, int device, cudaStream_t stream) {
  if (n == 0 || n_targets == 0) return cudaSuccess;
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  switch (dtype) {
    case kFloat32: return gpu::select<kFloat32>(x, valid, n, rank, prefix, n_targets, hist, value, descending, stream);
    case kBFloat16: return gpu::select<kBFloat16>(x, valid, n, rank, prefix, n_targets, hist, value, descending, stream);
    case kFloat16: return gpu::select<kFloat16>(x, valid, n, rank, prefix, n_targets, hist, value, descending, stream);
    case kFloat64: return gpu::select<kFloat64>(x, valid, n, rank, prefix, n_targets, hist, value, descending, stream);
    case gpu::kInt64Code:
      return gpu::select<gpu::kInt64Code>(x, valid, n, rank, prefix, n_targets, hist, nullptr, descending, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace entropy_ops
