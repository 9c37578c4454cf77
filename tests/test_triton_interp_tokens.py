"""The Triton token-level kernels (window entropy, masked quantile, top-k, random keys) under the
Triton interpreter on CPU tensors, against the float64 references (``window_entropy_ref``,
``masked_quantile_ref``), the arbitrary-precision ``random_keys_ref`` and ``torch_select.top_k``'s
exact selection (SPEC §6). Triton reads TRITON_INTERPRET when a kernel is decorated, so these tests
run in their own process:
`TRITON_INTERPRET=1 pytest tests/test_triton_interp_tokens.py -m triton_interp`.

The public API routes float64 to the ``torch`` backend (SPEC §2), so float64 is tested on the
kernels themselves, with the calling convention of ``backends/token_kernel.py``."""
import os

import pytest
import torch

import entropy_ops as eo
from entropy_ops import _backends
from entropy_ops import reference as R
from entropy_ops.backends.torch_select import top_k as top_k_torch
from entropy_ops.ops._tokens import row_offsets
from token_common import TOKEN_DTYPES, acc_dtype, check_strided_layouts, make_batch, make_packed

pytestmark = [
    pytest.mark.triton_interp,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 at start-up"),
]
pytest.importorskip("triton")

QS = torch.tensor([0.0, 0.1, 0.5, 0.8, 0.95, 1.0], dtype=torch.float64)
# (window, offset): ARES's, the token itself, a window longer than every sequence, a start past the
# end of every sequence, and an offset past N.
WINDOWS = [(4, 1), (1, 0), (3, 0), (60, 2), (2, 45), (5, 10**6)]
LENGTHS = [5, 0, 1, 17, 0, 9, 2, 30]


def _kernel(op):
    return _backends.get_kernel("triton", op)


def _same(ours, ref):
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=0, atol=0, equal_nan=True)


def _close(ours, ref, dtype):
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol)


# ---- window entropy ------------------------------------------------------------------------------

def _window_case(layout, dtype):
    """``(x [N], mask [N], cu, x_shaped, mask_shaped, cu_seqlens)`` of a [B, T] or packed batch,
    masked entries NaN (a read of one shows)."""
    if layout == "rows":
        x, mask = make_batch(4, 23, dtype, seed=3)
        return x.reshape(-1), mask.reshape(-1), row_offsets(4, 23, "cpu"), x, mask, None
    x, mask, cu = make_packed(LENGTHS, dtype, seed=5)
    x = torch.where(mask, x, float("nan")).to(dtype)
    return x, mask, cu.long(), x, mask, cu


@pytest.mark.parametrize("layout", ["rows", "packed"])
@pytest.mark.parametrize("dtype", TOKEN_DTYPES, ids=str)
def test_window_fwd_bwd_match_reference(dtype, layout):
    x, mask, cu, xs, ms, cu_seqlens = _window_case(layout, dtype)
    g = torch.randn(x.shape[0], dtype=acc_dtype(dtype), generator=torch.Generator().manual_seed(1))
    kernel = _kernel("window_entropy")
    for window, offset in WINDOWS:
        for m in (mask, None):
            xx = x if m is not None else torch.nan_to_num(x, nan=1.5)
            ref_in = xx.detach().double().clone().requires_grad_(True)
            ref = R.window_entropy_ref(ref_in, m, window, offset, cu)
            ref.backward(g.double())
            out = kernel.fwd(xx, m, cu, window, offset)
            assert out.dtype == acc_dtype(dtype) and out.shape == x.shape
            _close(out, ref.detach(), dtype)
            grad = kernel.bwd(g, m, cu, window, offset)
            assert grad.dtype == g.dtype
            _close(grad, ref_in.grad, dtype)
            if m is not None:
                assert (grad[~m] == 0).all(), "masked tokens get exactly zero gradient"


