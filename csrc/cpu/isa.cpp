#include "cpu/isa.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace entropy_ops {
namespace cpu {
namespace {

// The AVX2 and AVX-512 kernels are compiled on x86-64 only (entropy_kernels.h); elsewhere
// "scalar" is the one ISA.
#if defined(__x86_64__)
// __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
#endif

const RowKernels* kernels_for(const std::string& name) {
#if defined(__x86_64__)
  if (name == "avx512") return cpu_has_avx512() ? &kAvx512Kernels : nullptr;
  if (name == "avx2") return cpu_has_avx2() ? &kAvx2Kernels : nullptr;
#endif
  if (name == "scalar") return &kScalarKernels;
  if (name == "auto") return kernels_for(supported_isas().front());
  return nullptr;
}

// An unusable ENTROPY_OPS_CPU_ISA must not make the import fail: warn and take the best.
const RowKernels* initial_kernels() {
  const char* env = std::getenv("ENTROPY_OPS_CPU_ISA");
  if (env != nullptr && *env != '\0') {
    if (const RowKernels* k = kernels_for(env)) return k;
    std::fprintf(stderr,
                 "entropy_ops: ENTROPY_OPS_CPU_ISA=%s is unknown or unsupported by this CPU; "
                 "using %s\n",
                 env, supported_isas().front().c_str());
  }
  return kernels_for("auto");
}

std::atomic<const RowKernels*>& active() {
  static std::atomic<const RowKernels*> k{initial_kernels()};
  return k;
}

}  // namespace

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
#if defined(__x86_64__)
  if (cpu_has_avx512()) out.push_back("avx512");
  if (cpu_has_avx2()) out.push_back("avx2");
#endif
  out.push_back("scalar");
  return out;
}

bool set_isa(const std::string& name) {
  const RowKernels* k = kernels_for(name);
  if (k == nullptr) return false;
  active().store(k);
  return true;
}

std::string get_isa() { return active().load()->name; }

const RowKernels& active_kernels() { return *active().load(); }

}  // namespace cpu
}  // namespace entropy_ops
