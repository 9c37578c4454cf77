// A small std::thread pool for the CPU kernels (no OpenMP: torch already brings its own runtime
// and two of them fight over cores). Started on first use, re-created after fork, the calling
// thread works as worker 0.
#pragma once

#include <stdint.h>

#include <functional>

namespace entropy_ops {
namespace cpu {

// Splits [0, n) into n_workers contiguous ranges and runs fn(begin, end) on each, worker 0 on
// the calling thread; returns when all are done. The split never changes what a row computes,
// only which thread computes it.
void parallel_for(int64_t n, int n_workers, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace cpu
}  // namespace entropy_ops