def test_window_public_api_and_autograd():
    x, mask = make_batch(5, 19, torch.float32, seed=7)
    x = torch.nan_to_num(x, nan=2.0).requires_grad_(True)
    with eo.use_backend("triton"):
        out = eo.window_entropy(x, mask, window=4, offset=1)
        out.backward(torch.ones_like(out))
    ref_in = x.detach().double().requires_grad_(True)
    ref = R.window_entropy_ref(ref_in, mask, 4, 1)
    ref.backward(torch.ones_like(ref))
    _close(out.detach(), ref.detach(), torch.float32)
    _close(x.grad, ref_in.grad, torch.float32)


def test_strided_masks_and_offsets_are_read_as_values():
    with eo.use_backend("triton"):
        check_strided_layouts()


def test_unchecked_offsets_never_read_past_the_tokens(monkeypatch):
    """Offsets as CUDA leaves them unchecked (without ENTROPY_OPS_CHECK): past N, or decreasing,
    they are clamped into [0, N] and made non-decreasing before any kernel reads them."""
    from host_sync import gpu_code_paths
    monkeypatch.delenv("ENTROPY_OPS_CHECK", raising=False)
    x, mask, _ = make_packed([5, 3], torch.float32, seed=4)
    big = torch.full((64,), 1e6)  # x is a view into a larger buffer: an overrun would read 1e6
    big[:8] = x
    x = big[:8]
    with eo.use_backend("triton"), gpu_code_paths():
        for bad, good in (([0, 5, 16], [0, 5, 8]), ([0, 6, 2, 10**9], [0, 6, 6, 8])):
            bad, good = torch.tensor(bad), torch.tensor(good)
            assert torch.equal(eo.window_entropy(x, mask, 4, 1, bad), eo.window_entropy(x, mask, 4, 1, good))
            assert torch.equal(eo.masked_quantile(x, mask, 0.8, cu_seqlens=bad).nan_to_num(-1.0),
                               eo.masked_quantile(x, mask, 0.8, cu_seqlens=good).nan_to_num(-1.0))


def test_window_batch_invariance():
    # A sequence's outputs do not depend on the other sequences of the packed batch.
    x, mask, cu = make_packed([40, 7, 33], torch.float32, seed=9)
    kernel = _kernel("window_entropy")
    full = kernel.fwd(x, mask, cu.long(), 6, 1)
    alone = kernel.fwd(x[40:47], mask[40:47], torch.tensor([0, 7]), 6, 1)
    assert torch.equal(full[40:47], alone)


# ---- masked quantile -----------------------------------------------------------------------------

def _special_values(dtype):
    """Ties, signed zeros, infinities and NaN (valid and masked) in one [B, T] batch."""
    x, mask = make_batch(6, 37, torch.float64, seed=11)
    x[2] = torch.tensor([1.0, -0.0, 0.0, 2.0, 2.0, 2.0, -3.0] * 5 + [0.5, 0.5])
    x[3, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -1.0])
    x[4] = 7.0  # every value tied
    mask[2:5] = True
    return x.to(dtype), mask


@pytest.mark.parametrize("dtype", TOKEN_DTYPES, ids=str)
def test_quantile_rows_match_reference(dtype):
    kernel = _kernel("masked_quantile")
    for x, mask in (make_batch(7, 41, dtype, seed=2), _special_values(dtype)):
        cu = row_offsets(x.shape[0], x.shape[1], "cpu")
        for m in (mask, None):
            out = kernel(x.reshape(-1), None if m is None else m.reshape(-1), cu, QS)
            assert out.dtype == torch.float64 and out.shape == (QS.shape[0], x.shape[0])
            _same(out, R.masked_quantile_ref(x, m, QS))
            over_all = kernel(x.reshape(-1), None if m is None else m.reshape(-1), None, QS)
            assert over_all.shape == (QS.shape[0], 1)
            _same(over_all[:, 0], R.masked_quantile_ref(x, m, QS, per_sequence=False))


