// The selective row kernels (selective_kernels.h) compiled for AVX-512 (F + BW + VL + DQ).
// Every project and standard header is included before the target region, so that only this
// file's own code (the bodies, instantiated on SimdAvx512) is compiled for the wider ISA.
// x86-64 only: on other targets this file compiles to nothing (entropy_kernels.h).
#if defined(__x86_64__)

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu/elem_io.h"
#include "cpu/entropy_kernels.h"
#include "cpu/selective_kernels.h"
#include "cpu/vec_exp_avx512.h"
#include "entropy_ops/dtype.h"
#include "entropy_ops/nucleus.h"
#include "entropy_ops/online_softmax.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

#include "cpu/simd_avx512.h"
#include "cpu/selective_body.h"

namespace entropy_ops {
namespace cpu {

constexpr SelectiveKernels kSelectiveAvx512 = {
    "avx512",
    {make_selective_ops<SimdAvx512, kFloat32>(), make_selective_ops<SimdAvx512, kBFloat16>(),
     make_selective_ops<SimdAvx512, kFloat16>()},
};

}  // namespace cpu
}  // namespace entropy_ops

#pragma GCC pop_options

#endif  // defined(__x86_64__)
