#include "cpu/thread_pool.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace entropy_ops {
namespace cpu {
namespace {

constexpr int kMaxWorkers = 256;

// The caller's rounding / flush-to-zero / denormals-are-zero modes (MXCSR on x86, FPCR on
// aarch64, which torch.set_flush_denormal sets on the calling thread only) travel with each job:
// otherwise a row's bits would depend on which thread computed it (batch invariance). The sticky
// exception flags stay each thread's own: MXCSR's low 6 bits; aarch64 keeps them in FPSR.
#if defined(__x86_64__) || defined(__i386__)
constexpr unsigned kFlagBits = 0x3F;
unsigned fp_mode() { return _mm_getcsr() & ~kFlagBits; }
void set_fp_mode(unsigned mode) {
  const unsigned csr = _mm_getcsr();
  if ((csr & ~kFlagBits) != mode) _mm_setcsr((csr & kFlagBits) | mode);
}
#elif defined(__aarch64__)
// All of FPCR (FZ, FZ16, DN, RMode, AH/FIZ where present) is control; its defined bits lie in the
// low 32, the rest are RES0. Inline asm rather than gcc's __builtin_aarch64_get_fpcr64, which
// clang lacks.
unsigned fp_mode() {
  uint64_t fpcr;
  asm volatile("mrs %0, fpcr" : "=r"(fpcr));
  return static_cast<unsigned>(fpcr);
}
void set_fp_mode(unsigned mode) {
  if (fp_mode() != mode) asm volatile("msr fpcr, %0" : : "r"(uint64_t{mode}));
}
#else
unsigned fp_mode() { return 0; }
void set_fp_mode(unsigned) {}
#endif

class ThreadPool {
 public:
  ThreadPool() : pid_(getpid()) {}
  pid_t pid() const { return pid_; }

  // Runs task(w) for w in [0, n_workers). One job at a time: a second caller arriving while a
  // job runs (the GIL is released) runs its job inline instead of waiting.
  void run(int n_workers, const std::function<void(int)>& task) {
    std::unique_lock<std::mutex> job(job_mu_, std::try_to_lock);
    if (n_workers <= 1 || !job.owns_lock()) {
      for (int w = 0; w < n_workers; ++w) task(w);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      while (n_threads_ < n_workers - 1) {
        // Detached: after a fork the child abandons this pool (see pool()), so nothing may
        // ever need to join these threads.
        std::thread(&ThreadPool::worker_loop, this, ++n_threads_).detach();
      }
      task_ = &task;
      fp_mode_ = fp_mode();
      active_ = n_workers;
      pending_ = n_workers - 1;
      ++generation_;
    }
    work_cv_.notify_all();
    task(0);
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    task_ = nullptr;
  }

 private:
  // A worker cannot miss a generation it belongs to: run() waits for every active worker before
  // it can start the next one.
  void worker_loop(int id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      work_cv_.wait(lk, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= active_) continue;
      const std::function<void(int)>* task = task_;
      const unsigned mode = fp_mode_;
      lk.unlock();
      set_fp_mode(mode);
      (*task)(id);
      lk.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  const pid_t pid_;
  std::mutex job_mu_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const std::function<void(int)>* task_ = nullptr;
  unsigned fp_mode_ = 0;
  int n_threads_ = 0;
  int active_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
};

// The pool of this process. A forked child inherits the pointer but not the threads (and maybe
// a locked mutex): it leaks the old pool and makes its own. Pools are never deleted, since
// detached workers block on them until exit; creation is a CAS so no lock survives a fork.
ThreadPool& pool() {
  static std::atomic<ThreadPool*> current{nullptr};
  ThreadPool* p = current.load(std::memory_order_acquire);
  const pid_t me = getpid();
  while (p == nullptr || p->pid() != me) {
    ThreadPool* fresh = new ThreadPool();
    if (current.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // another thread won; p now holds its pool (it has no threads yet)
  }
  return *p;
}

}  // namespace

void parallel_for(int64_t n, int n_workers, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int workers = static_cast<int>(std::min<int64_t>(std::clamp(n_workers, 1, kMaxWorkers), n));
  if (workers == 1) {
    fn(0, n);
    return;
  }
  pool().run(workers, [&](int w) {
    const int64_t begin = n * w / workers, end = n * (w + 1) / workers;
    if (begin < end) fn(begin, end);
  });
}

}  // namespace cpu
}  // namespace entropy_ops
