"""``window_entropy`` (SPEC §3.2) vs the float64 loop reference: [B, T] rows and packed sequences
(agreeing with each other), every dtype, windows shorter and longer than the sequences, offset 0
and past the end, all-masked rows, single valid tokens, empty sequences, NaN padding, gradients
(gradcheck in float64), precision on long sequences, opcheck, ``torch.compile`` and bad
arguments."""
import pytest
import torch

import entropy_ops as eo
from entropy_ops import reference as R
from token_common import (TOKEN_BACKENDS, TOKEN_DTYPES, acc_dtype, check_strided_layouts, make_batch, make_packed,
                          prefix_mask, rows_as_packed)

WINDOWS = [(4, 1), (1, 0), (3, 0), (7, 2), (50, 1), (2, 40), (2**62, 0)]


def _tol(dtype):
    # Each window is a pairwise sum of <= window terms in the accumulation dtype, then a division.
    return dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)


@pytest.fixture(autouse=True, params=TOKEN_BACKENDS)
def backend(request):
    """Every test runs on each CPU backend."""
    with eo.use_backend(request.param):
        yield request.param


@pytest.mark.parametrize("window, offset", WINDOWS)
@pytest.mark.parametrize("dtype", TOKEN_DTYPES, ids=str)
def test_rows_match_reference(dtype, window, offset):
    x, mask = make_batch(6, 33, dtype, seed=window + offset)
    out = eo.window_entropy(x, mask, window, offset)
    assert out.dtype == acc_dtype(dtype) and out.shape == x.shape
    torch.testing.assert_close(out.double(), R.window_entropy_ref(x, mask, window, offset), **_tol(dtype))


@pytest.mark.parametrize("window, offset", WINDOWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_packed_matches_reference(dtype, window, offset):
    x, mask, cu = make_packed([5, 0, 1, 17, 0, 9, 2], dtype, seed=3)
    out = eo.window_entropy(x, mask, window, offset, cu_seqlens=cu)
    torch.testing.assert_close(out.double(), R.window_entropy_ref(x, mask, window, offset, cu), **_tol(dtype))
    unmasked = eo.window_entropy(x, None, window, offset, cu_seqlens=cu.long())
    torch.testing.assert_close(unmasked.double(), R.window_entropy_ref(x, None, window, offset, cu), **_tol(dtype))


def test_no_mask_matches_reference():
    x, _ = make_batch(4, 20, nan_padding=False)
    torch.testing.assert_close(eo.window_entropy(x).double(), R.window_entropy_ref(x), **_tol(torch.float32))


@pytest.mark.parametrize("window, offset", [(4, 1), (3, 0), (64, 2)])
def test_rows_and_packed_agree(window, offset):
    x, mask = make_batch(5, 24, seed=8)
    lengths = [24] * 5
    xp, mp, cu = rows_as_packed(x, mask, lengths)
    rows = eo.window_entropy(x, mask, window, offset)
    packed = eo.window_entropy(xp, mp, window, offset, cu_seqlens=cu)
    assert torch.equal(rows.reshape(-1), packed), "full rows are the same tokens as packed sequences"
    # Right-padded rows (mask = the first L_b tokens) are variable-length sequences: the padding is
    # never read, so the valid positions agree with the packed sequences of lengths L_b.
    lengths = [24, 0, 1, 13, 7]
    xv, _ = make_batch(5, 24, seed=9, p_valid=1.0, nan_padding=False)
    pmask = prefix_mask(24, lengths)
    xv = torch.where(pmask, xv, float("nan"))
    xp, _, cu = rows_as_packed(xv, pmask, lengths)
    rows = eo.window_entropy(xv, pmask, window, offset)
    packed = eo.window_entropy(xp, None, window, offset, cu_seqlens=cu)
    torch.testing.assert_close(rows[pmask], packed, rtol=0, atol=1e-6)


def test_edge_cases():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    none = torch.zeros(1, 5, dtype=torch.bool)
    assert torch.equal(eo.window_entropy(x, none), torch.zeros(1, 5)), "all-masked row gives zeros"
    one = torch.tensor([[False, False, True, False, False]])
    # Only token 2 is valid: positions whose window [t+1, t+5) holds it get its value, others 0.
    assert torch.equal(eo.window_entropy(x, one, 4, 1), torch.tensor([[3.0, 3.0, 0.0, 0.0, 0.0]]))
    # offset 0, window 1: the token itself where valid, 0 where masked.
    assert torch.equal(eo.window_entropy(x, one, 1, 0), torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0]]))
    # A window longer than the sequence is truncated at its end.
    assert torch.equal(eo.window_entropy(x, None, 100, 0), torch.tensor([[3.0, 3.5, 4.0, 4.5, 5.0]]))
    # ARES's default: the last token of a sequence has nothing after it.
    assert torch.equal(eo.window_entropy(x), torch.tensor([[3.5, 4.0, 4.5, 5.0, 0.0]]))
    # An offset past the end leaves every window empty.
    assert torch.equal(eo.window_entropy(x, None, 4, 5), torch.zeros(1, 5))
    # Windows never cross into the next packed sequence.
    cu = torch.tensor([0, 2, 2, 5])
    assert torch.equal(eo.window_entropy(x[0], None, 4, 1, cu), torch.tensor([2.0, 0.0, 4.5, 5.0, 0.0]))


