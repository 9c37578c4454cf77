// entropy_fwd_cuda: per row the raw max, log S (lse = max / T + log S), entropy and (with labels)
// the label's log-prob of softmax(x / T), one read of the logits. Mirrors entropy_fwd_cpu (csrc/cpu/entropy_cpu.cpp) element for element
// in its semantics; the reduction order is the GPU's own (entropy_rows.cuh).
//
//   V <= 4096   entropy_fwd_warp_kernel: a warp per row, 8 rows per block.
//   V >  4096   entropy_fwd_chunk_kernel: a block of 256 per (row, chunk), grid (N, chunks), the
//               chunk size a function of V alone (chunk_plan). One chunk (V <= 16384): the block
//               finalizes its row; more: partial states to the workspace, then
//               entropy_combine_kernel merges them in chunk order, a thread per row.
#include "cuda/entropy_rows.cuh"
#include "cuda/launchers.h"
#include "cuda/util.cuh"

namespace entropy_ops {
namespace gpu {
namespace {

struct FwdOut {
  float* row_max;
  float* log_norm;
  float* entropy;
  float* logp;  // null without labels
  float* part;  // partial states when the plan has more than one chunk
};

__device__ inline void store_masked_row(const FwdOut& o, int64_t i) {
  o.row_max[i] = 0.0f;
  o.log_norm[i] = 0.0f;
  o.entropy[i] = 0.0f;
  if (o.logp) o.logp[i] = 0.0f;
}

// Finalizes an active row. The label's log-prob is (x_y - max) / T - log S: the shift is exact, so
// a row shifted by 1e4 keeps full precision in it too.
template <int Code>
__device__ inline void store_row(const RowArgs& r, const FwdOut& o, int64_t i, const void* row,
                                 const OnlineSoftmax<float>& st, float s) {
  const SoftmaxStats<float> stats = finalize(st, s);
  float logp = 0.0f;
  if (r.labels != nullptr) {
    const int64_t y = label_at(r, i);
    if (y == r.ignore_index) {
      logp = 0.0f;
    } else if (y < 0 || y >= r.vocab || eo_isnan(stats.lse)) {
      logp = quiet_nan<float>();
    } else {
      logp = label_log_prob(load_elem<Code>(row, y), st.max, temperature_at(r, i), stats.log_norm);
    }
  }
  o.row_max[i] = st.max;
  o.log_norm[i] = stats.log_norm;
  o.entropy[i] = stats.entropy;
  if (o.logp) o.logp[i] = logp;
}

template <int Code, bool kAligned>
__global__ void __launch_bounds__(kWarpKernelThreads)
entropy_fwd_warp_kernel(RowArgs r, FwdOut o) {
  const int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (i >= r.n_rows) return;
  if (!row_active(r, i)) {  // not read
    if (lane == 0) store_masked_row(o, i);
    return;
  }
  const float s = inv_temperature(r, i);
  const void* row = row_ptr<Code>(r.logits, i, r.row_stride);
  const OnlineSoftmax<float> st =
      warp_merge(thread_state<Code, kAligned>(row, int(r.vocab), lane, kWarpSize, s), s);
  if (lane == 0) store_row<Code>(r, o, i, row, st, s);
}

template <int Code, bool kAligned>
__global__ void __launch_bounds__(kBlockThreads)
entropy_fwd_chunk_kernel(RowArgs r, FwdOut o, ChunkPlan plan) {
  const int64_t i = blockIdx.x;
  const int64_t chunk = blockIdx.y;
  // The test is uniform over the block, so the barriers of block_merge stay uniform.
  if (!row_active(r, i)) {  // not read
    if (plan.count == 1 && threadIdx.x == 0) store_masked_row(o, i);
    return;
  }
  const float s = inv_temperature(r, i);
  const void* row = row_ptr<Code>(r.logits, i, r.row_stride);
  const int64_t start = chunk * plan.size;
  const int64_t left = r.vocab - start;
  const int len = int(left < plan.size ? left : plan.size);
  const void* slice = static_cast<const typename Elem<Code>::Storage*>(row) + start;
  const OnlineSoftmax<float> st = block_merge<kBlockThreads>(
      thread_state<Code, kAligned>(slice, len, threadIdx.x, kBlockThreads, s), s);
  if (threadIdx.x != 0) return;
  if (plan.count == 1) {
    store_row<Code>(r, o, i, row, st, s);
  } else {
    o.part[part_index(chunk, 0, r.n_rows, i)] = st.max;
    o.part[part_index(chunk, 1, r.n_rows, i)] = st.sum_exp;
    o.part[part_index(chunk, 2, r.n_rows, i)] = st.sum_exp_z;
  }
}

constexpr int kCombineThreads = 256;

template <int Code>
__global__ void __launch_bounds__(kCombineThreads)
entropy_combine_kernel(RowArgs r, FwdOut o, int64_t n_chunks) {
  const int64_t i = int64_t(blockIdx.x) * kCombineThreads + threadIdx.x;
  if (i >= r.n_rows) return;
  if (!row_active(r, i)) {  // no partial state was written for it
    store_masked_row(o, i);
    return;
  }
  const float s = inv_temperature(r, i);
  const OnlineSoftmax<float> st = merge_parts(o.part, n_chunks, r.n_rows, i, s);
  store_row<Code>(r, o, i, row_ptr<Code>(r.logits, i, r.row_stride), st, s);
}

cudaError_t launch_chunks(int dtype, bool aligned, const RowArgs& r, const ChunkPlan& plan,
                          const FwdOut& o, cudaStream_t stream) {
  if (r.n_rows > kMaxGridX) return cudaErrorInvalidConfiguration;
  const dim3 grid(unsigned(r.n_rows), unsigned(plan.count));
  return dispatch_dtype(dtype, aligned, [&](auto tag) {
    using Tag = decltype(tag);
    entropy_fwd_chunk_kernel<Tag::kCode, Tag::kAligned><<<grid, kBlockThreads, 0, stream>>>(
        r, o, plan);
    return cudaGetLastError();
  });
}

}  // namespace
}  // namespace gpu

int64_t entropy_fwd_workspace_cuda(int64_t n_rows, int64_t vocab) {
  if (n_rows <= 0 || vocab <= gpu::kWarpRowMaxVocab) return 0;
  const gpu::ChunkPlan plan = gpu::chunk_plan(vocab);
  return plan.count > 1 ? 3 * plan.count * n_rows : 0;
}

cudaError_t entropy_fwd_cuda(const void* logits, int dtype, int64_t n_rows, int64_t vocab,
                             int64_t row_stride, const float* temperature,
                             double temperature_scalar, const void* labels, bool labels_int32,
                             int64_t ignore_index, const uint8_t* mask, float* row_max_out,
                             float* log_norm_out, float* entropy_out, float* logp_out,
                             float* workspace, int64_t workspace_size, int device,
                             cudaStream_t stream) {
  using namespace gpu;
  if (n_rows <= 0) return cudaSuccess;
  if (!launchable(dtype, workspace_size, entropy_fwd_workspace_cuda(n_rows, vocab))) {
    return cudaErrorInvalidValue;
  }
  DeviceGuard guard(device);
  EO_CUDA_CHECK(guard.status());
  const RowArgs r = make_row_args(logits, n_rows, vocab, row_stride, temperature,
                                  temperature_scalar, labels, labels_int32, ignore_index, mask);
  const FwdOut o = {row_max_out, log_norm_out, entropy_out, logp_out, workspace};
  const bool aligned = rows_aligned(logits, row_stride, dtype);

  if (vocab <= kWarpRowMaxVocab) {
    const int64_t blocks = (n_rows + kRowsPerBlock - 1) / kRowsPerBlock;
    if (blocks > kMaxGridX) return cudaErrorInvalidConfiguration;
    return dispatch_dtype(dtype, aligned, [&](auto tag) {
      using Tag = decltype(tag);
      entropy_fwd_warp_kernel<Tag::kCode, Tag::kAligned>
          <<<unsigned(blocks), kWarpKernelThreads, 0, stream>>>(r, o);
      return cudaGetLastError();
    });
  }

  const ChunkPlan plan = chunk_plan(vocab);
  EO_CUDA_CHECK(launch_chunks(dtype, aligned, r, plan, o, stream));
  if (plan.count == 1) return cudaSuccess;
  const int64_t blocks = (n_rows + kCombineThreads - 1) / kCombineThreads;
  return dispatch_dtype(dtype, aligned, [&](auto tag) {
    entropy_combine_kernel<decltype(tag)::kCode>
        <<<unsigned(blocks), kCombineThreads, 0, stream>>>(r, o, plan.count);
    return cudaGetLastError();
  });
}

}  // namespace entropy_ops
