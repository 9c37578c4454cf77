// The selective row kernels (selective_kernels.h) as plain C++: the "scalar" ISA for
// fp32/bf16/fp16 rows, fp64 rows on every ISA, and the choice of table by the ISA in use.
#include "cpu/selective_kernels.h"

#include "cpu/isa.h"
#include "cpu/selective_body.h"
#include "cpu/simd_scalar.h"

namespace entropy_ops {
namespace cpu {

constexpr SelectiveKernels kSelectiveScalar = {
    "scalar",
    {make_selective_ops<SimdScalar<float>, kFloat32>(),
     make_selective_ops<SimdScalar<float>, kBFloat16>(),
     make_selective_ops<SimdScalar<float>, kFloat16>()},
};

constexpr SelectiveRowOps<double> kSelectiveF64 = make_selective_ops<SimdScalar<double>, kFloat64>();

// Follows isa.h's choice (ENTROPY_OPS_CPU_ISA, set_isa), so one switch covers every op.
const SelectiveRowOps<float>& selective_ops(int dtype) {
#if defined(__x86_64__)
  const RowKernels* active = &active_kernels();
  const SelectiveKernels& k = active == &kAvx512Kernels ? kSelectiveAvx512
                              : active == &kAvx2Kernels ? kSelectiveAvx2
                                                        : kSelectiveScalar;
  return k.ops[dtype];
#else
  return kSelectiveScalar.ops[dtype];
#endif
}

}  // namespace cpu
}  // namespace entropy_ops
