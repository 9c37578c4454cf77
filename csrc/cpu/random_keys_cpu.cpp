// random_keys_cpu (token_cpu.h): Clip-Cov's keys, out[i] = random_key(*seed, *first + i)
// (csrc/include/entropy_ops/random_keys.h). Each key depends on its index alone, so any split of
// [0, n) over the threads writes the same bits. seed and first are read here, from the device
// (CPU) tensors.
#include <algorithm>

#include "cpu/thread_pool.h"
#include "cpu/token_cpu.h"
#include "entropy_ops/random_keys.h"

namespace entropy_ops {
namespace cpu {

void random_keys_cpu(const int64_t* seed, const int64_t* first, int64_t n, int64_t* out,
                     int num_threads) {
  const uint64_t s = static_cast<uint64_t>(*seed), f = static_cast<uint64_t>(*first);
  // A worker per 64K keys at least: below that a thread costs more than it saves.
  const int workers = static_cast<int>(
      std::min<int64_t>(std::max(num_threads, 1), std::max<int64_t>(1, n >> 16)));
  parallel_for(n, workers, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = random_key(s, f + static_cast<uint64_t>(i));
  });
}

}  // namespace cpu
}  // namespace entropy_ops
