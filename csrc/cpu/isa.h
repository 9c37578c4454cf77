// Runtime choice of the CPU kernel set: CPUID says what the machine supports; the initial choice
// comes from ENTROPY_OPS_CPU_ISA (avx512|avx2|scalar) or is the best supported; set_isa switches
// at runtime so one test process covers every path. Only x86-64 builds carry avx512 and avx2;
// elsewhere (aarch64, ...) "scalar" is the one ISA.
#pragma once

#include <string>
#include <vector>

#include "cpu/entropy_kernels.h"

namespace entropy_ops {
namespace cpu {

std::vector<std::string> supported_isas();  // best first; "scalar" always last
// "avx512" | "avx2" | "scalar" | "auto" (best). Returns false when the name is unknown or the
// CPU lacks it (nothing changes then).
bool set_isa(const std::string& name);
std::string get_isa();
const RowKernels& active_kernels();

}  // namespace cpu
}  // namespace entropy_ops
