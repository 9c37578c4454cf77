"""The native ``cpu`` kernels of the token-level ops beyond the shared op tests (which run on every
CPU backend): batch and thread-count invariance, windows on both sides of the direct / block
switch and far longer than it (vs float64), the blocks split between threads mid-sequence,
quantiles over many entries with heavy ties (the radix selection's buckets), and agreement with
the ``torch`` path to the bit where the contract fixes the arithmetic."""
import contextlib

import pytest
import torch

import entropy_ops as eo
from entropy_ops import reference as R
from token_common import TOKEN_DTYPES, acc_dtype, make_packed


@pytest.fixture(autouse=True)
def _cpu_backend():
    with eo.use_backend("cpu"):
        yield


@contextlib.contextmanager
def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _window_ref64(x, mask, cu, window, offset):
    """float64 window means from the formula by float64 prefix sums (rounding ~1e-16 relative,
    far below the fp32 outputs' own): the loop reference ``R.window_entropy_ref`` at scale."""
    x = x.double()
    valid = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
    v = torch.where(valid, x, 0)
    out = torch.zeros_like(x)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        sums = torch.nn.functional.pad(v[s:e].cumsum(0), (1, 0))
        counts = torch.nn.functional.pad(valid[s:e].long().cumsum(0), (1, 0))
        lo = (torch.arange(e - s) + offset).clamp(max=e - s)
        hi = (lo + window).clamp(max=e - s)
        n = counts[hi] - counts[lo]
        out[s:e] = torch.where(n > 0, (sums[hi] - sums[lo]) / n.clamp(min=1), 0)
    return out


def test_window_ref64_is_the_reference():
    x, mask, cu = make_packed([9, 0, 30, 4], torch.float64, seed=1)
    for window, offset in ((4, 1), (17, 0), (50, 3)):
        torch.testing.assert_close(_window_ref64(x, mask, cu, window, offset),
                                   R.window_entropy_ref(x, mask, window, offset, cu), rtol=0, atol=1e-13)


@pytest.mark.parametrize("window", [1, 4, 16, 17, 33, 1000, 5000])
@pytest.mark.parametrize("dtype", TOKEN_DTYPES, ids=str)
def test_windows_around_and_past_the_block_switch(dtype, window):
    # Lengths that are and are not multiples of the window, shorter and longer than it.
    x, mask, cu = make_packed([1, 16, 17, 0, 999, 1000, 1001, 2500, 3333], dtype, seed=window)
    for offset in (0, 1, 7, 1200):
        out = eo.window_entropy(x, mask, window, offset, cu_seqlens=cu)
        ref = _window_ref64(x, mask, cu, window, offset)
        tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out.double(), ref, **tol)


@pytest.mark.parametrize("window", [4, 1000])
def test_window_gradient_at_scale(window):
    x, mask, cu = make_packed([3000, 1, 0, 2048, 777], torch.float32, seed=2)
    g = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(0))
    xg = x.clone().requires_grad_(True)
    (ours,) = torch.autograd.grad(eo.window_entropy(xg, mask, window, 2, cu), xg, g)
    x64 = x.double().requires_grad_(True)
    (ref,) = torch.autograd.grad(_window_ref64(x64, mask, cu, window, 2), x64, g.double())
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-6)
    assert (ours[~mask] == 0).all()


@pytest.mark.parametrize("window", [4, 1000])
def test_long_sequence_split_between_threads(window):
    # One sequence of 2^20 tokens: the threads cut it mid-block; each output still sums its own
    # window (no error growth along the sequence) and no bit depends on the thread count.
    n = 1 << 20
    x = torch.rand(n, generator=torch.Generator().manual_seed(3)) * 6
    mask = torch.rand(n, generator=torch.Generator().manual_seed(4)) < 0.9
    cu = torch.tensor([0, n])
    g = torch.randn(n, generator=torch.Generator().manual_seed(5))
    results = []
    for threads in (1, 2, 3):
        with _threads(threads):
            xg = x.clone().requires_grad_(True)
            out = eo.window_entropy(xg, mask, window, 1, cu)
            results.append((out.detach(), torch.autograd.grad(out, xg, g)[0]))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
    ref = _window_ref64(x, mask, cu, window, 1)
    torch.testing.assert_close(results[0][0].double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window", [4, 300])
def test_window_batch_invariance(window):
    lengths = [700, 0, 1, 5000, 64, 1333]
    x, mask, cu = make_packed(lengths, seed=6)
    g = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(1))
    xg = x.clone().requires_grad_(True)
    out = eo.window_entropy(xg, mask, window, 1, cu)
    (grad,) = torch.autograd.grad(out, xg, g)
    # Each sequence alone, and the batch reversed: the same bits.
    rev = list(range(len(lengths)))[::-1]
    bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    x_rev = torch.cat([x[s:e] for s, e in (bounds[i] for i in rev)])
    m_rev = torch.cat([mask[s:e] for s, e in (bounds[i] for i in rev)])
    g_rev = torch.cat([g[s:e] for s, e in (bounds[i] for i in rev)])
    cu_rev = torch.tensor([0] + [lengths[i] for i in rev]).cumsum(0)
    xr = x_rev.clone().requires_grad_(True)
    out_rev = eo.window_entropy(xr, m_rev, window, 1, cu_rev)
    (grad_rev,) = torch.autograd.grad(out_rev, xr, g_rev)
    for k, i in enumerate(rev):
        s, e = bounds[i]
        rs, re = cu_rev[k].item(), cu_rev[k + 1].item()
        assert torch.equal(out[s:e], out_rev[rs:re]) and torch.equal(grad[s:e], grad_rev[rs:re])
        xs = x[s:e].clone().requires_grad_(True)
        alone = eo.window_entropy(xs, mask[s:e], window, 1, torch.tensor([0, e - s]))
        assert torch.equal(out[s:e], alone)
        assert torch.equal(grad[s:e], torch.autograd.grad(alone, xs, g[s:e])[0])


