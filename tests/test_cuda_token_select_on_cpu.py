"""The CUDA token kernels' selection helpers (csrc/cuda/token_select.cuh: order keys, the digit
pick, key -> value) run on the CPU: no GPU here, so this checks the logic that
masked_quantile.cu and top_k.cu share (SPEC §6). A small host driver, compiled with nvcc, runs the
kernels' radix rounds serially (same digits, same histograms, same pick) and prints, for each rank,
the selected key prefix, the residual rank among that key's ties and its value; they are compared
with a sort of the valid values: every dtype, ties, signed zeros, infinities, NaN (never selected),
subnormals, int64."""
import subprocess

import pytest
import torch

from test_cuda_build import NVCC, ROOT, needs_nvcc

pytestmark = needs_nvcc

DRIVER = r"""
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "cuda/token_select.cuh"
using namespace entropy_ops;
using namespace entropy_ops::gpu;
template <int Code>
int run(const void* x, int64_t n, const std::vector<int64_t>& ranks, bool desc) {
  for (int64_t r0 : ranks) {
    uint64_t prefix = 0;
    int64_t rank = r0;
    for (int high = kKeyBits<Code>; high > kLowBits<Code>; high -= kDigitBits) {
      const int low = high - kDigitBits > kLowBits<Code> ? high - kDigitBits : kLowBits<Code>;
      unsigned long long hist[kRadixBins] = {0};
      for (int64_t i = 0; i < n; ++i) {
        uint64_t key;
        if (!order_key<Code>(x, i, &key)) continue;
        if (desc) key = descending<Code>(key);
        if (key_above(key, high) == prefix) ++hist[(key >> low) & (kRadixBins - 1)];
      }
      pick_digit(hist, high - low, &rank, &prefix);
    }
    // A descending prefix is the ascending one with its (kKeyBits - kLowBits) bits flipped.
    constexpr int kWidth = kKeyBits<Code> - kLowBits<Code>;
    const uint64_t width_mask = kWidth == 64 ? ~uint64_t(0) : (uint64_t(1) << kWidth) - 1;
    const uint64_t ascending = desc ? ~prefix & width_mask : prefix;
    std::printf("%llu %lld %.17g\n", (unsigned long long)prefix, (long long)rank,
                Code == kInt64Code ? 0.0 : key_value<Code>(ascending));
  }
  return 0;
}
int main(int argc, char** argv) {
  const int code = std::atoi(argv[1]);
  const bool desc = std::atoi(argv[2]) != 0;
  FILE* f = std::fopen(argv[3], "rb");
  std::fseek(f, 0, SEEK_END);
  const long bytes = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  std::vector<unsigned char> buf(bytes);
  if (std::fread(buf.data(), 1, bytes, f) != size_t(bytes)) return 1;
  const int size = (code == 1 || code == 2) ? 2 : (code == 0 ? 4 : 8);
  std::vector<int64_t> ranks;
  for (int i = 4; i < argc; ++i) ranks.push_back(std::atoll(argv[i]));
  const int64_t n = bytes / size;
  switch (code) {
    case 0: return run<0>(buf.data(), n, ranks, desc);
    case 1: return run<1>(buf.data(), n, ranks, desc);
    case 2: return run<2>(buf.data(), n, ranks, desc);
    case 3: return run<3>(buf.data(), n, ranks, desc);
    default: return run<4>(buf.data(), n, ranks, desc);
  }
}
"""

CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3, torch.int64: 4}


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = tmp_path_factory.mktemp("token_select")
    (d / "driver.cu").write_text(DRIVER)
    cmd = [NVCC, "-std=c++17", "--expt-relaxed-constexpr", f"-I{ROOT}/csrc/include", f"-I{ROOT}/csrc",
           "-o", str(d / "driver"), str(d / "driver.cu")]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return d


def _select(driver, x, ranks, descending):
    path = driver / "values.bin"
    path.write_bytes(x.contiguous().view(torch.uint8).numpy().tobytes())
    out = subprocess.run([str(driver / "driver"), str(CODES[x.dtype]), str(int(descending)), str(path)]
                         + [str(r) for r in ranks], capture_output=True, text=True, check=True)
    return [(int(p), int(r), float(v)) for p, r, v in (line.split() for line in out.stdout.splitlines())]


def _values(dtype, n=3000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.int64:
        return torch.randint(-2**62, 2**62, (n,), generator=gen) // 2**52  # ties
    x = torch.randint(-40, 40, (n,), generator=gen).double() * 0.125
    x[::17] = -0.0
    x[1::29] = float("inf")
    x[2::31] = float("-inf")
    x[3::37] = float("nan")
    tiny = {torch.float32: 1e-44, torch.float16: 6e-8, torch.bfloat16: 1e-40, torch.float64: 1e-310}[dtype]
    x[4::41] = tiny  # subnormal in the dtype
    x[5::43] = -tiny
    return x.to(dtype)


@pytest.mark.parametrize("dtype", list(CODES), ids=str)
def test_radix_rounds_select_the_sorted_entry(driver, dtype):
    x = _values(dtype)
    valid = x if dtype == torch.int64 else x[~torch.isnan(x)]
    n = valid.numel()
    ranks = [0, 1, 7, n // 3, n // 2, n - 2, n - 1]
    for descending in (False, True):
        order = valid.double().sort(descending=descending).values if dtype != torch.int64 else \
            valid.sort(descending=descending).values
        for r, (prefix, residual, value) in zip(ranks, _select(driver, x, ranks, descending)):
            want = order[r]
            ties_before = int((order[:r] == want).sum())  # -0.0 == +0.0: one key
            assert residual == ties_before, (r, descending)
            if dtype == torch.int64:
                width = (1 << 64) - 1
                asc = (~prefix & width) if descending else prefix
                got = (asc ^ (1 << 63)) - (1 << 64) * ((asc ^ (1 << 63)) >> 63)
                assert got == int(want), (r, descending)
            else:
                assert value == float(want), (r, descending, value, float(want))
