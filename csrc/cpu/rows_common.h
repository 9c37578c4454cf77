// Row plumbing shared by the drivers of entropy, the selective ops and token_stats
// (entropy_cpu.cpp, top_p_cpu.cpp, min_p_cpu.cpp, token_stats_cpu.cpp): row addresses (64-bit
// offsets), per-row temperature and label, the worker count, per-thread scratch and whole-row
// fills.
#pragma once

#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "cpu/elem_io.h"
#include "cpu/entropy_cpu.h"
#include "entropy_ops/dtype.h"
#include "entropy_ops/online_softmax.h"

namespace entropy_ops {
namespace cpu {

inline int64_t elem_bytes(int dtype) { return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2; }

inline const char* row_at(const void* base, int64_t i, int64_t stride, int dtype) {
  return static_cast<const char*>(base) + i * stride * elem_bytes(dtype);
}

inline char* row_at(void* base, int64_t i, int64_t stride, int dtype) {
  return static_cast<char*>(base) + i * stride * elem_bytes(dtype);
}

inline bool row_live(const RowsArgs& r, int64_t i) { return r.mask == nullptr || r.mask[i] != 0; }

inline int64_t row_label(const RowsArgs& r, int64_t i) {
  return r.labels_int32 ? static_cast<const int32_t*>(r.labels)[i]
                        : static_cast<const int64_t*>(r.labels)[i];
}

template <typename Acc>
Acc row_inv_temperature(const RowsArgs& r, int64_t i) {
  const Acc t = r.temperature ? static_cast<const Acc*>(r.temperature)[i]
                              : static_cast<Acc>(r.temperature_scalar);
  return Acc(1) / t;
}

// T as the reference takes it: the per-row value, or the Python float itself (not rounded to Acc).
template <typename Acc>
double row_temperature(const RowsArgs& r, int64_t i) {
  return r.temperature ? static_cast<double>(static_cast<const Acc*>(r.temperature)[i])
                       : r.temperature_scalar;
}

template <typename Acc>
Acc row_logit(const void* row, int dtype, int64_t j) {
  switch (dtype) {
    case kFloat32: return static_cast<Acc>(ElemIO<kFloat32>::load(row, j));
    case kBFloat16: return static_cast<Acc>(ElemIO<kBFloat16>::load(row, j));
    case kFloat16: return static_cast<Acc>(ElemIO<kFloat16>::load(row, j));
    default: return static_cast<Acc>(ElemIO<kFloat64>::load(row, j));
  }
}

// Below this many elements per worker, waking a thread costs more than it saves.
inline int row_workers(const RowsArgs& r) {
  const int64_t by_work = std::max<int64_t>(1, r.n_rows * r.vocab / (int64_t(1) << 15));
  return static_cast<int>(std::min<int64_t>(std::max(r.num_threads, 1), by_work));
}

// A per-thread buffer of at least n values, reused across calls: the same addresses every row,
// so a row's e_j buffer stays in this core's cache.
template <typename Acc>
Acc* thread_scratch(int slot, int64_t n) {
  thread_local std::vector<Acc> bufs[2];
  std::vector<Acc>& b = bufs[slot];
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

// Fills a gradient row: zeros (all-zero bits are +0 in every float dtype) or a quiet NaN.
inline void fill_row(void* row, int dtype, int64_t n, bool nan) {
  if (!nan) {
    memset(row, 0, static_cast<size_t>(n * elem_bytes(dtype)));
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    switch (dtype) {
      case kFloat32: ElemIO<kFloat32>::store(row, j, quiet_nan<float>()); break;
      case kBFloat16: ElemIO<kBFloat16>::store(row, j, quiet_nan<float>()); break;
      case kFloat16: ElemIO<kFloat16>::store(row, j, quiet_nan<float>()); break;
      default: ElemIO<kFloat64>::store(row, j, static_cast<double>(quiet_nan<float>())); break;
    }
  }
}

}  // namespace cpu
}  // namespace entropy_ops
