// Per-row kernel interface shared by the per-ISA bodies (entropy_kernels_{scalar,avx2,avx512}.cpp)
// and the drivers (entropy_cpu.cpp). A row kernel reduces or writes exactly one row, in a fixed
// order that depends only on the vocabulary size: this is what makes results batch invariant.
#pragma once

#include <stdint.h>

#include "entropy_ops/dtype.h"
#include "entropy_ops/online_softmax.h"

namespace entropy_ops {
namespace cpu {

// Rows are reduced in blocks of this many elements (x widened to fp32 in a stack buffer that
// stays in L1): block max first, one rescale of the running state per block, then one exp per
// element. A multiple of 64 (the widest unrolled step); on Zen 5, 1024/2048/4096 measure the same.
constexpr int64_t kBlock = 2048;

// Exp inputs below this are flushed to an exact 0: e^-87 is still a normal fp32 (no denormal
// slow paths) and its share of a sum that holds a 1 is far below an ulp.
constexpr float kExpFloorF = -87.0f;
constexpr double kExpFloorD = -708.0;

// Forward: the state of one row, with `max` in units of x and the sums in units of z = x * inv_t
// (see online_softmax.h). A NaN anywhere in the row gives a NaN state.
template <typename Acc>
using FwdRowFn = OnlineSoftmax<Acc> (*)(const void* row, int64_t vocab, Acc inv_t);

// log p_j = (x_j - x_shift) s - log_sum, with the row's raw max and log S saved by the forward
// (never z_j - lse: an lse rounded to fp32 is off by half its ulp, and every p_j would inherit
// that relative error, times 1/T in the gradient).
template <typename Acc>
struct BwdRowArgs {
  Acc inv_t;
  Acc x_shift;
  Acc log_sum;
  Acc entropy;
  Acc grad_entropy;  // 0: the entropy term is skipped (exactly 0, even where H is NaN)
  Acc grad_logp;     // 0: the log-prob term is skipped
  int64_t label;     // -1: no label (none given, ignored, or out of range)
};

// Backward: writes grad_j = g_z_j * inv_t in the row's dtype (grad may alias row).
template <typename Acc>
using BwdRowFn = void (*)(const void* row, void* grad, int64_t vocab, const BwdRowArgs<Acc>& a);

// One ISA's kernels for the fp32-compute dtypes, indexed by dtype code 0..2. fp64 always takes
// the scalar template (exported below) on every ISA.
struct RowKernels {
  const char* name;
  FwdRowFn<float> fwd[3];
  BwdRowFn<float> bwd[3];
};

extern const RowKernels kScalarKernels;
// The AVX2 and AVX-512 kernels exist on x86-64 only: elsewhere their files compile to nothing and
// the scalar kernels are the one ISA (isa.h).
#if defined(__x86_64__)
extern const RowKernels kAvx2Kernels;
extern const RowKernels kAvx512Kernels;
#endif

OnlineSoftmax<double> entropy_fwd_row_f64(const void* row, int64_t vocab, double inv_t);
void entropy_bwd_row_f64(const void* row, void* grad, int64_t vocab, const BwdRowArgs<double>& a);

}  // namespace cpu
}  // namespace entropy_ops
