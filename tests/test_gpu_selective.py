"""GPU tests of the selective row ops (top-p, min-p) and token_stats on every GPU backend (DEVICE,
"triton"): vs the float64 references (SPEC §3.1), exact ties, gradients, forward/backward/mask
agreement, masked / bad / shifted rows, unaligned rows, batch invariance, N = 0 and N = 70000 (3000 emulated),
no host sync, CUDA graph capture.

Random rows are compared with the sort-based references only where the cut is not decided by
rounding (``selective_common``); ties are built exactly. Comparisons run on CPU copies.
"""
import math
import os

import pytest
import torch

import entropy_ops as eo
from conftest import (
    FINITE_KINDS, NAN_KINDS, assert_within_eager_bound, eager_grad, make_labels, make_rows,
    ours_grad, reference_grad, skip_unless_available,
)
from entropy_ops import _backends
from entropy_ops import reference as R
from gpu_common import (  # noqa: F401 (pytestmark: the gpu marks)
    BIG_BATCH, DEVICE, GPU_BACKENDS, GPU_DTYPES, MANY_ROWS, VOCABS, assert_same_bits, needs_real_gpu, pytestmark, sync_debug_error,
)
from selective_common import (
    all_outputs, check_lse_of_shifted_rows, check_min_p_bad_rows_have_a_nan_gradient,
    check_self_certainty_of_many_equal_logits, clear_of_min_p_cut, clear_of_top_p_cut, eager_min_p_logprobs,
    eager_top_p_entropy, masked_bad_shifted_rows, with_clear_cuts, within,
)
from test_token_stats import eager_token_stats

SELECTIVE_OPS = ("top_p_entropy", "top_p_mask", "min_p_logprobs", "token_stats")
TOP_PS = (1e-6, 0.5, 0.999, 1.0)


@pytest.fixture(params=GPU_BACKENDS)
def sel_backend(request, monkeypatch):
    """Runs the test on one GPU backend, skipped (with the reason) where it cannot run the ops;
    checks that dispatch really routes there, so a test never passes on the torch fallback."""
    name = request.param
    skip_unless_available(name)
    if name == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("GPU tests run compiled Triton kernels; unset TRITON_INTERPRET")
    missing = [op for op in SELECTIVE_OPS if op not in _backends.registered_backends()[name].kernels]
    if missing:
        pytest.skip(f"{name}: no kernel for {missing} yet")
    monkeypatch.delenv("ENTROPY_OPS_CHECK", raising=False)
    with eo.use_backend(name):
        for op in SELECTIVE_OPS:
            assert _backends.resolve(op, torch.device(DEVICE), torch.bfloat16) == name
        yield name


def _rows(n_rows, vocab, dtype, seed):
    kinds = FINITE_KINDS + NAN_KINDS if vocab > 2 else ()
    x, row_kinds = make_rows(n_rows, vocab, dtype, kinds=kinds, seed=seed)
    return with_clear_cuts(x, row_kinds, seed), row_kinds


def _temperature(n, seed):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.5


def _cpu(t):
    return None if t is None else t.detach().cpu()


