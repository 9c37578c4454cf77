// A driver for tests/test_portable_build.py, built for aarch64 and run there or under an emulator:
// the thread pool's workers must compute in the calling thread's FPCR (csrc/cpu/thread_pool.cpp),
// which a caller such as torch.set_flush_denormal changes on its own thread only.
//
//   fp_mode_driver FZ_AT_START
//
// Starts the pool's threads with FPCR.FZ (flush-to-zero) = FZ_AT_START (0 or 1), then flips FZ
// on the calling thread and computes the gradients of identical rows, denormal unless flushed, on
// one thread and on four. Prints whether FZ changes one thread's bits (the premise: without it
// the check proves nothing) and how many rows of the four threads differ from one thread's.
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <vector>

#include "cpu/entropy_cpu.h"

namespace eoc = entropy_ops::cpu;

namespace {

// Enough elements that four workers are woken (row_workers in csrc/cpu/rows_common.h).
constexpr int64_t kRows = 64, kVocab = 4096;

void set_flush_to_zero(bool on) {
  constexpr uint64_t kFZ = uint64_t{1} << 24;
  uint64_t fpcr;
  asm volatile("mrs %0, fpcr" : "=r"(fpcr));
  fpcr = on ? fpcr | kFZ : fpcr & ~kFZ;
  asm volatile("msr fpcr, %0" : : "r"(fpcr));
}

// d entropy / d logits, scaled by 1e-6 (as tests/test_entropy_batch_invariance.py does on x86):
// -p_j (log p_j + H) with p_j ~ e^-86 is then about 4e-42, below fp32's smallest normal.
std::vector<float> grad(int num_threads) {
  std::vector<float> logits(kRows * kVocab, -86.0f);
  for (int64_t i = 0; i < kRows; ++i) logits[i * kVocab] = 0.0f;
  eoc::RowsArgs r{};
  r.logits = logits.data();
  r.dtype = 0;  // fp32
  r.n_rows = kRows;
  r.vocab = kVocab;
  r.row_stride = kVocab;
  r.temperature_scalar = 1.0;
  r.ignore_index = -100;
  r.num_threads = num_threads;
  std::vector<float> row_max(kRows), log_norm(kRows), entropy(kRows), logp(kRows);
  std::vector<float> g_h(kRows, 1e-6f), out(kRows * kVocab);
  eoc::entropy_fwd_cpu(r, row_max.data(), log_norm.data(), entropy.data(), logp.data());
  eoc::entropy_bwd_cpu(r, row_max.data(), log_norm.data(), entropy.data(), g_h.data(), nullptr,
                       out.data(), kVocab);
  return out;
}

bool same_bits(const float* a, const float* b, int64_t n) { return !memcmp(a, b, n * 4); }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || (strcmp(argv[1], "0") && strcmp(argv[1], "1"))) {
    fprintf(stderr, "usage: %s FZ_AT_START (0 or 1)\n", argv[0]);
    return 2;
  }
  const bool fz_at_start = argv[1][0] == '1';
  set_flush_to_zero(fz_at_start);
  const std::vector<float> before = grad(1);
  grad(4);  // the pool's threads exist from here on, started in this mode
  set_flush_to_zero(!fz_at_start);
  const std::vector<float> want = grad(1), got = grad(4);
  int64_t differing = 0;
  for (int64_t i = 0; i < kRows; ++i) {
    differing += !same_bits(&got[i * kVocab], &want[i * kVocab], kVocab);
  }
  printf("FZ changes one thread's bits: %d\nrows unlike one thread's: %lld\n",
         !same_bits(before.data(), want.data(), kRows * kVocab), static_cast<long long>(differing));
  return 0;
}
