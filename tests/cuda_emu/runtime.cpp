// The emulator's scheduler (emu.h says what it models) and the few CUDA runtime calls that
// csrc/cuda makes, answered for one emulated device. Compiled without emu.h's macros.
#include <cuda_runtime_api.h>
#include <sys/mman.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

// Fiber switch: saves the callee-saved registers on the current stack, stores its pointer in
// *from, loads `to` and restores that fiber's registers. ucontext's swapcontext would do, but it
// makes a signal-mask system call on every switch, and a warp shuffle costs two switches per lane.
extern "C" void eo_emu_switch(void** from, void* to);
asm(R"(
.text
.globl eo_emu_switch
.type eo_emu_switch, @function
eo_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size eo_emu_switch, .-eo_emu_switch
.section .note.GNU-stack,"",@progbits
.text
)");

namespace eo_emu {

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;  // below each stack, no access: an overflow faults, it does not corrupt
constexpr int kWarp = 32;

enum class State { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

struct Barrier {
  int arrived = 0;
  unsigned generation = 0;
  int or_value = 0;
  int result = 0;
};

struct Thread {
  void* sp = nullptr;  // saved stack pointer while switched out
  uint3 idx;
  int linear = 0;
  State state = State::kRunnable;
  const Barrier* waiting_on = nullptr;
  unsigned waited_generation = 0;
};

// The lanes of one member mask that shuffle together. Two banks of slots, used in turn: a lane
// writes the next exchange's bank only after passing this exchange's barrier, by which time every
// lane has written this one; and it can only be overwritten again after the next barrier, which no
// lane passes before all have read. So one barrier per exchange suffices.
struct ShuffleGroup {
  unsigned mask = 0;
  Barrier barrier;
  uint64_t slot[2][kWarp];
};

// A warp's groups: one with the full mask, or several disjoint ones (half-warps reducing apart).
struct Warp {
  std::vector<ShuffleGroup> groups;
};

struct Grid {
  dim3 grid, block;
  uint3 block_idx;
  int n_threads = 0;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  Barrier block_barrier;
  Thread* current = nullptr;
  void* scheduler_sp = nullptr;
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
  bool barrier_completed = false;  // the scheduler then starts its next round from the first thread
  std::string error;               // set by a thread that found a misuse; the block stops
};

// All of this is used under the launch mutex (run_grid): one launch at a time in a process.
Grid* g_grid = nullptr;
std::vector<void*> g_stacks;  // usable bottoms; each has a guard page below it
std::vector<std::pair<void*, size_t>> g_shared;  // every __shared__ variable met so far
// CUDA keeps the last error per host thread.
thread_local cudaError_t g_last_error = cudaSuccess;
thread_local std::string g_message;

void* stack(size_t i) {
  while (g_stacks.size() <= i) {
    void* p = mmap(nullptr, kGuardBytes + kStackBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, kGuardBytes, PROT_NONE);
    g_stacks.push_back(static_cast<char*>(p) + kGuardBytes);
  }
  return g_stacks[i];
}

void yield_to_scheduler() {
  Grid& g = *g_grid;
  eo_emu_switch(&g.current->sp, g.scheduler_sp);
}

[[noreturn]] void thread_entry() {
  Grid& g = *g_grid;
  g.body(g.arg);
  g.current->state = State::kDone;
  yield_to_scheduler();
  __builtin_unreachable();
}

// A fresh fiber's stack: eo_emu_switch pops six zero registers, then returns into thread_entry
// with the stack aligned as at a call (rsp + 8 a multiple of 16).
void* fresh_stack(void* base) {
  auto top = reinterpret_cast<uintptr_t>(base) + kStackBytes;
  auto* sp = reinterpret_cast<void**>(top & ~uintptr_t(15));
  *--sp = nullptr;  // the return address thread_entry never uses
  *--sp = reinterpret_cast<void*>(&thread_entry);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  return sp;
}

// Arrive at `b`, which `expected` threads share, and wait until all have arrived. The last to
// arrive waits too: the scheduler then resumes the threads in their order, from the first (a
// thread that ran on would read, before the others' next writes, what it must not see).
int arrive(Barrier& b, int expected, int or_value, State waiting) {
  Grid& g = *g_grid;
  Thread& t = *g.current;
  b.or_value |= or_value;
  t.waiting_on = &b;
  t.waited_generation = b.generation;
  t.state = waiting;
  if (++b.arrived == expected) {
    b.result = b.or_value;
    b.arrived = 0;
    b.or_value = 0;
    ++b.generation;
    g.barrier_completed = true;
  }
  yield_to_scheduler();  // resumed once the generation has moved on
  t.waiting_on = nullptr;
  t.state = State::kRunnable;
  return b.result;
}

// A misuse found by a thread (it is not resumed; the launch fails with `message`).
[[noreturn]] void misuse(const std::string& message) {
  Grid& g = *g_grid;
  g.error = message;
  yield_to_scheduler();
  __builtin_unreachable();
}

std::string where(const Grid& g, const Thread& t) {
  return "block (" + std::to_string(g.block_idx.x) + "," + std::to_string(g.block_idx.y) + "," +
         std::to_string(g.block_idx.z) + ") thread " + std::to_string(t.linear);
}

cudaError_t fail(cudaError_t err, const std::string& message) {
  g_last_error = err;
  g_message = message;
  std::fprintf(stderr, "cuda_emu: %s\n", message.c_str());
  return err;
}

// A failed block's fibers are abandoned mid-call: under ASan their stacks keep the poisoning of
// their live frames, which the next launch's fibers would trip over.
void forget_abandoned_stacks(int n) {
#if defined(__SANITIZE_ADDRESS__)
  for (int i = 0; i < n; ++i) __asan_unpoison_memory_region(g_stacks[i], kStackBytes);
#else
  (void)n;
#endif
}

// Runs one block to completion; false (with the message set) on a deadlock or a misuse.
bool run_block(Grid& g) {
  const int n = g.n_threads;
  for (int i = 0; i < n; ++i) {
    Thread& t = g.threads[i];
    t.linear = i;
    t.idx = {unsigned(i % g.block.x), unsigned(i / g.block.x % g.block.y), unsigned(i / (g.block.x * g.block.y))};
    t.state = State::kRunnable;
    t.waiting_on = nullptr;
    t.sp = fresh_stack(stack(i));
  }
  for (Warp& w : g.warps) w.groups.clear();
  g.block_barrier = Barrier{};
  for (const auto& [p, bytes] : g_shared) std::memset(p, 0xff, bytes);
  // Odd blocks run their threads last to first: a read of another thread's write that lacks its
  // barrier then reads stale data in one of the two orders, whichever of the two threads is lower.
  const bool reverse = ((g.block_idx.x + g.block_idx.y + g.block_idx.z) & 1) != 0;
  for (;;) {
    // One round: every thread that can run, in order, each until it waits or returns; a round
    // ends early when a barrier completes, so that the next one starts from the first thread.
    bool ran = false, live = false;
    g.barrier_completed = false;
    for (int k = 0; k < n && !g.barrier_completed; ++k) {
      Thread& t = g.threads[reverse ? n - 1 - k : k];
      if (t.state == State::kDone) continue;
      live = true;
      if (t.waiting_on != nullptr && t.waiting_on->generation == t.waited_generation) continue;
      g.current = &t;
      ran = true;
      eo_emu_switch(&g.scheduler_sp, t.sp);
      if (!g.error.empty()) {
        fail(cudaErrorLaunchFailure, g.error + " (" + where(g, t) + ")");
        forget_abandoned_stacks(n);
        return false;
      }
    }
    if (!live) return true;
    if (!ran) {
      std::string waiting;
      int done = 0;
      for (const Thread& t : g.threads) {
        if (t.state == State::kDone) ++done;
        else if (waiting.empty()) waiting = where(g, t) + (t.state == State::kBlockBarrier ? " at __syncthreads" : " at a warp shuffle");
      }
      fail(cudaErrorLaunchFailure, "deadlock: " + waiting + " waits for threads that will not come (" +
                                       std::to_string(done) + " of the block's " + std::to_string(n) +
                                       " threads have returned)");
      forget_abandoned_stacks(n);
      return false;
    }
  }
}

}  // namespace

const uint3& thread_idx() { return g_grid->current->idx; }
const uint3& block_idx() { return g_grid->block_idx; }
const dim3& block_dim() { return g_grid->block; }
const dim3& grid_dim() { return g_grid->grid; }
int lane_id() { return g_grid->current->linear % kWarp; }

bool shared_region(void* p, size_t bytes) {
  g_shared.emplace_back(p, bytes);
  std::memset(p, 0xff, bytes);  // this block's first pass: nobody has written it yet
  return true;
}

int sync_block(int or_value) {
  Grid& g = *g_grid;
  return arrive(g.block_barrier, g.n_threads, or_value, State::kBlockBarrier);
}

uint64_t warp_exchange(unsigned mask, uint64_t bits, int src) {
  Grid& g = *g_grid;
  const int linear = g.current->linear;
  Warp& w = g.warps[linear / kWarp];
  const int lane = linear % kWarp;
  const int first = linear - lane;
  const int lanes = g.n_threads - first < kWarp ? g.n_threads - first : kWarp;
  const unsigned present = lanes == kWarp ? ~0u : (1u << lanes) - 1;
  if (!((mask >> lane) & 1)) misuse("a warp shuffle whose mask leaves out the calling lane");
  ShuffleGroup* group = nullptr;
  for (ShuffleGroup& candidate : w.groups) {
    if (candidate.mask == mask) group = &candidate;
    else if (candidate.mask & mask) misuse("warp shuffles with overlapping masks");
  }
  if (group == nullptr) {
    w.groups.emplace_back();
    group = &w.groups.back();
    group->mask = mask;
  }
  uint64_t* slot = group->slot[group->barrier.generation & 1];
  slot[lane] = bits;
  arrive(group->barrier, __builtin_popcount(mask & present), 0, State::kWarpBarrier);
  // A lane outside the group reads what it would on a GPU: nothing defined; here its own value.
  return src >= 0 && src < lanes && ((mask >> src) & 1) ? slot[src] : bits;
}

cudaError_t run_grid(dim3 grid, dim3 block, void (*body)(void*), void* arg) {
  // One launch at a time: the __shared__ statics are one copy per kernel, and the state above is
  // shared. Launches from several OS threads take turns.
  static std::mutex launch_mutex;
  std::lock_guard<std::mutex> lock(launch_mutex);
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    return fail(cudaErrorInvalidConfiguration,
                "invalid launch configuration: grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
                    std::to_string(grid.z) + "), block (" + std::to_string(block.x) + "," + std::to_string(block.y) +
                    "," + std::to_string(block.z) + ")");
  }
  Grid g;
  g.grid = grid;
  g.block = block;
  g.n_threads = int(threads);
  g.threads.resize(threads);
  g.warps.resize((threads + kWarp - 1) / kWarp);
  g.body = body;
  g.arg = arg;
  if (stack(threads - 1) == nullptr) return fail(cudaErrorMemoryAllocation, "cannot map the fibers' stacks");
  g_grid = &g;
  bool ok = true;
  for (unsigned z = 0; z < grid.z && ok; ++z)
    for (unsigned y = 0; y < grid.y && ok; ++y)
      for (unsigned x = 0; x < grid.x && ok; ++x) {
        g.block_idx = {x, y, z};
        ok = run_block(g);
      }
  g_grid = nullptr;
  return ok ? cudaSuccess : cudaErrorLaunchFailure;
}

const char* last_message() { return g_message.c_str(); }

}  // namespace eo_emu

// ---- the CUDA runtime calls of csrc/cuda, for one emulated device ------------------------------

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t err = eo_emu::g_last_error;
  eo_emu::g_last_error = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError(void) { return eo_emu::g_last_error; }

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaError (emulator)";
  }
}

const char* cudaGetErrorString(cudaError_t err) {
  if (err == cudaErrorLaunchFailure || err == cudaErrorInvalidConfiguration || err == cudaErrorMemoryAllocation) {
    return eo_emu::last_message();
  }
  return cudaGetErrorName(err);
}

cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : eo_emu::fail(cudaErrorInvalidDevice, "the emulator has one device, 0");
}

}  // extern "C"
