"""The native ``cpu`` kernels of the selective row ops (top-p, min-p) and ``token_stats`` on every
CPU ISA (``_C.set_isa``): vs the float64 references, exact ties, the search's regimes (peaked,
dense, tie-heavy rows, V up to 151936), forward/backward/mask agreement on the kept set, batch
invariance across N and thread counts, masked / bad / shifted rows, out-of-range labels."""
import math

import pytest
import torch

import entropy_ops as eo
from conftest import (
    FINITE_KINDS, NAN_KINDS, acc_dtype, assert_within_eager_bound, eager_grad, make_labels,
    make_rows, ours_grad, reference_grad,
)
from entropy_ops import reference as R
from entropy_ops.backends import cpu_backend as K
from selective_common import (
    all_outputs, check_lse_of_shifted_rows, check_self_certainty_of_many_equal_logits, clear_of_min_p_cut,
    clear_of_top_p_cut, eager_min_p_logprobs, eager_top_p_entropy, masked_bad_shifted_rows, with_clear_cuts, within,
)
from test_token_stats import eager_token_stats

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.fixture
def isas(native):
    """The ISAs to cover, with the backend set to ``cpu`` and the ISA restored afterwards."""
    before = native.get_isa()
    with eo.use_backend("cpu"):
        yield [(isa, lambda isa=isa: native.set_isa(isa)) for isa in native.supported_isas()]
    native.set_isa(before)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _rows(n_rows, vocab, dtype, seed):
    kinds = FINITE_KINDS + NAN_KINDS if vocab > 2 else ()
    x, row_kinds = make_rows(n_rows, vocab, dtype, kinds=kinds, seed=seed)
    return with_clear_cuts(x, row_kinds, seed), row_kinds


