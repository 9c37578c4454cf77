"""SPEC §6: the C++ bf16/fp16 <-> fp32 conversions (csrc/include/entropy_ops/dtype.h) on all 65,536
16-bit patterns, and fp32 -> bf16/fp16 round-to-nearest-even on random and edge-case floats, all
bit for bit against torch."""
import pytest
import torch

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _all_patterns(dtype):
    return torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)


def _assert_same_floats(ours, expected, what):
    """Bit equality for every non-NaN; NaN exactly where torch has NaN."""
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(ours), nan), f"{what}: NaN positions differ"
    ours_bits, expected_bits = ours[~nan].view(torch.int32 if ours.element_size() == 4 else torch.int16), \
        expected[~nan].view(torch.int32 if expected.element_size() == 4 else torch.int16)
    bad = ours_bits != expected_bits
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} values differ, e.g. ours {ours[~nan][bad][:5].tolist()} "
        f"vs torch {expected[~nan][bad][:5].tolist()}"
    )


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_widening_all_bit_patterns(native, kind):
    src = _all_patterns(HALF[kind])
    dst = torch.full((65536,), 12345.0)
    convert = native.bf16_to_float if kind == "bf16" else native.half_to_float
    convert(src.data_ptr(), dst.data_ptr(), 65536)
    _assert_same_floats(dst, src.float(), f"{kind} -> fp32")


def _edge_floats():
    """Random fp32 bit patterns plus the cases rounding gets wrong: signed zeros, infinities,
    NaNs with payloads, fp32 denormals, exact halfway points (even and odd kept bit) for bf16 and
    fp16, fp16 overflow and subnormal boundaries."""
    gen = torch.Generator().manual_seed(2024)
    random_bits = torch.randint(-2**31, 2**31, (1 << 20,), generator=gen, dtype=torch.int64)
    hi = torch.randint(0, 1 << 16, (4096,), generator=gen, dtype=torch.int64)
    bf16_halfway = (hi << 16) | 0x8000
    bf16_near = torch.cat([bf16_halfway - 1, bf16_halfway + 1])
    hi13 = torch.randint(0, 1 << 19, (4096,), generator=gen, dtype=torch.int64)
    fp16_halfway = (hi13 << 13) | 0x1000
    fp16_near = torch.cat([fp16_halfway - 1, fp16_halfway + 1])
    denormals = torch.cat([torch.arange(1, 4096), torch.randint(1, 0x800000, (4096,), generator=gen)])
    specials = torch.tensor([
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # +-0, +-inf
        0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0x7FFFFFFF, 0xFF800001, 0x7FFF8000, 0x7F808000,
        0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x00800000, 0x807FFFFF,  # bf16 overflow edge
    ], dtype=torch.int64)
    fp16_edges = torch.tensor([
        65504.0, 65519.99, 65520.0, 65536.0, 1e5, -65520.0, 6.1035156e-05, 6.0975552e-05,
        2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -25, 2.0 ** -26, 1.5 * 2.0 ** -24, 2.5 * 2.0 ** -24, 1e-8, -2.0 ** -25,
    ]).view(torch.int32).long()
    bits = torch.cat([random_bits, bf16_halfway, bf16_near, fp16_halfway, fp16_near, denormals,
                      -denormals, specials, fp16_edges, fp16_edges | (1 << 31)])
    bits = torch.where(bits >= 2**31, bits - 2**32, bits)
    signed = torch.cat([bits, bits ^ (-2**31)])
    return signed.to(torch.int32).view(torch.float32)


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_narrowing_rounds_to_nearest_even(native, kind):
    src = _edge_floats().contiguous()
    n = src.numel()
    dst = torch.zeros(n, dtype=HALF[kind])
    convert = native.float_to_bf16 if kind == "bf16" else native.float_to_half
    convert(src.data_ptr(), dst.data_ptr(), n)
    _assert_same_floats(dst, src.to(HALF[kind]), f"fp32 -> {kind}")


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_round_trip_of_all_patterns(native, kind):
    """Every non-NaN 16-bit value survives widening then narrowing unchanged."""
    src = _all_patterns(HALF[kind])
    wide = torch.empty(65536)
    back = torch.empty(65536, dtype=HALF[kind])
    widen = native.bf16_to_float if kind == "bf16" else native.half_to_float
    narrow = native.float_to_bf16 if kind == "bf16" else native.float_to_half
    widen(src.data_ptr(), wide.data_ptr(), 65536)
    narrow(wide.data_ptr(), back.data_ptr(), 65536)
    _assert_same_floats(back, src, f"{kind} round trip")
