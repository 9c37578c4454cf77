"""Clip-Cov's counter-based random keys (``backends/token_kernel.py``, "Random keys"): the float64-free
reference against SplitMix64's published outputs, the ``torch`` and ``cpu`` kernels against the
reference (seeds across all 64 bits, offsets past 2^32, empty and multi-thread sizes), slices of the
stream, thread-count invariance, the custom op under ``opcheck`` and ``torch.compile``, and the
spread of the bits. The Triton kernel is tested under the interpreter
(``test_triton_interp_tokens.py``), the GPU ones under ``-m gpu``."""
import pytest
import torch

from entropy_ops import reference as R
from entropy_ops.ops.random_keys import KEY_HIGH, random_keys

BACKENDS = ["torch", "cpu"]
# int64 seeds; a negative one is the upper half of the uint64 seeds (the same 64 bits).
SEEDS = [0, 1234567, KEY_HIGH - 1, -1, -(2**63)]


def _keys(backend, seed, first, n):
    return random_keys(torch.tensor([seed]), torch.tensor([first]), (n,), backend)


def test_reference_is_splitmix64():
    # The first outputs of SplitMix64 seeded with 1234567, as published with the generator's
    # reference C code (Vigna's splitmix64.c test vector), shifted to 62 bits.
    published = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
                 16408922859458223821]
    assert R.random_keys_ref(1234567, 0, 5).tolist() == [v >> 2 for v in published]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("first", [0, 5, 2**40 + 3])
def test_kernels_match_reference(backend, seed, first):
    for n in (0, 1, 1000, 70001):  # 70001: several CPU workers, an odd tail
        got = _keys(backend, seed, first, n)
        assert got.dtype == torch.int64 and got.shape == (n,)
        assert torch.equal(got, R.random_keys_ref(seed % 2**64, first, n)), (n, seed, first)


@pytest.mark.parametrize("backend", BACKENDS)
def test_slices_of_the_stream(backend):
    # A rank holding tokens [first + a, first + n) draws exactly that slice of the whole batch's keys.
    whole = _keys(backend, 99, 7, 300_000)
    for a in (1, 65_536, 123_457):
        assert torch.equal(_keys(backend, 99, 7 + a, 300_000 - a), whole[a:])


def test_cpu_keys_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _keys("cpu", 5, 0, 1 << 20)
        torch.set_num_threads(2)
        two = _keys("cpu", 5, 0, 1 << 20)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_keys_are_spread_over_62_bits():
    keys = _keys("cpu", 2024, 0, 1 << 16)
    assert keys.min() >= 0 and keys.max() < KEY_HIGH
    assert keys.unique().numel() == keys.numel()  # 2^16 draws of 62 bits: a collision has p ~ 5e-10
    # Each of the 62 bits is set in half of the keys: Binomial(65536, 1/2) has sd 128; 6 sd bound.
    bits = torch.stack([(keys >> b) & 1 for b in range(62)]).sum(1)
    assert ((bits - (1 << 15)).abs() < 6 * 128).all(), bits
    # Neighbouring counters give unrelated keys: their top bits agree half of the time.
    agree = ((keys[1:] >> 61) == (keys[:-1] >> 61)).double().mean()
    assert abs(float(agree) - 0.5) < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_compile(backend):
    seed, first = torch.tensor([-77]), torch.tensor([12])
    torch.library.opcheck(torch.ops.entropy_ops.random_keys.default, (seed, first, 40, backend))
    torch._dynamo.reset()
    fn = torch.compile(lambda s, f: random_keys(s, f, (3, 50), backend) + 0, fullgraph=True)
    assert torch.equal(fn(seed, first), R.random_keys_ref(2**64 - 77, 12, 150).view(3, 50))


def test_torch_path_compiled_by_inductor_keeps_the_wrap_around():
    # Inductor fuses the int64 arithmetic of the torch kernel into one loop: its products must
    # still wrap modulo 2^64 as eager's do.
    from entropy_ops.backends.torch_tokens import random_keys_torch
    torch._dynamo.reset()
    fn = torch.compile(lambda s, f: random_keys_torch(s, f, 4096), fullgraph=True)
    seed, first = torch.tensor([-(2**62) - 12345]), torch.tensor([2**50])
    assert torch.equal(fn(seed, first), R.random_keys_ref(seed.item() % 2**64, 2**50, 4096))
