"""SPEC §2 batch invariance of the ``cpu`` backend: a row's bits (outputs and gradient row) do not
depend on N, on its position in the batch, on the other rows, or on the thread count."""
import pytest
import torch

import entropy_ops as eo
from conftest import assert_within_eager_bound, eager_logprobs_and_entropy, skip_unless_available
from entropy_ops.reference import logprobs_and_entropy_ref


@pytest.fixture
def cpu_backend():
    skip_unless_available("cpu")
    with eo.use_backend("cpu"):
        yield


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _row_results(x, y, g_logp, g_h):
    """Outputs and gradient of every row, for upstream gradients ``g_logp``, ``g_h`` per row."""
    x = x.detach().clone().requires_grad_(True)
    logp, h = eo.logprobs_and_entropy(x, y, 0.9)
    h_only = eo.entropy(x.detach(), 0.9)
    torch.autograd.backward((logp, h), (g_logp, g_h))
    return logp.detach(), h.detach(), h_only, x.grad


@pytest.mark.parametrize("vocab", [1, 37, 1023, 4096, 32000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_row_bits_independent_of_batch_and_threads(cpu_backend, restore_threads, dtype, vocab):
    gen = torch.Generator().manual_seed(vocab)
    row = (torch.randn(1, vocab, generator=gen) * 3).to(dtype)
    label = torch.randint(vocab, (1,), generator=gen)
    g = (torch.tensor([0.75]), torch.tensor([-1.25]))
    alone = _row_results(row, label, *g)
    ref_logp, ref_h = logprobs_and_entropy_ref(row, label, 0.9)
    eager_logp, eager_h = eager_logprobs_and_entropy(row, label, 0.9)
    assert_within_eager_bound(alone[0], ref_logp, eager_logp, what="logp")
    assert_within_eager_bound(alone[1], ref_h, eager_h, what="entropy")

    n = 64 if vocab <= 4096 else 16
    for trial, threads in enumerate([2, 1, 2]):
        torch.set_num_threads(threads)
        pos = int(torch.randint(n, (1,), generator=gen))
        batch = (torch.randn(n, vocab, generator=gen) * (1 + trial)).to(dtype)
        batch[pos] = row[0]
        labels = torch.randint(vocab, (n,), generator=gen)
        labels[pos] = label[0]
        g_logp, g_h = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        g_logp[pos], g_h[pos] = g[0][0], g[1][0]
        got = _row_results(batch, labels, g_logp, g_h)
        for name, a, b in zip(("logp", "entropy", "entropy op", "grad"), alone, got):
            assert torch.equal(a[0], b[pos]), f"{name}: row at position {pos} of {n} ({threads} threads) differs from the row alone"


def test_single_thread_matches_two_threads(cpu_backend, restore_threads):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(257, 3000, generator=gen).bfloat16()
    y = torch.randint(3000, (257,), generator=gen)
    g = (torch.randn(257, generator=gen), torch.randn(257, generator=gen))
    torch.set_num_threads(1)
    one = _row_results(x, y, *g)
    torch.set_num_threads(2)
    two = _row_results(x, y, *g)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("flush_before_pool", [False, True])
def test_flush_denormal_applies_to_every_worker(cpu_backend, restore_threads, flush_before_pool):
    """``torch.set_flush_denormal`` sets the calling thread's FTZ/DAZ; the pool's workers take the
    caller's mode with each job, so identical rows keep identical bits (their gradients here are
    denormal, flushed or not alike) whichever thread computes them."""
    torch.set_num_threads(2)
    row = torch.full((4096,), -86.0)
    row[0] = 0.0
    x = row.repeat(64, 1)

    def grad_bits():
        xi = x.clone().requires_grad_(True)
        (eo.entropy(xi) * 1e-6).sum().backward()
        return xi.grad.view(torch.int32)

    if not torch.set_flush_denormal(flush_before_pool):
        pytest.skip("this CPU cannot flush denormals")
    try:
        grad_bits()  # the pool's threads exist from here on, started in this mode
        torch.set_flush_denormal(not flush_before_pool)
        bits = grad_bits()
    finally:
        torch.set_flush_denormal(False)
    assert (bits == bits[0]).all(), "a row's gradient bits depend on the worker that computed it"
    assert (bits[:, 1] != 0).all() == flush_before_pool  # denormal kept unless flushed