@pytest.mark.parametrize("dtype", TOKEN_DTYPES, ids=str)
def test_quantile_packed_and_long_sequences(dtype):
    # Sequences longer than one program's block (1024 lanes) and empty ones; over all, more tokens
    # than one histogram program covers (8192).
    x, mask, cu = make_packed([2500, 0, 1, 17, 0, 3100, 9], dtype, seed=4)
    x = torch.where(mask, x, float("nan")).to(dtype)
    kernel = _kernel("masked_quantile")
    out = kernel(x, mask, cu.long(), QS)
    _same(out, R.masked_quantile_ref(x, mask, QS, cu_seqlens=cu))
    assert torch.isnan(out[:, 1]).all() and torch.isnan(out[:, 4]).all(), "empty sequences give NaN"
    big = torch.randn(9000, dtype=torch.float64).to(dtype)
    _same(kernel(big, None, None, QS)[:, 0], R.masked_quantile_ref(big, None, QS, per_sequence=False))


def test_quantile_public_api():
    x, mask = make_batch(5, 30, torch.bfloat16, seed=8)
    with eo.use_backend("triton"):
        out = eo.masked_quantile(x, mask, 0.8)
        peak = eo.peak_entropy_mask(x, mask, 0.8)
        over_all = eo.masked_quantile(x, mask, QS, per_sequence=False)
    _same(out, R.masked_quantile_ref(x, mask, 0.8))
    assert torch.equal(peak, R.peak_entropy_mask_ref(x, mask, 0.8))
    _same(over_all, R.masked_quantile_ref(x, mask, QS, per_sequence=False))


def test_quantile_batch_invariance():
    # A sequence's quantile is the same bits alone and in a batch; over all tokens, the same bits
    # whatever the order of the tokens (integer histogram counts are order-free).
    x, mask, cu = make_packed([300, 57, 1200], torch.float32, seed=12)
    kernel = _kernel("masked_quantile")
    full = kernel(x, mask, cu.long(), QS)
    alone = kernel(x[300:357], mask[300:357], torch.tensor([0, 57]), QS)
    assert torch.equal(full[:, 1], alone[:, 0])
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(kernel(x, mask, None, QS), kernel(x[perm], mask[perm], None, QS))


# ---- top-k selection -----------------------------------------------------------------------------

def _scores(dtype, n, seed):
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.int64:
        return torch.randint(-2**62, 2**62, (n,), generator=gen) // 2**59  # few distinct: ties
    s = (torch.randint(-6, 6, (n,), generator=gen) * 0.25).to(dtype)
    s[::5] = -0.0  # -0.0 and +0.0 are equal
    s[1::11] = float("-inf")
    return s


@pytest.mark.parametrize("dtype", TOKEN_DTYPES + [torch.int64], ids=str)
@pytest.mark.parametrize("n", [1, 60, 1500])
def test_top_k_matches_exact_selection(dtype, n):
    scores = _scores(dtype, n, seed=n)
    eligible = torch.rand(n, generator=torch.Generator().manual_seed(n + 1)) < 0.7
    kernel = _kernel("top_k")
    for k in (0, 1, 2, n // 3, int(eligible.sum()), n, n + 5):
        k_t = torch.tensor([k])
        out = kernel(scores, eligible, k_t)
        assert out.dtype == torch.bool and out.shape == (n,)
        assert torch.equal(out, top_k_torch(scores, eligible, k_t)), k
        assert int(out.sum()) == min(k, int(eligible.sum()))


def test_top_k_nothing_eligible_and_negative_k():
    scores = torch.randn(50)
    kernel = _kernel("top_k")
    assert not kernel(scores, torch.zeros(50, dtype=torch.bool), torch.tensor([3])).any()
    assert not kernel(scores, torch.ones(50, dtype=torch.bool), torch.tensor([-2])).any()
    assert kernel(scores[:0], torch.zeros(0, dtype=torch.bool), torch.tensor([3])).shape == (0,)


def test_ops_compile_fullgraph_on_triton():
    # The custom ops hide the launchers from dynamo: the compiled graph is whole and gives the
    # same bits as eager (forward and the window's backward).
    torch._dynamo.reset()
    x, mask, cu = make_packed([30, 0, 12, 25], torch.float32, seed=13)
    x = x.requires_grad_(True)

    def ops(x, mask, cu):
        w = eo.window_entropy(x, mask, window=4, offset=1, cu_seqlens=cu)
        return (w, eo.masked_quantile(x.detach(), mask, 0.8, cu_seqlens=cu),
                eo.masked_quantile(x.detach(), mask, 0.5, per_sequence=False))

    with eo.use_backend("triton"):
        eager = ops(x, mask, cu)
        compiled = torch.compile(ops, fullgraph=True)(x, mask, cu)
        (grad_e,) = torch.autograd.grad(eager[0].sum(), x)
        (grad_c,) = torch.autograd.grad(compiled[0].sum(), x)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grad_c, grad_e, rtol=0, atol=0)