# ---- forward vs reference -------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_top_p_matches_reference(sel_backend, dtype, vocab):
    n = 14 if vocab < 32000 else 10
    x, _ = _rows(n, vocab, dtype, seed=vocab)
    t = _temperature(n, 1)
    xd, td = x.to(DEVICE), t.to(DEVICE)
    for top_p in TOP_PS:
        clear = clear_of_top_p_cut(x, top_p, t)
        ref_h = R.top_p_entropy_ref(x, top_p, t)
        h = _cpu(eo.top_p_entropy(xd, top_p, td))
        assert h.dtype == torch.float32 and h.shape == (n,)
        within(h[clear], ref_h[clear], eager_top_p_entropy(x, top_p, t)[clear])
        assert torch.equal(torch.isnan(h), torch.isnan(ref_h)), f"top_p={top_p}: NaN rows"
        for inclusive in (False, True):
            m = _cpu(eo.top_p_mask(xd, top_p, td, inclusive=inclusive))
            ref_m = R.top_p_mask_ref(x, top_p, t, inclusive=inclusive)
            assert torch.equal(m[clear], ref_m[clear]), f"top_p={top_p} inclusive={inclusive}"
            assert not m[torch.isnan(ref_h)].any(), "bad rows must give an all-False mask row"
            assert m[~torch.isnan(ref_h)].any(-1).all(), "a nucleus keeps at least one token"


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_min_p_and_token_stats_match_reference(sel_backend, dtype, vocab):
    n = 12 if vocab < 32000 else 8
    kinds = FINITE_KINDS + NAN_KINDS if vocab > 2 else ()
    x, row_kinds = make_rows(n, vocab, dtype, kinds=kinds, seed=vocab + 5)
    for label_dtype in (torch.int64, torch.int32):
        y = make_labels(n, vocab, label_dtype, seed=vocab)
        t = _temperature(n, 3)
        xd, yd, td = x.to(DEVICE), y.to(DEVICE), t.to(DEVICE)
        for min_p in (0.0, 0.05, 1.0):
            clear = clear_of_min_p_cut(x, min_p, t)
            lp = _cpu(eo.min_p_logprobs(xd, yd, min_p, td))
            within(lp[clear], R.min_p_logprobs_ref(x, y, min_p, t)[clear],
                   eager_min_p_logprobs(x, y, min_p, t)[clear])
        for labels in (y, None):
            stats = eo.token_stats(xd, None if labels is None else yd, td)
            ref, eager = R.token_stats_ref(x, labels, t), eager_token_stats(x, labels, t)
            assert (stats.logp is None) == (labels is None)
            for name in stats._fields:
                if getattr(ref, name) is not None:
                    assert_within_eager_bound(_cpu(getattr(stats, name)), getattr(ref, name),
                                              getattr(eager, name), row_kinds or None, what=name)


def test_self_certainty_of_many_equal_logits(sel_backend):
    """Rows where most logits share one value (``selective_common.many_equal_logits_rows``): the
    mean of ``x - max`` free of roundings that every term would repeat."""
    check_self_certainty_of_many_equal_logits(DEVICE)


def test_token_stats_lse_of_shifted_rows(sel_backend):
    """lse = max / T + log S on rows shifted by 1e4 at T = 1.3, rounded once (both GPU backends)."""
    check_lse_of_shifted_rows(DEVICE)


@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_top_p_ties_are_exact(sel_backend, dtype):
    """Equal probabilities decided exactly, the kept ties the first by index, with the ties spread
    over a 151936-token row (the count of earlier ties crosses many tiles of a block)."""
    v = 151936
    gen = torch.Generator().manual_seed(0)
    x = torch.full((2, v), float("-inf"))
    pos = [torch.randperm(v, generator=gen)[:8] for _ in range(2)]
    for r in range(2):
        x[r, pos[r]] = 1.5  # p = 1/8 each: mass < 0.5 keeps 3, the crossing 4th is inclusive's
    # One token of e = 1 and 8 ties of e = exp(-1) (a few -30 logits too); top_p halfway into the
    # 4th tie, so that 3 ties are kept (4 by the inclusive nucleus).
    y = torch.full((2, v), float("-inf"))
    y[:, :: 1000] = -30.0
    y[:, 7] = 1.0
    y[0, 100:108] = 0.0
    y[1, pos[1][pos[1] != 7]] = 0.0
    y[1, 7] = 1.0
    n_ties = [8, int((y[1] == 0.0).sum())]
    tie = math.exp(-1.0)
    n_tail = int((y[0] == -30.0).sum())
    s = 1 + 8 * tie + n_tail * math.exp(-31.0)
    top_p = (1 + 3.5 * tie) / s
    xd, yd = x.to(dtype).to(DEVICE), y.to(dtype).to(DEVICE)
    excl, incl = _cpu(eo.top_p_mask(xd, 0.5, inclusive=False)), _cpu(eo.top_p_mask(xd, 0.5))
    assert excl.sum(-1).tolist() == [3, 3] and incl.sum(-1).tolist() == [4, 4]
    for r in range(2):
        assert torch.equal(excl[r].nonzero().squeeze(-1), pos[r].sort().values[:3])
        assert torch.equal(incl[r].nonzero().squeeze(-1), pos[r].sort().values[:4])
    h = _cpu(eo.top_p_entropy(xd, 0.5))
    assert (h.double() - math.log(3)).abs().max() < 1e-6
    assert _cpu(eo.top_p_mask(xd, 1e-6)).sum(-1).tolist() == [1, 1], "at least one token"
    if n_ties[1] == 8:
        for inclusive in (False, True):
            m = _cpu(eo.top_p_mask(yd, top_p, inclusive=inclusive))
            assert torch.equal(m, R.top_p_mask_ref(y.to(dtype), top_p, inclusive=inclusive))
            assert m.sum(-1).tolist() == [4 + inclusive] * 2
        h = _cpu(eo.top_p_entropy(yd, top_p))
        within(h, R.top_p_entropy_ref(y.to(dtype), top_p), eager_top_p_entropy(y.to(dtype), top_p))
        assert h[0] == h[1], "which equal tokens are kept never changes the entropy"


