"""Clip-Cov's random keys (``entropy_ops/backends/token_kernel.py``, "Random keys"): key ``i`` is
output number ``first + i`` of the SplitMix64 generator seeded with ``seed``, shifted to 62 bits.
Counter-based, so each program computes its block of keys from ``(seed, first)`` alone; both are
read from device pointers (never host integers). The same function as
``csrc/include/entropy_ops/random_keys.h``'s ``random_key``."""
import triton
import triton.language as tl

# SplitMix64's constants (Steele, Lea, Flood, OOPSLA 2014): all above 2^63, so Triton types these
# literals as uint64 and the products wrap modulo 2^64 (compiled: mul.lo; interpreted: numpy uint64).
GAMMA = tl.constexpr(0x9E3779B97F4A7C15)
MIX1 = tl.constexpr(0xBF58476D1CE4E5B9)
MIX2 = tl.constexpr(0x94D049BB133111EB)


@triton.jit
def random_key(s, j):
    """``splitmix64(s, j) >> 2`` in ``[0, 2^62)`` for uint64 ``s`` and ``j`` (``>>`` of unsigned
    values is logical), as uint64."""
    z = s + (j + 1) * GAMMA
    z = (z ^ (z >> 30)) * MIX1
    z = (z ^ (z >> 27)) * MIX2
    z = z ^ (z >> 31)
    return z >> 2


@triton.jit
def random_keys_kernel(seed_ptr, first_ptr, out_ptr, N, BLOCK: tl.constexpr):
    """``out[i] = random_key(seed, first + i)`` for ``i < N`` (int64 ``[N]``); ``seed`` and ``first``
    int64 ``[1]`` reinterpreted as uint64 (a negative seed is the upper half of the uint64 seeds).
    int64 offsets: ``N`` may pass 2^31."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
    first = tl.load(first_ptr).to(tl.uint64, bitcast=True)
    key = random_key(seed, first + idx.to(tl.uint64, bitcast=True))
    tl.store(out_ptr + idx, key.to(tl.int64, bitcast=True), mask=idx < N)
