"""The CUDA emulator (tests/cuda_emu) that runs the cuda backend's kernels on CPU tensors under
`pytest -m gpu` without a GPU: its source rewrites, and that it reports what a GPU would, so that
a pass under it means something. A small CUDA program built with it checks barriers (a missing one
reads stale shared memory; one that not every thread reaches is a deadlock, reported), shared
memory that starts as garbage in every block, warp shuffles (xor, broadcast, up; partial warps),
the launch limits (grid.y <= 65535, <= 1024 threads), integer atomics, that a misaligned 16-byte
load aborts (-fsanitize=alignment), as it faults on a GPU, and that the `--asan` build reports a
read past an allocation."""
import importlib.util
import os
import subprocess

import pytest

from conftest import REPO_ROOT
from test_cuda_build import needs_nvcc

_spec = importlib.util.spec_from_file_location("cuda_emu_build", os.path.join(REPO_ROOT, "tests", "cuda_emu", "build.py"))
emu_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(emu_build)

PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>

__global__ void block_sum(const int* x, int* out) {
  __shared__ int buf[256];
  buf[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

// Thread 0 reads its neighbours' writes without a barrier.
__global__ void missing_barrier(int* out) {
  __shared__ int buf[64];
  buf[threadIdx.x] = int(threadIdx.x) + 1;
  if (threadIdx.x == 0) {
    int s = 0;
    for (int i = 0; i < 64; ++i) s += buf[i];
    *out = s;
  }
}

// Each thread reads its lower neighbour's write without a barrier: fine in thread order (block 0),
// stale when the threads run last to first (block 1).
__global__ void previous_neighbour(int* out) {
  __shared__ int buf[64];
  const int t = threadIdx.x;
  buf[t] = 1000 * int(blockIdx.x) + t;
  out[64 * blockIdx.x + t] = buf[(t + 63) % 64];
}

// Reads shared memory it never wrote (block 0), or that an earlier block wrote (block 1).
__global__ void uninitialized_shared(unsigned* out) {
  __shared__ unsigned buf[32];
  out[32 * blockIdx.x + threadIdx.x] = buf[threadIdx.x];
  buf[threadIdx.x] = 7;
}

// Thread 0 publishes a value after a barrier and everybody reads it without another barrier.
__global__ void unsynchronized_broadcast(int* out) {
  __shared__ int value;
  if (threadIdx.x == 0) value = 0;
  __syncthreads();
  if (threadIdx.x == 0) value = 1 + int(blockIdx.x);
  out[64 * blockIdx.x + threadIdx.x] = value;
}

__global__ void narrow_xor(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 8, 8);
}

// The two half-warps reduce separately, each with its own mask; then a shuffle with a mask that
// overlaps both.
__global__ void half_warp_masks(int* out) {
  const unsigned mask = threadIdx.x < 16 ? 0x0000ffffu : 0xffff0000u;
  int v = int(threadIdx.x);
  for (int off = 8; off > 0; off /= 2) v += __shfl_xor_sync(mask, v, off);
  out[threadIdx.x] = v;
}

__global__ void overlapping_masks(int* out) {
  const unsigned mask = threadIdx.x < 16 ? 0x0000ffffu : 0xffffff00u;
  *out = __shfl_sync(mask, int(threadIdx.x), 0);
}

__global__ void divergent_barrier(int* out) {
  if (threadIdx.x % 2 == 0) return;
  __syncthreads();
  *out = 1;
}

__global__ void shuffles(int* out) {
  const int lane = threadIdx.x % 32;
  int v = int(threadIdx.x);
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  int incl = 1;
  for (int off = 1; off < 32; off *= 2) {
    const int o = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += o;
  }
  const double d = __shfl_sync(0xffffffffu, 0.5 * threadIdx.x, 3);
  out[3 * threadIdx.x] = v;
  out[3 * threadIdx.x + 1] = incl;
  out[3 * threadIdx.x + 2] = int(2 * d);
}

__global__ void count(unsigned long long* n, unsigned* hi) {
  atomicAdd(n, 1ull);
  atomicMax(hi, unsigned(blockIdx.y * 1000 + threadIdx.x));
}

__global__ void vec_load(const void* p, float* out) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  *out = __uint_as_float(v.x);
}