# ---- gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", [300, 151936])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gradients_match_reference(sel_backend, dtype, vocab):
    x, kinds = make_rows(7, vocab, dtype, seed=11)
    x = with_clear_cuts(x, kinds, seed=11)
    y = x.float().argmax(-1)
    y[1::2] = make_labels(7, vocab, seed=4)[1::2].clamp(min=0)
    t = torch.tensor(0.8)
    w = torch.randn(7, generator=torch.Generator().manual_seed(5))
    xd, yd, td, wd = x.to(DEVICE), y.to(DEVICE), t.to(DEVICE), w.to(DEVICE)
    clear = clear_of_top_p_cut(x, 0.8, t)
    g = _cpu(ours_grad(eo.top_p_entropy, xd, 0.8, td, weights=(wd,)))
    assert g.dtype == dtype
    within(g[clear], reference_grad(R.top_p_entropy_ref, x, 0.8, t, weights=(w,))[clear],
           eager_grad(eager_top_p_entropy, x, 0.8, t, weights=(w,))[clear])
    finite = torch.isfinite(R.min_p_logprobs_ref(x, y, 0.05, t))
    wm = torch.where(finite, w, 0)

    def only_finite(fn):
        return lambda z, *a: torch.where(finite.to(z.device), fn(z, *a), 0)

    clear = clear_of_min_p_cut(x, 0.05, t)
    g = _cpu(ours_grad(only_finite(eo.min_p_logprobs), xd, yd, 0.05, td, weights=(wm.to(DEVICE),)))
    within(g[clear], reference_grad(only_finite(R.min_p_logprobs_ref), x, y, 0.05, t, weights=(wm,))[clear],
           eager_grad(only_finite(eager_min_p_logprobs), x, y, 0.05, t, weights=(wm,))[clear])
    assert (g[~finite] == 0).all(), "a filtered label gives a zero gradient row"


def test_top_p_one_keeps_neginf_tokens_at_a_zero_gradient(sel_backend):
    """top_p = 1 keeps every token, the e = 0 ones (-inf logits) too: their gradient is exactly 0,
    never -g q (log q + H) = 0 * -inf; the other tokens' within the eager bound."""
    x, _ = make_rows(2, 300, kinds=(), seed=9)
    x[:, ::3] = float("-inf")
    w = torch.tensor([0.7, -1.3])
    xd = x.to(DEVICE).requires_grad_(True)
    (g,) = torch.autograd.grad(eo.top_p_entropy(xd, 1.0), xd, w.to(DEVICE))
    g = _cpu(g)
    assert (g[:, ::3] == 0).all(), "a -inf logit gets an exactly zero gradient"
    finite = torch.isfinite(x)
    within(g[finite], reference_grad(R.top_p_entropy_ref, x, 1.0, weights=(w,))[finite],
           eager_grad(eager_top_p_entropy, x, 1.0, weights=(w,))[finite])