@pytest.mark.parametrize("vocab", [1, 2, 111, 1023, 1024, 32000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_isa_top_p_matches_reference(isas, dtype, vocab):
    n_rows = 14 if vocab < 32000 else 10
    x, _ = _rows(n_rows, vocab, dtype, seed=vocab)
    t = (torch.rand(n_rows, generator=torch.Generator().manual_seed(1)) + 0.5).to(acc_dtype(dtype))
    for top_p in (1e-6, 0.5, 0.999, 1.0):
        clear = clear_of_top_p_cut(x, top_p, t)
        ref_h = R.top_p_entropy_ref(x, top_p, t)
        eager_h = eager_top_p_entropy(x, top_p, t)
        ref_masks = {inc: R.top_p_mask_ref(x, top_p, t, inclusive=inc) for inc in (False, True)}
        for isa, use in isas:
            use()
            h = eo.top_p_entropy(x, top_p, t)
            within(h[clear], ref_h[clear], eager_h[clear])
            assert torch.isnan(h[torch.isnan(ref_h)]).all(), isa
            for inclusive, ref_m in ref_masks.items():
                m = eo.top_p_mask(x, top_p, t, inclusive=inclusive)
                assert torch.equal(m[clear], ref_m[clear]), f"{isa} top_p={top_p} inclusive={inclusive}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_isa_ties_are_exact(isas, dtype):
    # 8 equal logits, the rest -inf: each p = 1/8 exactly; mass < 0.5 keeps 3, the crossing 4th
    # joins the inclusive nucleus; the kept ties are the first by index.
    x = torch.full((2, 1000), float("-inf"))
    pos = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:8]
    x[0, pos] = 1.5
    x[1, pos.flip(0)] = 1.5
    # Ties below the max: one token of e = 1 and 8 of e = exp(-1); top_p halfway into the 4th tie.
    y = torch.full((2, 3000), -30.0)
    y[:, 7] = 1.0
    y[0, 100:108] = 0.0
    y[1, torch.randperm(2990, generator=torch.Generator().manual_seed(1))[:8] + 10] = 0.0
    tie = math.exp(-1.0)
    s = 1 + 8 * tie + 2992 * math.exp(-31.0)
    top_p = (1 + 3.5 * tie) / s
    x, y = x.to(dtype), y.to(dtype)
    for isa, use in isas:
        use()
        excl, incl = eo.top_p_mask(x, 0.5, inclusive=False), eo.top_p_mask(x, 0.5)
        assert excl.sum(-1).tolist() == [3, 3] and incl.sum(-1).tolist() == [4, 4], isa
        assert torch.equal(excl[0].nonzero().squeeze(-1), pos.sort().values[:3]), isa
        h = eo.top_p_entropy(x, 0.5)
        assert (h - math.log(3)).abs().max() < 1e-6 and h[0] == h[1], isa
        for inclusive in (False, True):
            m = eo.top_p_mask(y, top_p, inclusive=inclusive)
            assert torch.equal(m, R.top_p_mask_ref(y, top_p, inclusive=inclusive)), isa
            assert m.sum(-1).tolist() == [4 + inclusive] * 2, isa
        h = eo.top_p_entropy(y, top_p)
        within(h, R.top_p_entropy_ref(y, top_p), eager_top_p_entropy(y, top_p))
        assert h[0] == h[1], "which equal tokens are kept never changes the entropy"


def _search_regime_rows(vocab, gen):
    """Peaked, dense, tie-heavy and one-hot-like rows that send the crossing search down its
    different paths (the t = 1 shortcut, exponent probes, candidate packing, long tie runs)."""
    rows = [
        torch.randn(vocab, generator=gen) * 8,                         # peaked
        torch.randn(vocab, generator=gen) * 2,                         # dense
        torch.where(torch.rand(vocab, generator=gen) < 0.9, 0.0, -5.0),  # 90% equal logits
        torch.full((vocab,), -3.0).index_fill_(0, torch.tensor([5, vocab - 1]), 2.0),
        torch.randn(vocab, generator=gen).round(),                     # few distinct values
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("vocab", [4097, 151936])
def test_each_isa_search_regimes(isas, vocab):
    gen = torch.Generator().manual_seed(vocab)
    x = _search_regime_rows(vocab, gen)
    for top_p in (0.3, 0.8, 0.95):
        ref_h = R.top_p_entropy_ref(x, top_p)
        ref_m = R.top_p_mask_ref(x, top_p, inclusive=False)
        clear = clear_of_top_p_cut(x, top_p)
        p = torch.softmax(x.double(), -1)
        order = torch.sort(p, dim=-1, descending=True, stable=True).indices
        for isa, use in isas:
            use()
            h = eo.top_p_entropy(x, top_p)
            m = eo.top_p_mask(x, top_p, inclusive=False)
            assert torch.equal(m[clear], ref_m[clear]), f"{isa} top_p={top_p}"
            assert (h[clear].double() - ref_h[clear]).abs().max() < 1e-5, f"{isa} top_p={top_p}"
            # Every row (clear or not): the kept set is a prefix of the order, cut as the rule says
            # up to the rounding of the masses.
            n_kept = m.sum(-1)
            assert torch.equal(m.gather(-1, order), torch.arange(vocab) < n_kept[:, None]), isa
            mass = torch.where(m, p, 0).sum(-1)
            assert ((mass < top_p + 1e-5) | (n_kept == 1)).all(), isa


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_each_isa_forward_backward_mask_agree(isas, dtype):
    """The backward's nonzero pattern is the mask's nucleus and the saved cut_index its last kept
    tie: forward, backward and mask compute e_j bit for bit alike (random and dense rows, where
    the cut is decided by rounding, included)."""
    # No shifted (in bf16 equal logits) or one-hot rows: a uniform nucleus has zero gradient.
    x, _ = make_rows(9, 5000, dtype, kinds=("neginf_mask", "all_neginf"), seed=2)
    x = (x.double() * 1.5).to(dtype)
    t = torch.tensor(0.9, dtype=acc_dtype(dtype))
    for isa, use in isas:
        use()
        xg = x.clone().requires_grad_(True)
        h = eo.top_p_entropy(xg, 0.8, t)
        (g,) = torch.autograd.grad(h.sum(), xg)
        m = eo.top_p_mask(x, 0.8, t, inclusive=False)
        ok = ~torch.isnan(h)
        assert torch.equal(g[ok] != 0, (m & ~torch.isneginf(x))[ok]), isa
        _, _, _, cut_index, _ = K.top_p_entropy_fwd_cpu(x, t.expand(9).contiguous(), 1.0, 0.8, None)
        last_kept = torch.where(m, torch.arange(x.shape[-1]), -1).amax(-1)
        has_tie = cut_index >= 0
        assert (m[ok & has_tie].gather(-1, cut_index[ok & has_tie, None].long())).all(), isa
        assert (cut_index[ok & has_tie] <= last_kept[ok & has_tie]).all(), isa


@pytest.mark.parametrize("vocab", [1, 2, 111, 1023, 1024, 32000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_isa_min_p_and_token_stats_match_reference(isas, dtype, vocab):
    n_rows = 12 if vocab < 32000 else 8
    kinds = FINITE_KINDS + NAN_KINDS if vocab > 2 else ()
    x, row_kinds = make_rows(n_rows, vocab, dtype, kinds=kinds, seed=vocab + 5)
    y = make_labels(n_rows, vocab, seed=vocab)
    t = (torch.rand(n_rows, generator=torch.Generator().manual_seed(3)) + 0.5).to(acc_dtype(dtype))
    ref_stats = R.token_stats_ref(x, y, t)
    eager_stats = eager_token_stats(x, y, t)
    for isa, use in isas:
        use()
        for min_p in (0.0, 0.05, 1.0):
            clear = clear_of_min_p_cut(x, min_p, t)
            lp = eo.min_p_logprobs(x, y, min_p, t)
            within(lp[clear], R.min_p_logprobs_ref(x, y, min_p, t)[clear],
                   eager_min_p_logprobs(x, y, min_p, t)[clear])
        stats = eo.token_stats(x, y, t)
        for name in stats._fields:
            assert_within_eager_bound(getattr(stats, name), getattr(ref_stats, name),
                                      getattr(eager_stats, name), row_kinds or None,
                                      what=f"{name} [{isa}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_each_isa_gradients_match_reference(isas, dtype):
    x, kinds = make_rows(7, 300, dtype, seed=11)
    x = with_clear_cuts(x, kinds, seed=11)
    y = x.float().argmax(-1)
    y[1::2] = make_labels(7, 300, seed=4)[1::2].clamp(min=0)
    t = torch.tensor(0.8, dtype=acc_dtype(dtype))
    w = torch.randn(7, dtype=acc_dtype(dtype), generator=torch.Generator().manual_seed(5))
    ref_tp = reference_grad(R.top_p_entropy_ref, x, 0.8, t, weights=(w,))
    eager_tp = eager_grad(eager_top_p_entropy, x, 0.8, t, weights=(w,))
    clear_tp = clear_of_top_p_cut(x, 0.8, t)
    finite = torch.isfinite(R.min_p_logprobs_ref(x, y, 0.05, t))
    wm = torch.where(finite, w, 0)

    def only_finite(fn):
        return lambda z, *a: torch.where(finite, fn(z, *a), 0)

    ref_mp = reference_grad(only_finite(R.min_p_logprobs_ref), x, y, 0.05, t, weights=(wm,))
    eager_mp = eager_grad(only_finite(eager_min_p_logprobs), x, y, 0.05, t, weights=(wm,))
    clear_mp = clear_of_min_p_cut(x, 0.05, t)
    for isa, use in isas:
        use()
        g = ours_grad(eo.top_p_entropy, x, 0.8, t, weights=(w,))
        assert g.dtype == dtype
        within(g[clear_tp], ref_tp[clear_tp], eager_tp[clear_tp])
        g = ours_grad(only_finite(eo.min_p_logprobs), x, y, 0.05, t, weights=(wm,))
        within(g[clear_mp], ref_mp[clear_mp], eager_mp[clear_mp])
        assert (g[~finite] == 0).all(), isa


@pytest.mark.parametrize("vocab", [37, 4096, 32000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_each_isa_batch_invariance(isas, restore_threads, dtype, vocab):
    gen = torch.Generator().manual_seed(vocab)
    n = 24 if vocab <= 4096 else 8
    batch = (torch.randn(n, vocab, generator=gen) * 3).to(dtype)
    y = torch.randint(vocab, (n,), generator=gen)
    y[::3] = batch[::3].float().argmax(-1)
    g_h, g_lp = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    g_h, g_lp = g_h.to(acc_dtype(dtype)), g_lp.to(acc_dtype(dtype))
    for isa, use in isas:
        use()
        torch.set_num_threads(2)
        whole = all_outputs(batch, y, g_h, g_lp)
        torch.set_num_threads(1)
        for i in (0, n // 2 + 1, n - 1):
            alone = all_outputs(batch[i:i + 1], y[i:i + 1], g_h[i:i + 1], g_lp[i:i + 1])
            for k, (a, b) in enumerate(zip(alone, whole)):
                if a is not None:
                    assert torch.equal(a[0], b[i]), f"{isa}: output {k} of row {i} changes with N/threads"


def test_each_isa_masked_bad_and_shifted_rows(isas):
    x, y, mask, bad, shifted = masked_bad_shifted_rows()
    ref_h = R.top_p_entropy_ref(x, 0.8, 1.3)
    for isa, use in isas:
        use()
        xg = x.clone().requires_grad_(True)
        h = eo.top_p_entropy(xg, 0.8, 1.3, mask=mask)
        (g,) = torch.autograd.grad(h, xg, torch.ones(12))
        assert (h[~mask] == 0).all() and (g[~mask] == 0).all(), isa
        live_bad = bad & mask
        assert torch.isnan(h[live_bad]).all() and torch.isnan(g[live_bad]).all(), isa
        assert torch.isfinite(h[~bad]).all() and not torch.isnan(g[~bad]).any(), isa
        keep = shifted & mask
        assert (h[keep].double() - ref_h[keep]).abs().max() < 1e-5, f"{isa}: rows shifted by 1e4"
        m = eo.top_p_mask(x, 0.8, 1.3, mask=mask)
        assert not m[~mask | bad].any() and m[mask & ~bad].any(-1).all(), isa
        lp = eo.min_p_logprobs(x, y, 0.05, 1.3, mask=mask)
        assert (lp[~mask] == 0).all() and lp[0] == 0, isa
        assert torch.isnan(lp[live_bad & (y != -100)]).all(), isa
        stats = eo.token_stats(x, y, 1.3, mask=mask)
        for name in stats._fields:
            v = getattr(stats, name)
            assert (v[~mask] == 0).all(), f"{isa}: {name}"
            if name != "logp":
                assert torch.isnan(v[live_bad]).all(), f"{isa}: {name}"


def test_each_isa_out_of_range_label_gives_nan(isas):
    # The ops reject such labels on CPU before any kernel runs; the kernels themselves give NaN.
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([50, -1, int(x[2].argmax())])  # the row's top token: kept by min-p, finite logp
    for isa, use in isas:
        use()
        logp, _, _ = K.min_p_logprobs_fwd_cpu(x, y, None, 1.0, -100, 0.05, None)
        assert torch.isnan(logp[:2]).all() and torch.isfinite(logp[2]), isa
        stats = K.token_stats_cpu(x, y, None, 1.0, -100, None)
        assert torch.isnan(stats.logp[:2]).all() and torch.isfinite(stats.logp[2]), isa
        assert stats.logp.shape == (3,) and K.token_stats_cpu(x, None, None, 1.0, -100, None).logp is None


def test_wrappers_follow_the_kernel_contract(native):
    """TopPKernel / MinPKernel / token_stats calling conventions (kernel.py): dtypes, shapes, keep-all
    and bad-row encodings of the saved state."""
    x = torch.randn(4, 300, dtype=torch.bfloat16)
    x[1] = float("-inf")
    entropy, row_max, cut_e, cut_index, log_norm = K.top_p_entropy_fwd_cpu(x, None, 1.0, 1.0, None)
    assert cut_index.dtype == torch.int32 and entropy.dtype == torch.float32
    assert torch.equal(cut_index[[0, 2, 3]], torch.full((3,), 299, dtype=torch.int32))
    assert (cut_e[[0, 2, 3]] == 0).all() and torch.isnan(entropy[1]) and torch.isnan(log_norm[1])
    assert torch.equal(row_max[[0, 2, 3]], x.float().amax(-1)[[0, 2, 3]])
    out = torch.empty(4, 300, dtype=torch.bool)
    K.top_p_mask_cpu(x, None, 1.0, 0.5, True, torch.tensor([True, True, False, True]), out)
    assert not out[1:3].any() and out[0].any()
    empty = K.top_p_entropy_fwd_cpu(x[:0], None, 1.0, 0.8, None)
    assert all(v.shape == (0,) for v in empty)


def test_each_isa_self_certainty_of_many_equal_logits(isas):
    """Rows where most logits share one value (``selective_common.many_equal_logits_rows``): the
    mean of ``x - max`` exact (TwoSum, power-of-two scaling, the 1/T in double) on every ISA."""
    for isa, use in isas:
        use()
        check_self_certainty_of_many_equal_logits()


def test_each_isa_lse_of_shifted_rows(isas):
    """token_stats' lse on rows shifted by 1e4 at T = 1.3: finished in double, rounded once."""
    for isa, use in isas:
        use()
        check_lse_of_shifted_rows()