# ---- random keys ---------------------------------------------------------------------------------

# int64 bit patterns of the seed: 0, 2^62 - 1, near 2^63 from both sides (the negative ones are the
# uint64 seeds 2^63 + 5 and 2^64 - 1), i.e. seeds of the upper half, where wrap-around is common.
KEY_SEEDS = [0, 2**62 - 1, 2**63 - 2, -2**63 + 5, -1]
# Offsets: 0, small, past 2^32, and near the top of int64 / uint64 (first + i, j + 1 wrap).
KEY_FIRSTS = [0, 5, 2**40, 2**63 - 3, -2]


def _keys_ref(seed, first, n):
    """The reference on the uint64 values of the int64 bit patterns."""
    return R.random_keys_ref(seed % 2**64, first % 2**64, n)


@pytest.mark.filterwarnings("error")  # a numpy overflow warning under the interpreter fails
@pytest.mark.parametrize("n", [0, 1, 1000, 1500])  # 1500: one full block of 1024 and a partial one
def test_random_keys_match_reference(n):
    kernel = _kernel("random_keys")
    for seed in KEY_SEEDS:
        for first in KEY_FIRSTS:
            out = kernel(torch.tensor([seed]), torch.tensor([first]), n)
            assert out.dtype == torch.int64 and out.shape == (n,)
            assert torch.equal(out, _keys_ref(seed, first, n)), (seed, first)
            assert ((out >= 0) & (out < 2**62)).all()


def test_random_keys_reference_known_values():
    # SplitMix64 seeded with 0: its first outputs are 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4 (the
    # published test vector of Vigna's splitmix64.c), shifted right by 2 here.
    assert R.random_keys_ref(0, 0, 2).tolist() == [0xE220A8397B1DCDAF >> 2, 0x6E789E6AA1B965F4 >> 2]
    assert torch.equal(_kernel("random_keys")(torch.tensor([0]), torch.tensor([0]), 2), R.random_keys_ref(0, 0, 2))


@pytest.mark.filterwarnings("error")
def test_random_keys_slices_agree():
    # Counter-based: the keys of tokens [first + a, first + n) are the tail of those of [first, first + n).
    kernel = _kernel("random_keys")
    n = 1500
    for seed, first in ((7, 0), (-2**63 + 5, 2**40), (2**62 - 1, 3)):
        s = torch.tensor([seed])
        full = kernel(s, torch.tensor([first]), n)
        for a in (1, 5, 1023, 1024, 1499, 1500):
            assert torch.equal(full[a:], kernel(s, torch.tensor([first + a]), n - a)), (seed, first, a)
    assert not torch.equal(kernel(torch.tensor([1]), torch.tensor([0]), 64), kernel(torch.tensor([2]), torch.tensor([0]), 64))