def test_window_small_windows_match_the_torch_path():
    # Windows of <= 16 add their terms in order, as the torch path's shifted slices do: the same
    # bits forward and backward.
    x, mask, cu = make_packed([50, 3, 0, 2000], seed=7)
    g = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(2))
    for window, offset in ((4, 1), (16, 0), (2, 5), (9, 1500)):
        results = []
        for backend in ("cpu", "torch"):
            with eo.use_backend(backend):
                xg = x.clone().requires_grad_(True)
                out = eo.window_entropy(xg, mask, window, offset, cu)
                results.append((out.detach(), torch.autograd.grad(out, xg, g)[0]))
        assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", TOKEN_DTYPES, ids=str)
@pytest.mark.parametrize("ties", [False, True])
def test_quantile_over_many_entries(dtype, ties):
    # 300k entries: two chunks of the radix selection; with ties, ranks fall inside one bucket
    # and on the boundaries between buckets.
    n = 300_000
    gen = torch.Generator().manual_seed(8)
    x = torch.randint(-3, 4, (n,), generator=gen).double() if ties else torch.randn(n, generator=gen, dtype=torch.float64)
    x = x.to(dtype)
    x[:50] = -0.0
    mask = torch.rand(n, generator=gen) < 0.8
    q = torch.tensor([0.0, 1e-6, 0.25, 0.5, 0.8, 0.999999, 1.0], dtype=torch.float64)
    cu = torch.tensor([0, 1000, 1000, 200_000, n])
    for threads in (1, 2):
        with _threads(threads):
            over_all = eo.masked_quantile(x, mask, q, per_sequence=False)
            per_seq = eo.masked_quantile(x, mask, q, cu_seqlens=cu)
        torch.testing.assert_close(over_all, R.masked_quantile_ref(x, mask, q, False).to(acc_dtype(dtype)),
                                   rtol=0, atol=0)
        torch.testing.assert_close(per_seq, R.masked_quantile_ref(x, mask, q, cu_seqlens=cu).to(acc_dtype(dtype)),
                                   rtol=0, atol=0, equal_nan=True)


def test_quantile_matches_the_torch_path_to_the_bit():
    x, mask, cu = make_packed([0, 1, 2, 3, 40, 4097, 10], torch.float64, seed=9)
    q = torch.linspace(0, 1, 23, dtype=torch.float64)
    for per_sequence in (True, False):
        cpu = eo.masked_quantile(x, mask, q, per_sequence, cu)
        with eo.use_backend("torch"):
            torch.testing.assert_close(cpu, eo.masked_quantile(x, mask, q, per_sequence, cu),
                                       rtol=0, atol=0, equal_nan=True)


def test_quantile_batch_invariance():
    x, mask, cu = make_packed([5000, 7, 0, 20_000, 300], seed=10)
    whole = eo.masked_quantile(x, mask, 0.8, cu_seqlens=cu)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        alone = eo.masked_quantile(x[s:e], mask[s:e], 0.8, cu_seqlens=torch.tensor([0, e - s]))
        torch.testing.assert_close(whole[i:i + 1], alone, rtol=0, atol=0, equal_nan=True)


# ---- top-k on shapes of data that force the selection's refinement rounds -------------------------

def _top_k_by_stable_sort(scores, eligible, k):
    """The ``k`` eligible entries of largest score, ties to the lowest index (-0.0 == +0.0)."""
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    index = torch.nonzero(eligible).flatten()
    values = scores[index] if scores.dtype == torch.int64 else scores[index].double() + 0.0
    out[index[torch.argsort(-values, stable=True)[:max(k, 0)]]] = True
    return out


_SELECTION_DATA = {
    "normal": lambda g, n: torch.randn(n, generator=g, dtype=torch.float64),
    "few_values": lambda g, n: torch.randint(-3, 4, (n,), generator=g).double(),
    # every value in one octave: the top key bits are all equal, so the crossing bucket holds
    # everything and the selection must narrow it over further digit rounds
    "narrow": lambda g, n: 1 + torch.rand(n, generator=g, dtype=torch.float64) * 1e-3,
    "signed_zeros": lambda g, n: torch.where(torch.rand(n, generator=g) < 0.5, -0.0, 0.0).double()
    + (torch.rand(n, generator=g) < 0.01).double(),
    "constant": lambda g, n: torch.full((n,), 2.5, dtype=torch.float64),
}


@pytest.mark.parametrize("data", list(_SELECTION_DATA))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64], ids=str)
def test_top_k_on_narrow_tied_and_constant_data(data, dtype):
    from entropy_ops.backends.cpu_tokens import top_k_cpu
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x = _SELECTION_DATA[data](g, n)
    scores = (x * 1000).round().long() if dtype == torch.int64 else x.to(dtype)
    eligible = torch.rand(n, generator=g) < 0.85
    m = int(eligible.sum())
    for k in (0, 1, 589, 100_000, m - 1, m + 5):
        want = _top_k_by_stable_sort(scores, eligible, k)
        for threads in (1, 2):
            with _threads(threads):
                assert torch.equal(top_k_cpu(scores, eligible, torch.tensor([k])), want), (k, threads)