@pytest.mark.parametrize("shape, cu", [((0, 7), None), ((3, 0), None), ((0,), [0]), ((0,), [0, 0, 0])])
def test_empty(shape, cu):
    x = torch.empty(shape)
    cu = None if cu is None else torch.tensor(cu)
    xg = x.clone().requires_grad_(True)
    out = eo.window_entropy(xg, None, 4, 1, cu)
    assert out.shape == x.shape
    out.sum().backward()
    assert xg.grad.shape == x.shape


def test_non_contiguous_inputs():
    x, mask = make_batch(24, 6, seed=13)
    xt, mt = x.t(), mask.t()  # [6, 24] views with strides (1, 6)
    assert torch.equal(eo.window_entropy(xt, mt), eo.window_entropy(xt.contiguous(), mt.contiguous()))
    xs, ms = x.reshape(-1)[::2], mask.reshape(-1)[::2]  # strided packed tokens
    cu = torch.tensor([0, 30, 72])
    assert torch.equal(eo.window_entropy(xs, ms, 3, 1, cu), eo.window_entropy(xs.contiguous(), ms, 3, 1, cu))
    # A stride-0 upstream gradient (from .sum()) and a transposed one.
    xg = xt.clone().requires_grad_(True)
    eo.window_entropy(xg, mt).sum().backward()
    assert torch.equal(xg.grad, torch.autograd.grad(eo.window_entropy(xg, mt), xg, torch.ones(6, 24))[0])
    g_t = torch.rand(24, 6).t()
    (g1,) = torch.autograd.grad(eo.window_entropy(xg, mt), xg, g_t)
    (g2,) = torch.autograd.grad(eo.window_entropy(xg, mt), xg, g_t.contiguous())
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("backend", TOKEN_BACKENDS)
def test_strided_masks_and_offsets_on_every_backend(backend):
    """Strided and expanded masks, strided offsets, with window_entropy and masked_quantile."""
    with eo.use_backend(backend):
        check_strided_layouts()


def test_masked_nan_never_leaks():
    x, mask = make_batch(4, 30, seed=5)  # NaN at every masked token
    xg = x.clone().requires_grad_(True)
    out = eo.window_entropy(xg, mask, 4, 1)
    assert not torch.isnan(out).any()
    out.sum().backward()
    assert not torch.isnan(xg.grad).any() and (xg.grad[~mask] == 0).all()