__global__ void read_all(const int* x, int* out) { atomicAdd(out, x[threadIdx.x]); }

// The last launch's error code, then the n values (one line).
template <typename T>
void print_launch(const T* out, int n) {
  printf("%d", int(cudaGetLastError()));
  for (int i = 0; i < n; ++i) printf(" %lld", (long long)out[i]);
  printf("\n");
}

int main(int argc, char** argv) {
  const char* c = argv[1];
  if (!strcmp(c, "block_sum")) {
    static int x[512], out[2];
    for (int i = 0; i < 512; ++i) x[i] = i;
    block_sum<<<2, 256, 0, nullptr>>>(x, out);
    printf("%d %d %d\n", int(cudaGetLastError()), out[0], out[1]);
  } else if (!strcmp(c, "missing_barrier")) {
    int out = 0;
    missing_barrier<<<1, 64, 0, nullptr>>>(&out);
    printf("%d %d\n", int(cudaGetLastError()), out);
  } else if (!strcmp(c, "previous_neighbour")) {
    static int out[128];
    previous_neighbour<<<2, 64, 0, nullptr>>>(out);
    print_launch(out, 128);
  } else if (!strcmp(c, "uninitialized_shared")) {
    static unsigned out[64];
    uninitialized_shared<<<2, 32, 0, nullptr>>>(out);
    print_launch(out, 64);
  } else if (!strcmp(c, "unsynchronized_broadcast")) {
    static int out[128];
    unsynchronized_broadcast<<<2, 64, 0, nullptr>>>(out);
    print_launch(out, 128);
  } else if (!strcmp(c, "narrow_xor")) {
    static int out[32];
    narrow_xor<<<1, 32, 0, nullptr>>>(out);
    print_launch(out, 32);
  } else if (!strcmp(c, "half_warp_masks")) {
    static int out[32];
    half_warp_masks<<<1, 32, 0, nullptr>>>(out);
    print_launch(out, 32);
    int one = 0;
    overlapping_masks<<<1, 32, 0, nullptr>>>(&one);
    const cudaError_t err = cudaGetLastError();
    printf("%d %s\n", int(err == cudaErrorLaunchFailure), cudaGetErrorString(err));
  } else if (!strcmp(c, "divergent_barrier")) {
    int out = 0;
    divergent_barrier<<<1, 64, 0, nullptr>>>(&out);
    const cudaError_t err = cudaGetLastError();
    printf("%d %s\n", int(err == cudaErrorLaunchFailure), cudaGetErrorString(err));
    static int x[512], sums[2];  // the next launch runs normally (under ASan too)
    for (int i = 0; i < 512; ++i) x[i] = i;
    block_sum<<<2, 256, 0, nullptr>>>(x, sums);
    printf("after %d %d %d\n", int(cudaGetLastError()), sums[0], sums[1]);
  } else if (!strcmp(c, "shuffles")) {
    static int out[3 * 48];
    shuffles<<<1, 48, 0, nullptr>>>(out);  // a full warp and a partial one of 16 lanes
    print_launch(out, 3 * 48);
  } else if (!strcmp(c, "limits")) {
    unsigned long long n = 0;
    unsigned hi = 0;
    count<<<dim3(2, 3), 1024, 0, nullptr>>>(&n, &hi);
    const int ok = int(cudaGetLastError());
    count<<<dim3(1, 70000), 32, 0, nullptr>>>(&n, &hi);
    const int tall = int(cudaGetLastError() == cudaErrorInvalidConfiguration);
    count<<<1, 1025, 0, nullptr>>>(&n, &hi);
    const int wide = int(cudaGetLastError() == cudaErrorInvalidConfiguration);
    printf("%d %llu %u %d %d\n", ok, n, hi, tall, wide);
  } else if (!strcmp(c, "misaligned")) {
    alignas(16) static unsigned char buf[64];
    float out = 0;
    vec_load<<<1, 1, 0, nullptr>>>(buf + 16, &out);
    printf("aligned %d\n", int(cudaGetLastError()));
    fflush(stdout);
    vec_load<<<1, 1, 0, nullptr>>>(buf + 4, &out);
    printf("misaligned load not caught\n");
  } else if (!strcmp(c, "out_of_bounds")) {
    int* x = static_cast<int*>(malloc(64 * sizeof(int)));
    for (int i = 0; i < 64; ++i) x[i] = 1;
    int total = 0;
    read_all<<<1, 64, 0, nullptr>>>(x, &total);
    printf("in bounds %d %d\n", int(cudaGetLastError()), total);
    fflush(stdout);
    read_all<<<1, 65, 0, nullptr>>>(x, &total);  // thread 64 reads past the allocation
    printf("out-of-bounds read not caught\n");
    free(x);
  }
  return 0;
}
"""


def _program(tmp_path_factory, flags):
    d = tmp_path_factory.mktemp("cuda_emu")
    (d / "program.cu").write_text(PROGRAM)
    exe = str(d / "program")
    emu_build.compile_program(str(d / "program.cu"), exe, flags)

    def run(case):
        return subprocess.run([exe, case], capture_output=True, text=True, timeout=60)
    return run


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return _program(tmp_path_factory, emu_build.CXXFLAGS)


@pytest.fixture(scope="module")
def asan_program(tmp_path_factory):
    """The program built as `build.py --asan` builds the module."""
    return _program(tmp_path_factory, emu_build.ASAN_CXXFLAGS)


pytestmark = needs_nvcc  # the emulator compiles against the toolkit's headers


def test_rewrite_launches():
    src = ("k<<<g, b, 0, s>>>(x, y);\n"
           "ns::kern<T::kCode, (N > 2)>\n    <<<dim3(a, b), 256, 0, st>>>(f(x), y[0]);\n"
           "noargs<<<1, 1, 0, 0>>>();\n")
    assert emu_build.rewrite_launches(src) == (
        "::eo_emu::launch(g, b, 0, s, k, x, y);\n"
        "::eo_emu::launch(dim3(a, b), 256, 0, st, ns::kern<T::kCode, (N > 2)>, f(x), y[0]);\n"
        "::eo_emu::launch(1, 1, 0, 0, noargs);\n")
    with pytest.raises(ValueError, match="all four"):
        emu_build.rewrite_launches("k<<<g, b>>>(x);")


def test_register_shared():
    src = "  __shared__ OnlineSoftmax<float> states[kWarps];\n  __shared__ T part[K][kSelWarps];\n"
    out = emu_build.register_shared(src)
    assert out.count("static ") == 4 and "__shared__" not in out
    assert "shared_region(&states, sizeof(states))" in out and "shared_region(&part, sizeof(part))" in out
    assert "static OnlineSoftmax<float> states[kWarps];" in out and "static T part[K][kSelWarps];" in out


def test_register_shared_refuses_two_declarators():
    with pytest.raises(ValueError, match="one declarator per __shared__ declaration"):
        emu_build.register_shared("__shared__ int a[1], b[1];")


def test_block_barriers(program):
    assert program("block_sum").stdout.split() == ["0", str(sum(range(256))), str(sum(range(256, 512)))]


def test_a_missing_barrier_reads_stale_shared_memory(program):
    # Thread 0 runs to its end before thread 1 starts: it sees only its own write (the other 63
    # entries hold the emulator's garbage). With the barrier the sum is 2080.
    err, total = program("missing_barrier").stdout.split()
    assert err == "0" and int(total) != sum(range(1, 65))


def test_odd_blocks_run_their_threads_in_reverse(program):
    # A read of a lower thread's unsynchronized write: seen in block 0 (thread order; only thread 0,
    # reading thread 63, is stale), stale in block 1 for every thread but 0 (last to first).
    err, *out = program("previous_neighbour").stdout.split()
    out = [int(v) for v in out]
    want = [1000 * b + (t + 63) % 64 for b in range(2) for t in range(64)]
    assert err == "0"
    assert [t for t in range(64) if out[t] != want[t]] == [0]
    assert [t for t in range(64) if out[64 + t] != want[64 + t]] == list(range(1, 64))


def test_shared_memory_starts_as_garbage_in_every_block(program):
    err, *out = program("uninitialized_shared").stdout.split()
    assert err == "0" and out == [str(2**32 - 1)] * 64


def test_threads_resume_in_order_after_a_barrier(program):
    # Block 0 resumes thread 0 first, which publishes before the others read; block 1 resumes
    # thread 63 first: every thread but 0 reads the value of before the barrier.
    err, *out = program("unsynchronized_broadcast").stdout.split()
    assert err == "0"
    assert out[:64] == ["1"] * 64
    assert out[64] == "2" and out[65:] == ["0"] * 63


def test_a_barrier_some_threads_skip_is_a_deadlock(program):
    out = program("divergent_barrier")
    assert out.stdout.startswith("1 deadlock: block (0,0,0) thread 1"), out.stdout + out.stderr
    assert "32 of the block's 64 threads have returned" in out.stdout
    assert f"after 0 {sum(range(256))} {sum(range(256, 512))}" in out.stdout


def test_asan_build_recovers_after_a_deadlock(asan_program):
    # The failed block's fibers are abandoned mid-call; their stacks' ASan poisoning must not
    # trip the next launch.
    out = asan_program("divergent_barrier")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"after 0 {sum(range(256))} {sum(range(256, 512))}" in out.stdout


def test_narrow_xor_reads_earlier_segments_only(program):
    err, *out = program("narrow_xor").stdout.split()
    assert err == "0"
    # width 8: lanes 0-7 would read 8-15 (a later segment: their own value), lanes 8-15 read 0-7.
    assert [int(v) for v in out[:16]] == list(range(8)) + list(range(8))
    assert [int(v) for v in out[16:24]] == list(range(16, 24))


def test_shuffles_in_separate_groups(program):
    # Each half-warp's sum, then a refused shuffle whose mask overlaps both groups.
    sums, refused = program("half_warp_masks").stdout.splitlines()
    assert sums.split() == ["0"] + [str(sum(range(16)))] * 16 + [str(sum(range(16, 32)))] * 16
    assert refused.startswith("1 warp shuffles with overlapping masks"), refused


def test_warp_shuffles(program):
    got = [int(v) for v in program("shuffles").stdout.split()]
    assert got[0] == 0
    vals = got[1:]
    for t in range(48):
        lane, base = t % 32, t - t % 32
        if t < 32:  # (the partial warp's xor partners do not exist: undefined on a GPU)
            assert vals[3 * t] == sum(range(32)), t
        assert vals[3 * t + 1] == lane + 1, t  # inclusive prefix count
        assert vals[3 * t + 2] == base + 3, t  # lane 3's value, broadcast


def test_launch_limits_and_atomics(program):
    ok, n, hi, tall, wide = program("limits").stdout.split()
    assert (ok, n, hi) == ("0", str(6 * 1024), str(2 * 1000 + 1023))
    assert tall == "1" and wide == "1"


def test_a_misaligned_vector_load_aborts(program):
    out = program("misaligned")
    assert "aligned 0" in out.stdout
    assert out.returncode != 0 and "misaligned load not caught" not in out.stdout
    assert "misaligned address" in out.stderr


def test_asan_build_reports_an_out_of_bounds_read(asan_program):
    out = asan_program("out_of_bounds")
    assert "in bounds 0 64" in out.stdout
    assert out.returncode != 0 and "out-of-bounds read not caught" not in out.stdout
    assert "heap-buffer-overflow" in out.stderr
