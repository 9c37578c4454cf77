// CUDA on the CPU, for tests: what the kernels of csrc/cuda need, so that g++ compiles them for
// the host and they run on CPU tensors (tests/cuda_emu/build.py force-includes this header).
//
// Each block runs its threads as cooperative fibers on the calling OS thread: a thread runs until
// it waits at a barrier (__syncthreads, or a warp shuffle's exchange) or returns, then the next one
// runs; after each barrier the threads resume from the first, in thread order (last to first in
// odd blocks). So a read of another thread's write that lacks its barrier sees the stale value in
// one of the two orders, and a barrier that some threads of the block never reach is reported as
// a deadlock (undefined in CUDA; on recent GPUs threads that returned may release it).
//
// Blocks run one after the other, and one launch at a time in a process, so `__shared__` is a
// function-local static: one copy per kernel, filled with 0xff bytes before each block, so a
// read of shared memory the block did not write is NaN or all ones. Atomics are plain
// read-modify-writes (one OS thread). Launch limits are the hardware's: at most 1024 threads per
// block, grid.y and grid.z at most 65535. A warp's lanes shuffle in groups by member mask (the
// full warp, or disjoint parts of it); a mask that leaves out the calling lane, or overlaps
// another group's, is refused.
//
// What this does not check: timing, races between blocks, memory coalescing, `__launch_bounds__`
// against the launch, the GPU's arithmetic (nvcc contracts a*b+c into FMAs where it chooses, and
// its exp2f is not glibc's: bits differ from a GPU's, within the tests' tolerances). Alignment of
// the vectorized loads and 32-bit overflow are UBSan's (build.py), bounds ASan's (--asan).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
// build.py rewrites `__shared__ T name[...];` as `static T name[...];` followed by its
// registration (shared_region): the runtime fills every registered variable with 0xff bytes (NaN
// floats, all-ones integers) before each block, as a GPU hands a block garbage. A declaration it
// cannot rewrite (two declarators, an unnamed struct type) fails to compile on this name.
#define __shared__ __shared___declaration_that_tests_cuda_emu_build_py_could_not_register
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace eo_emu {

struct Thread;

// The running fiber's coordinates (thread_local: each OS thread that launches runs its own grid).
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Block barrier; with `or_value`, also returns the OR over the block's threads of their values.
int sync_block(int or_value);

// Warp exchange: every lane of `mask` in this thread's warp deposits `bits`; returns the bits
// lane `src` (an index in the warp) deposited. Lanes outside the warp's width segment read their own.
uint64_t warp_exchange(unsigned mask, uint64_t bits, int src);
int lane_id();

// Registers a __shared__ variable (once per declaration; see build.py) and fills it with 0xff.
bool shared_region(void* p, size_t bytes);

using Body = void (*)(void*);
// Runs `body(arg)` on every thread of the grid; returns the launch's error (also kept for
// cudaGetLastError).
cudaError_t run_grid(dim3 grid, dim3 block, Body body, void* arg);

template <typename Kernel, typename Tuple>
struct Call {
  Kernel kernel;
  Tuple* params;
  static void run(void* self) {
    auto* call = static_cast<Call*>(self);
    std::apply(call->kernel, *call->params);
  }
};

// `kernel<<<grid, block, smem, stream>>>(args...)`, rewritten by build.py. The arguments are
// converted to the kernel's parameter types once, as a launch copies them.
template <typename... P, typename... A>
void launch(dim3 grid, dim3 block, size_t /*smem*/, cudaStream_t /*stream*/, void (*kernel)(P...),
            A&&... args) {
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  Call<void (*)(P...), decltype(params)> call{kernel, &params};
  run_grid(grid, block, &decltype(call)::run, &call);
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof v);
  return u;
}

template <typename T>
T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

}  // namespace eo_emu

#define threadIdx (::eo_emu::thread_idx())
#define blockIdx (::eo_emu::block_idx())
#define blockDim (::eo_emu::block_dim())
#define gridDim (::eo_emu::grid_dim())

inline void __syncthreads() { ::eo_emu::sync_block(0); }
inline int __syncthreads_or(int p) { return ::eo_emu::sync_block(p != 0); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = ::eo_emu::lane_id();
  const int base = lane & ~(width - 1);
  return ::eo_emu::from_bits<T>(::eo_emu::warp_exchange(mask, ::eo_emu::to_bits(v), base + (src & (width - 1))));
}

// A lane may read a partner in its own width segment or an earlier one; a later one gives its
// own value (the CUDA programming guide's rule for width < 32).
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::eo_emu::lane_id();
  const int src = lane ^ lane_mask;
  const bool readable = src < (lane & ~(width - 1)) + width;
  return ::eo_emu::from_bits<T>(::eo_emu::warp_exchange(mask, ::eo_emu::to_bits(v), readable ? src : lane));
}

template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::eo_emu::lane_id();
  const int src = lane - int(delta);
  const bool inside = src >= (lane & ~(width - 1));
  return ::eo_emu::from_bits<T>(::eo_emu::warp_exchange(mask, ::eo_emu::to_bits(v), inside ? src : lane));
}

template <typename T>
T __ldg(const T* p) { return *p; }

template <typename T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
T atomicMin(T* p, T v) {
  const T old = *p;
  if (v < old) *p = v;
  return old;
}
template <typename T>
T atomicMax(T* p, T v) {
  const T old = *p;
  if (v > old) *p = v;
  return old;
}

// Round-to-nearest products and differences: with -ffp-contract=off (build.py) these are exactly
// the GPU's __fmul_rn / __fsub_rn.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline unsigned int __float_as_uint(float f) { return ::eo_emu::from_bits<unsigned int>(::eo_emu::to_bits(f)); }
inline float __uint_as_float(unsigned int u) { return ::eo_emu::from_bits<float>(u); }
inline long long __double_as_longlong(double d) { return ::eo_emu::from_bits<long long>(::eo_emu::to_bits(d)); }
inline double __longlong_as_double(long long u) { return ::eo_emu::from_bits<double>(static_cast<uint64_t>(u)); }
// Toward zero, saturating, NaN -> 0 (the PTX cvt.rzi.u64.f32 rules).
inline unsigned long long __float2ull_rz(float f) {
  if (!(f > 0.0f)) return 0;
  if (f >= 18446744073709551616.0f) return ~0ull;
  return static_cast<unsigned long long>(f);
}

// CUDA's integer min / max overloads (mixed types promote as in CUDA's math headers).
template <typename A, typename B, typename = std::enable_if_t<std::is_integral_v<A> && std::is_integral_v<B>>>
std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(a) : C(b);
}
template <typename A, typename B, typename = std::enable_if_t<std::is_integral_v<A> && std::is_integral_v<B>>>
std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) > C(b) ? C(a) : C(b);
}