@pytest.mark.parametrize("window", [4, 17, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_infinite_value_gives_infinite_mean(dtype, window):
    # A window holding one +inf (or -inf) averages to +inf (-inf), never NaN; windows without it
    # stay finite. (The cpu kernel's compensated block sums of windows over 16 made every partial
    # sum after an inf NaN: c = inf - inf.)
    for value in (float("inf"), float("-inf")):
        x = torch.rand(2, 48, dtype=dtype, generator=torch.Generator().manual_seed(3))
        x[0, 30] = value
        x[1, 5] = value
        out = eo.window_entropy(x, None, window, 0)
        ref = R.window_entropy_ref(x, None, window, 0)
        assert not out.isnan().any()
        torch.testing.assert_close(out.double(), ref, **_tol(dtype))


@pytest.mark.parametrize("layout", ["rows", "packed"])
@pytest.mark.parametrize("window, offset", [(4, 1), (3, 0), (9, 2)])
def test_gradcheck_float64(layout, window, offset):
    if layout == "rows":
        x, mask = make_batch(3, 11, torch.float64, seed=1, nan_padding=False)
        cu = None
    else:
        x, mask, cu = make_packed([4, 0, 9, 1, 6], torch.float64, seed=2)
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: eo.window_entropy(t, mask, window, offset, cu), (xg,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_gradient_matches_reference(dtype):
    x, mask, cu = make_packed([7, 0, 13, 3], dtype, seed=4)
    g_out = torch.randn(x.shape[0], dtype=acc_dtype(dtype), generator=torch.Generator().manual_seed(0))
    xg = x.clone().requires_grad_(True)
    (ours,) = torch.autograd.grad(eo.window_entropy(xg, mask, 4, 1, cu), xg, g_out)
    assert ours.dtype == dtype
    x64 = x.double().requires_grad_(True)
    (ref,) = torch.autograd.grad(R.window_entropy_ref(x64, mask, 4, 1, cu), x64, g_out.double())
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-2, atol=1e-2) \
        if dtype == torch.bfloat16 else dict(rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(ours.double(), ref, **tol)
    assert (ours[~mask] == 0).all()


def test_long_sequence_keeps_precision():
    # One packed sequence of 2^21 tokens: a prefix-sum difference in fp32 would lose ~0.1 here
    # (the prefix reaches ~6e6); each window summed on its own stays at fp32 rounding.
    n = 1 << 21
    x = torch.rand(n, generator=torch.Generator().manual_seed(6)) * 6
    cu = torch.tensor([0, n])
    out = eo.window_entropy(x, None, 4, 1, cu)
    x64 = torch.cat([x.double(), torch.zeros(5, dtype=torch.float64)])
    ref = sum(x64[1 + i:1 + i + n] for i in range(4)) / 4
    ref[-4:] = torch.tensor([x64[n - 3:n].mean(), x64[n - 2:n].mean(), x64[n - 1], 0.0])
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("variant", ["rows", "rows_mask", "packed_mask", "float64", "bfloat16"])
def test_opcheck(variant, backend):
    gen = torch.Generator().manual_seed(3)
    cu, mask, dtype = None, None, torch.float32
    if variant in ("rows", "rows_mask", "float64", "bfloat16"):
        x = torch.rand(3, 10, generator=gen)
        mask = torch.rand(3, 10, generator=gen) > 0.3 if variant != "rows" else None
        dtype = {"float64": torch.float64, "bfloat16": torch.bfloat16}.get(variant, torch.float32)
    else:
        x = torch.rand(20, generator=gen)
        mask = torch.rand(20, generator=gen) > 0.3
        cu = torch.tensor([0, 6, 6, 15, 20], dtype=torch.int32)
    x = x.to(dtype).requires_grad_(True)
    torch.library.opcheck(torch.ops.entropy_ops.window_entropy.default, (x, mask, cu, 4, 1, backend))
    g = torch.rand(x.shape, generator=gen).to(acc_dtype(dtype))
    torch.library.opcheck(torch.ops.entropy_ops.window_entropy_bwd.default, (g, mask, cu, 3, 0, backend))


def test_compile_fullgraph():
    torch._dynamo.reset()
    x, mask = make_batch(4, 21, seed=11)
    xp, mp, cu = make_packed([6, 0, 11, 4], seed=12)

    def fn(x, mask, xp, mp, cu):
        return eo.window_entropy(x, mask), eo.window_entropy(xp, mp, 3, 0, cu)

    compiled = torch.compile(fn, fullgraph=True)
    # The second call has new shapes (a dynamic-shape recompilation).
    for (x, mask), (xp, mp, cu) in (((x, mask), (xp, mp, cu)),
                                    (make_batch(3, 30, seed=13), make_packed([9, 2, 0, 5, 14], seed=14))):
        xg, xpg = x.clone().requires_grad_(True), xp.clone().requires_grad_(True)
        c = compiled(xg, mask, xpg, mp, cu)
        e = fn(xg, mask, xpg, mp, cu)
        for a, b in zip(c, e):
            assert torch.equal(a, b)
        grads_c = torch.autograd.grad(sum(o.sum() for o in c), (xg, xpg))
        grads_e = torch.autograd.grad(sum(o.sum() for o in e), (xg, xpg))
        assert all(torch.equal(a, b) for a, b in zip(grads_c, grads_e))


@pytest.mark.parametrize("window, offset", [(33, 1), (40, 3), (64, 0)])
def test_gradient_of_long_windows_matches_reference(window, offset):
    """Windows of more than 32 tokens (the torch backend's doubling blocks, the cpu kernel's block
    sums) in sequences longer than ``window + offset``: each token is read by at most ``window``
    outputs, and by none of another sequence."""
    x, mask, cu = make_packed([150, 0, 70, 3, 41], torch.float64, seed=5)
    g_out = torch.randn(x.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xg = x.clone().requires_grad_(True)
    (ours,) = torch.autograd.grad(eo.window_entropy(xg, mask, window, offset, cu), xg, g_out)
    x64 = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(R.window_entropy_ref(x64, mask, window, offset, cu), x64, g_out)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_double_backward_is_refused():
    # The op is linear: its gradient depends on the upstream gradient only, so that is what a
    # second differentiation would go through.
    x = torch.rand(2, 9, dtype=torch.float64, requires_grad=True)
    v = torch.rand(2, 9, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(eo.window_entropy(x), x, v, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_auto_backend_runs_the_cpu_kernel():
    x, mask = make_batch(3, 12)
    with eo.use_backend("auto"):
        auto = eo.window_entropy(x, mask)
    with eo.use_backend("cpu"):
        assert torch.equal(auto, eo.window_entropy(x, mask))


_X = torch.rand(3, 8)
_CU = torch.tensor([0, 3, 8])


@pytest.mark.parametrize("call, error, name", [
    (lambda: eo.window_entropy(_X, torch.ones(3, 7, dtype=torch.bool)), ValueError, "mask"),
    (lambda: eo.window_entropy(_X, torch.ones(3, 8)), TypeError, "mask"),
    (lambda: eo.window_entropy(_X, torch.ones(3, 8, dtype=torch.bool, device="meta")), ValueError, "mask"),
    (lambda: eo.window_entropy(_X.long()), TypeError, "entropy"),
    (lambda: eo.window_entropy(_X.tolist()), TypeError, "entropy"),
    (lambda: eo.window_entropy(_X[0]), ValueError, "entropy"),
    (lambda: eo.window_entropy(_X[None]), ValueError, "entropy"),
    (lambda: eo.window_entropy(_X, window=0), ValueError, "window"),
    (lambda: eo.window_entropy(_X, window=2.0), TypeError, "window"),
    (lambda: eo.window_entropy(_X, offset=-1), ValueError, "offset"),
    (lambda: eo.window_entropy(_X, offset=True), TypeError, "offset"),
    (lambda: eo.window_entropy(_X, cu_seqlens=_CU), ValueError, "entropy"),
    (lambda: eo.window_entropy(_X[0], cu_seqlens=_CU.float()), TypeError, "cu_seqlens"),
    (lambda: eo.window_entropy(_X[0], cu_seqlens=_CU[None]), ValueError, "cu_seqlens"),
    (lambda: eo.window_entropy(_X[0], cu_seqlens=_CU[:0]), ValueError, "cu_seqlens"),
    (lambda: eo.window_entropy(_X[0], _X > 0, cu_seqlens=_CU), ValueError, "mask"),
    (lambda: eo.window_entropy(_X[0], (_X > 0).reshape(-1)[:7], cu_seqlens=_CU), ValueError, "mask"),
    (lambda: eo.window_entropy(_X[0], cu_seqlens=torch.tensor([1, 3, 8])), ValueError, "cu_seqlens"),
    (lambda: eo.window_entropy(_X[0], cu_seqlens=torch.tensor([0, 3, 7])), ValueError, "cu_seqlens"),
    (lambda: eo.window_entropy(_X[0], cu_seqlens=torch.tensor([0, 5, 3, 8])), ValueError, "cu_seqlens"),
])
def test_bad_arguments_name_themselves(call, error, name):
    with pytest.raises(error, match=f"^{name}:"):
        call()