def test_min_p_filtered_label_gets_a_zero_gradient_row(sel_backend):
    """A label that min-p filters (logp = -inf, a constant) under a nonzero upstream gradient: an
    exactly zero gradient row, its kept tokens included. test_gradients_match_reference zeroes the
    upstream gradient of filtered rows, so only this test reaches that branch of the backward."""
    x, _ = make_rows(2, 300, kinds=(), seed=7)
    y = torch.stack([x[0].argmin(), x[1].argmax()])  # row 0 filtered, row 1 kept
    w = torch.tensor([0.7, -1.3])
    xd = x.to(DEVICE).requires_grad_(True)
    logp = eo.min_p_logprobs(xd, y.to(DEVICE), 0.05)
    (g,) = torch.autograd.grad(logp, xd, w.to(DEVICE))
    g, logp = _cpu(g), _cpu(logp)
    assert logp[0] == float("-inf") and torch.isfinite(logp[1])
    assert (g[0] == 0).all(), "a filtered label gives a zero gradient row"
    ref = reference_grad(R.min_p_logprobs_ref, x[1:], y[1:], 0.05, weights=(w[1:],))
    within(g[1:], ref, eager_grad(eager_min_p_logprobs, x[1:], y[1:], 0.05, weights=(w[1:],)))


@pytest.mark.parametrize("vocab", [5000, 151936])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_forward_backward_mask_agree(sel_backend, dtype, vocab):
    """Dense rows, where the cut is decided by rounding: the backward's nonzero pattern is the
    mask's exclusive nucleus (forward, backward and mask compute e_j bit for bit alike)."""
    x, _ = make_rows(9, vocab, dtype, kinds=("neginf_mask", "all_neginf"), seed=2)
    xd = (x.double() * 1.5).to(dtype).to(DEVICE)
    t = torch.tensor(0.9, device=DEVICE)
    for top_p in (0.3, 0.8, 0.95):
        xg = xd.clone().requires_grad_(True)
        h = eo.top_p_entropy(xg, top_p, t)
        (g,) = torch.autograd.grad(h.sum(), xg)
        m = eo.top_p_mask(xd, top_p, t, inclusive=False)
        ok = ~torch.isnan(h) & (m.sum(-1) > 1)  # a one-token nucleus has H = 0 and a zero gradient
        assert torch.equal((g[ok] != 0).cpu(), (m & ~torch.isneginf(xd))[ok].cpu()), f"top_p={top_p}"
        incl = eo.top_p_mask(xd, top_p, t)
        extra = (incl.sum(-1) - m.sum(-1))[ok]
        assert ((extra == 0) | (extra == 1)).all() and (incl | ~m).all(), "inclusive = exclusive + crossing"


# ---- masked, bad, shifted and unaligned rows ------------------------------------------------------

def test_masked_bad_and_shifted_rows(sel_backend):
    x, y, mask, bad, shifted = masked_bad_shifted_rows()
    ref_h = R.top_p_entropy_ref(x, 0.8, 1.3)
    xd, yd, md = x.to(DEVICE), y.to(DEVICE), mask.to(DEVICE)
    xg = xd.clone().requires_grad_(True)
    h = eo.top_p_entropy(xg, 0.8, 1.3, mask=md)
    (g,) = torch.autograd.grad(h, xg, torch.ones(12, device=DEVICE))
    h, g = _cpu(h), _cpu(g)
    assert (h[~mask] == 0).all() and (g[~mask] == 0).all()
    live_bad = bad & mask
    assert torch.isnan(h[live_bad]).all() and torch.isnan(g[live_bad]).all()
    assert torch.isfinite(h[~bad]).all() and not torch.isnan(g[~bad]).any()
    keep = shifted & mask
    assert (h[keep].double() - ref_h[keep]).abs().max() < 1e-5, "rows shifted by 1e4"
    m = _cpu(eo.top_p_mask(xd, 0.8, 1.3, mask=md))
    assert not m[~mask | bad].any() and m[mask & ~bad].any(-1).all()
    xg = xd.clone().requires_grad_(True)
    lp = eo.min_p_logprobs(xg, yd, 0.05, 1.3, mask=md)
    (g,) = torch.autograd.grad(lp, xg, torch.where(torch.isfinite(lp), 1.0, 0.0))
    lp, g = _cpu(lp), _cpu(g)
    assert (lp[~mask] == 0).all() and lp[0] == 0 and (g[~mask] == 0).all() and (g[0] == 0).all()
    assert torch.isnan(lp[live_bad & (y != -100)]).all()
    ref_lp = R.min_p_logprobs_ref(x, y, 0.05, 1.3, mask=mask)
    assert torch.equal(torch.isneginf(lp[keep]), torch.isneginf(ref_lp[keep])), "filtered labels"
    assert (lp[keep].double() - ref_lp[keep]).nan_to_num(posinf=0, neginf=0).abs().max() < 1e-5, "rows shifted by 1e4"
    stats = eo.token_stats(xd, yd, 1.3, mask=md)
    for name in stats._fields:
        v = _cpu(getattr(stats, name))
        assert (v[~mask] == 0).all(), name
        if name != "logp":
            assert torch.isnan(v[live_bad]).all(), name


