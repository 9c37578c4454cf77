// The selective row kernels (selective_kernels.h) compiled for AVX2 + FMA + F16C. Every project
// and standard header is included before the target region, so that only this file's own code
// (the bodies, instantiated on SimdAvx2) is compiled for the wider ISA.
// x86-64 only: on other targets this file compiles to nothing (entropy_kernels.h).
#if defined(__x86_64__)

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu/elem_io.h"
#include "cpu/entropy_kernels.h"
#include "cpu/selective_kernels.h"
#include "cpu/vec_exp_avx2.h"
#include "entropy_ops/dtype.h"
#include "entropy_ops/nucleus.h"
#include "entropy_ops/online_softmax.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include "cpu/simd_avx2.h"
#include "cpu/selective_body.h"

namespace entropy_ops {
namespace cpu {

constexpr SelectiveKernels kSelectiveAvx2 = {
    "avx2",
    {make_selective_ops<SimdAvx2, kFloat32>(), make_selective_ops<SimdAvx2, kBFloat16>(),
     make_selective_ops<SimdAvx2, kFloat16>()},
};

}  // namespace cpu
}  // namespace entropy_ops

#pragma GCC pop_options

#endif  // defined(__x86_64__)