@pytest.mark.parametrize("min_p", [0.0, 0.05])
def test_min_p_bad_rows_have_a_nan_gradient(sel_backend, min_p):
    check_min_p_bad_rows_have_a_nan_gradient(min_p, DEVICE)


@pytest.mark.parametrize("vocab", [111, 32000])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_unaligned_rows_give_the_same_bits(sel_backend, dtype, vocab):
    """Rows at an odd offset with stride V + 13 (scalar loads) vs the same rows contiguous."""
    gen = torch.Generator().manual_seed(vocab)
    wide = (torch.randn(6, vocab + 13, generator=gen) * 3).to(dtype).to(DEVICE)
    y = torch.randint(vocab, (6,), generator=gen).to(DEVICE)
    w = torch.randn(6, generator=gen).to(DEVICE)
    got = {}
    for name in ("unaligned", "contiguous"):
        base = wide.detach().clone().requires_grad_(True)
        xv = base[:, 3:3 + vocab] if name == "unaligned" else base[:, 3:3 + vocab].contiguous()
        h = eo.top_p_entropy(xv, 0.7, 0.9)
        lp = eo.min_p_logprobs(xv, y, 0.05, 0.9)
        (g,) = torch.autograd.grad((w * h).sum() + torch.where(torch.isfinite(lp), w * lp, 0).sum(), xv)
        got[name] = [h, lp, g, eo.top_p_mask(xv, 0.7, 0.9), *eo.token_stats(xv, y, 0.9)]
    for k, (a, b) in enumerate(zip(got["unaligned"], got["contiguous"])):
        assert_same_bits(a.detach(), b.detach(), f"output {k}: unaligned vs contiguous rows")


# ---- batch invariance, N = 0, many rows -----------------------------------------------------------

@pytest.mark.parametrize("vocab", [1023, 151936])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_batch_invariance(sel_backend, dtype, vocab):
    gen = torch.Generator(device=DEVICE).manual_seed(vocab)
    row = (torch.randn(1, vocab, device=DEVICE, generator=gen) * 3).to(dtype)
    label = row.float().argmax(-1)
    g = (torch.tensor([0.75], device=DEVICE), torch.tensor([-1.25], device=DEVICE))
    alone = all_outputs(row, label, *g)
    for n in (64, min(BIG_BATCH, 1024) if vocab > 32000 else BIG_BATCH):
        batch = (torch.randn(n, vocab, device=DEVICE, generator=gen) * 2).to(dtype)
        labels = torch.randint(vocab, (n,), device=DEVICE, generator=gen)
        g_h, g_lp = torch.randn(n, device=DEVICE, generator=gen), torch.randn(n, device=DEVICE, generator=gen)
        positions = (0, 1 + vocab % (n - 2), n - 1)
        for pos in positions:
            batch[pos], labels[pos], g_h[pos], g_lp[pos] = row[0], label[0], g[0][0], g[1][0]
        whole = all_outputs(batch, labels, g_h, g_lp)
        for k, (a, b) in enumerate(zip(alone, whole)):
            for pos in positions:
                assert_same_bits(b[pos], a[0], f"output {k}: row at {pos} of {n} vs alone")
        del batch, whole


def test_empty_batch(sel_backend):
    x = torch.randn(0, 50, device=DEVICE, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long, device=DEVICE)
    h = eo.top_p_entropy(x, 0.8)
    lp = eo.min_p_logprobs(x, y, 0.05)
    assert h.shape == (0,) and lp.shape == (0,) and eo.top_p_mask(x, 0.8).shape == (0, 50)
    assert torch.autograd.grad(h.sum() + lp.sum(), x)[0].shape == (0, 50)
    assert all(v.shape == (0,) for v in eo.token_stats(x.detach(), y) if v is not None)


def test_many_rows(sel_backend):
    """70000 rows (3000 emulated) in one launch (no grid-size limit on N), each checked."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(MANY_ROWS, 17, generator=gen) * 3
    y = torch.randint(17, (MANY_ROWS,), generator=gen)
    xd, yd = x.to(DEVICE), y.to(DEVICE)
    clear = clear_of_top_p_cut(x, 0.8)
    within(_cpu(eo.top_p_entropy(xd, 0.8))[clear], R.top_p_entropy_ref(x, 0.8)[clear],
           eager_top_p_entropy(x, 0.8)[clear])
    assert torch.equal(_cpu(eo.top_p_mask(xd, 0.8))[clear], R.top_p_mask_ref(x, 0.8)[clear])
    clear = clear_of_min_p_cut(x, 0.1)
    within(_cpu(eo.min_p_logprobs(xd, yd, 0.1))[clear], R.min_p_logprobs_ref(x, y, 0.1)[clear],
           eager_min_p_logprobs(x, y, 0.1)[clear])
    stats, ref, eager = eo.token_stats(xd, yd), R.token_stats_ref(x, y), eager_token_stats(x, y)
    for name in stats._fields:
        assert_within_eager_bound(_cpu(getattr(stats, name)), getattr(ref, name), getattr(eager, name), what=name)


# ---- no host sync, CUDA graphs --------------------------------------------------------------------

def _step(x, y, t, mask, a, b):
    """Every selective op, forward and backward, on device tensors."""
    xa = x.detach().clone().requires_grad_(True)
    h = eo.top_p_entropy(xa, 0.8, t, mask=mask)
    lp = eo.min_p_logprobs(xa, y, 0.05, t, mask=mask)
    (g,) = torch.autograd.grad((a * h).sum() + torch.where(torch.isfinite(lp), b * lp, 0).sum(), xa)
    return [h.detach(), lp.detach(), g, eo.top_p_mask(x, 0.8, t, inclusive=False, mask=mask),
            *(v for v in eo.token_stats(x, y, t, mask=mask))]


def _inputs(vocab, seed, temperature="tensor_0d"):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(6, vocab, generator=gen) * (2 + seed)).bfloat16()
    y = torch.randint(vocab, (6,), generator=gen)
    y[1] = -100
    mask = torch.tensor([True, True, False, True, True, True])
    t = {"float": 0.7, "tensor_0d": torch.tensor(0.5 + 0.25 * seed),
         "per_row": torch.rand(6, generator=gen) + 0.5}[temperature]
    a, b = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    to = (lambda v: v.to(DEVICE) if isinstance(v, torch.Tensor) else v)
    return [to(v) for v in (x, y, t, mask, a, b)]


@pytest.mark.parametrize("temperature", ["float", "tensor_0d", "per_row"])
@pytest.mark.parametrize("vocab", [1023, 151936])
def test_no_host_sync(sel_backend, vocab, temperature):
    args = _inputs(vocab, 0, temperature)
    expected = _step(*args)  # compiles the kernels outside the debug mode
    with sync_debug_error():
        got = _step(*args)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_same_bits(a, b, f"output {k}: under sync debug mode vs before")


@needs_real_gpu
@pytest.mark.parametrize("vocab", [1023, 151936])
def test_cuda_graph_capture(sel_backend, vocab):
    """Capture forward + backward of every op on static inputs, replay on new inputs written in
    place: the outputs equal an eager call bit for bit."""
    static = _inputs(vocab, 0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            _step(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = _step(*static)
    for seed in (1, 2):
        new = _inputs(vocab, seed)
        for s, n in zip(static, new):
            s.copy_(n)
        graph.replay()
        for k, (a, b) in enumerate(zip(outs, _step(*new))):
            assert_same_bits(a, b, f"replay {seed}: output {k}")
