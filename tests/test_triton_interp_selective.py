"""The Triton kernels of the selective row ops (top-p, min-p) and token_stats, run under the Triton
interpreter on CPU tensors through the public API (SPEC §6), against the float64 references.
Triton reads TRITON_INTERPRET when a kernel is decorated, so these tests run in their own process:
`TRITON_INTERPRET=1 pytest tests/test_triton_interp_selective.py -m triton_interp`.

Random rows are drawn so that the reference's cumulative mass at the top-p cut (or a token's
``p / max p`` at the min-p cut) is not within 1e-4 of the threshold: there fp32 and float64 may
legitimately disagree. Equal-probability rows are built exactly."""
import math
import os

import pytest
import torch

import entropy_ops as eo
from entropy_ops import reference as R

from conftest import (
    FINITE_KINDS, NAN_KINDS, _eager_lse_entropy, eager_z, _special_row, assert_within_eager_bound,
    autograd_grad, make_labels, make_rows,
)

pytestmark = [
    pytest.mark.triton_interp,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 at start-up"),
]
pytest.importorskip("triton")

# 1, 2: degenerate rows; 111, 1023, 1024: the whole row is one compaction (V <= CAP); 9000: bucket
# passes first, several blocks per row.
VOCABS = (1, 2, 111, 1023, 1024, 9000)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TOP_PS = (1e-6, 0.5, 0.999, 1.0)
MARGIN = 1e-4


@pytest.fixture(autouse=True)
def _triton():
    torch.manual_seed(0)  # temperatures, weights: every run draws the same rows
    with eo.use_backend("triton"):
        yield


# ---- inputs and yardsticks -----------------------------------------------------------------------

def _top_p_margin(row, top_p, t):
    """Distance of the float64 cumulative mass (sorted) to top_p: the cut is ambiguous below MARGIN."""
    if top_p >= 1:
        return math.inf
    p = torch.softmax(row.double() / t, -1).sort(descending=True).values
    return (p.cumsum(-1) - top_p).abs().min().item()


def _min_p_margin(row, min_p, t):
    """Relative distance of the tokens' ``p / max p`` to min_p; the max tokens (ratio exactly 1 in
    both precisions) and ``min_p = 0`` (everything kept) are never ambiguous."""
    if min_p == 0:
        return math.inf
    p = torch.softmax(row.double() / t, -1)
    ratio = (p / p.max())[row != row.max()]
    return ((ratio - min_p).abs() / min_p).min().item() if ratio.numel() else math.inf


def selective_rows(n_rows, vocab, dtype, margin_fn, t, kinds=FINITE_KINDS + NAN_KINDS, seed=0):
    """``(x [N, V] in dtype, kinds, checked)``: special rows first (as many as fit, with ``checked``
    False where their cut is ambiguous), then random rows redrawn until unambiguous; a redraw masks
    more of the vocabulary with -inf (a cut at top_p = 0.999 over thousands of tiny masses is never
    1e-4 away from a token boundary)."""
    gen = torch.Generator().manual_seed(seed)
    rows, row_kinds, checked = [], [], []
    for i in range(n_rows):
        kind = kinds[i] if i < len(kinds) and vocab > 2 else "normal"
        for attempt in range(200):
            if kind == "normal":
                row = torch.randn(vocab, generator=gen) * 2.0
                live = torch.rand(vocab, generator=gen) < 0.8 ** (attempt // 4)
                live[int(torch.randint(vocab, (1,), generator=gen))] = True
                row = torch.where(live, row, float("-inf"))
            else:
                row = _special_row(kind, vocab, gen)
            row = row.to(dtype)
            ok = kind in NAN_KINDS or margin_fn(row, float(t[i])) > MARGIN
            if ok or kind != "normal":
                break
        rows.append(row)
        row_kinds.append(kind)
        checked.append(ok)
    return torch.stack(rows), row_kinds, torch.tensor(checked)


def eager_top_p_entropy(x, top_p, t):
    """The yardstick: entropy over the reference's nucleus in eager torch with fp32 upcast."""
    kept = R.top_p_mask_ref(x.detach(), top_p, t, inclusive=False)
    z = eager_z(x, t)
    _, h = _eager_lse_entropy(torch.where(kept, z, float("-inf")))
    return h


def eager_min_p_logprobs(x, labels, min_p, t, ignore_index=-100):
    z = eager_z(x, t)
    with torch.no_grad():
        p = torch.softmax(z.double(), -1)
        kept = p >= min_p * p.amax(-1, keepdim=True)
    lse = torch.logsumexp(torch.where(kept, z, float("-inf")), -1)
    y = labels.long()
    y_c = y.clamp(0, z.shape[-1] - 1)[:, None]
    logp = torch.where(kept.gather(-1, y_c).squeeze(-1), z.gather(-1, y_c).squeeze(-1) - lse, float("-inf"))
    return torch.where(y == ignore_index, 0, logp)


def _interpreter_rounding(ref, dtype):
    """The interpreter (Triton <= 3.9) casts fp32 -> bf16 by truncation where compiled code rounds to
    nearest even (see test_triton_interp.py): one bf16 ulp of the largest gradient is allowed."""
    if dtype != torch.bfloat16:
        return 1e-5
    top = ref.abs().max().item()
    return 2.0 ** (math.floor(math.log2(top)) - 7) + 1e-5 if top > 0 else 1e-5


def _only(rows, *tensors):
    return [t[rows] for t in tensors]


# ---- top-p ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("top_p", TOP_PS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_top_p_entropy_matches_reference(vocab, dtype, top_p):
    t = torch.rand(12) + 0.5
    x, kinds, checked = selective_rows(12, vocab, dtype, lambda r, ti: _top_p_margin(r, top_p, ti), t, seed=vocab)
    mask = torch.ones(12, dtype=torch.bool)
    mask[-1] = False
    h = eo.top_p_entropy(x, top_p, t, mask=mask)
    assert h.dtype == torch.float32 and h[-1] == 0
    ref = R.top_p_entropy_ref(x, top_p, t, mask=mask)
    eager = torch.where(mask, eager_top_p_entropy(x, top_p, t), 0)
    keep = checked & mask
    assert_within_eager_bound(*_only(keep, h, ref, eager), [k for k, c in zip(kinds, keep) if c], "top-p entropy")
    for i, kind in enumerate(kinds):
        if kind in NAN_KINDS and mask[i]:
            assert torch.isnan(h[i]), kind


@pytest.mark.parametrize("vocab", (1, 111, 1024, 9000))
@pytest.mark.parametrize("top_p", (1e-6, 0.5, 0.999, 1.0))
def test_top_p_mask_matches_reference(vocab, top_p):
    t = torch.full((10,), 0.9)
    x, kinds, checked = selective_rows(10, vocab, torch.float32, lambda r, ti: _top_p_margin(r, top_p, ti), t,
                                       seed=vocab + 1)
    mask = torch.ones(10, dtype=torch.bool)
    mask[3] = False
    x[3] = float("nan")  # a masked row is never read
    for inclusive in (True, False):
        ours = eo.top_p_mask(x, top_p, 0.9, inclusive=inclusive, mask=mask)
        ref = R.top_p_mask_ref(x, top_p, 0.9, inclusive=inclusive, mask=mask)
        assert ours.dtype == torch.bool and ours.shape == x.shape
        assert torch.equal(ours[checked], ref[checked]), inclusive
        assert not ours[3].any()
        for i, kind in enumerate(kinds):
            if kind in NAN_KINDS:
                assert not ours[i].any(), kind


@pytest.mark.parametrize("vocab", (8, 1023, 9000))
def test_top_p_exact_ties(vocab):
    """8 equal logits, the rest -inf, top_p = 0.5: exclusive keeps 3 (by index), inclusive 4,
    entropy log 3, whatever the positions (spread across blocks for V = 9000)."""
    gen = torch.Generator().manual_seed(vocab)
    rows = []
    for _ in range(3):
        row = torch.full((vocab,), float("-inf"))
        row[torch.randperm(vocab, generator=gen)[:8]] = 1.5
        rows.append(row)
    if vocab == 9000:
        row = torch.full((vocab,), float("-inf"))
        row[[5, 2047, 2048, 4000, 6000, 8191, 8192, 8999]] = -3.0
        rows.append(row)
    x = torch.stack(rows)
    h = eo.top_p_entropy(x, 0.5)
    torch.testing.assert_close(h, torch.full_like(h, math.log(3)), rtol=0, atol=1e-6)
    for inclusive, n_kept in ((False, 3), (True, 4)):
        kept = eo.top_p_mask(x, 0.5, inclusive=inclusive)
        assert (kept.sum(-1) == n_kept).all()
        assert torch.equal(kept, R.top_p_mask_ref(x, 0.5, inclusive=inclusive))
        tie_index = torch.isfinite(x).nonzero()[:, 1].view(len(rows), 8)
        assert torch.equal(kept.gather(-1, tie_index), (torch.arange(8) < n_kept).expand(len(rows), 8))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_top_p_uniform_row_is_one_key(dtype):
    """A row of one value (no compaction fits: 9000 > CAP) is resolved as one distinct key."""
    x = torch.full((2, 9000), 2.5, dtype=dtype)
    for top_p, kept_excl in ((0.5, 4499), (0.25, 2249), (1e-6, 1)):
        h = eo.top_p_entropy(x, top_p)
        torch.testing.assert_close(h, torch.full_like(h, math.log(kept_excl)), rtol=1e-6, atol=1e-6)
        for inclusive, n_kept in ((False, kept_excl), (True, min(kept_excl + 1, 9000) if top_p > 1e-6 else 1)):
            kept = eo.top_p_mask(x, top_p, inclusive=inclusive)
            assert torch.equal(kept, (torch.arange(9000) < n_kept).expand(2, 9000)), (top_p, inclusive)


@pytest.mark.parametrize("vocab", (1023, 9000))
def test_top_p_narrowing_with_small_cap(vocab, monkeypatch):
    """A tiny candidate cap forces many bucket passes (and the one-key exit) before the compaction:
    the nucleus must not change."""
    from entropy_ops.triton_kernels import launch_selective
    t = torch.full((8,), 1.0)
    top_p = 0.7
    x, _, _ = selective_rows(8, vocab, torch.bfloat16, lambda r, ti: _top_p_margin(r, top_p, ti), t,
                             kinds=("uniform", "shift_pos", "neginf_mask"), seed=7)
    x[3] = (torch.randn(vocab) * 0.02).to(torch.bfloat16)  # one binade of e, many ties
    checked = torch.tensor([_top_p_margin(row, top_p, 1.0) > MARGIN for row in x])
    expected = [eo.top_p_mask(x, top_p, inclusive=inc) for inc in (True, False)]
    h_expected = eo.top_p_entropy(x, top_p)
    monkeypatch.setattr(launch_selective, "_CAP", 16)
    for inc, want in zip((True, False), expected):
        assert torch.equal(eo.top_p_mask(x, top_p, inclusive=inc), want)
    h = eo.top_p_entropy(x, top_p)
    torch.testing.assert_close(h, h_expected, rtol=1e-6, atol=1e-6)
    ref = R.top_p_mask_ref(x, top_p, inclusive=False)
    assert torch.equal(expected[1][checked], ref[checked])


@pytest.mark.parametrize("vocab", (111, 9000))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_top_p_backward_matches_reference(vocab, dtype):
    top_p = 0.8
    t = torch.full((8,), 0.8)
    x, kinds, checked = selective_rows(8, vocab, dtype, lambda r, ti: _top_p_margin(r, top_p, ti), t,
                                       kinds=FINITE_KINDS, seed=vocab + 2)
    x = x[checked]
    weights = (torch.randn(x.shape[0]),)
    weights[0][0] = 0.0
    t_rows = t[: x.shape[0]]
    g = autograd_grad(eo.top_p_entropy, x, top_p, t_rows, weights=weights)
    assert g.dtype == dtype
    ref = autograd_grad(R.top_p_entropy_ref, x.double(), top_p, t_rows, weights=weights)
    eager = autograd_grad(eager_top_p_entropy, x, top_p, t_rows, weights=weights)
    assert_within_eager_bound(g, ref, eager, what="top-p grad", abs_tol=_interpreter_rounding(ref, dtype))
    kept = R.top_p_mask_ref(x, top_p, t_rows, inclusive=False)
    assert (g[~kept] == 0).all() and (g[0] == 0).all()
    # Backward re-derives the kept set from (cut_e, cut_index): the same set as the mask kernel.
    assert not (g != 0)[~eo.top_p_mask(x, top_p, t_rows, inclusive=False)].any()


def test_top_p_masked_and_bad_rows():
    x = torch.randn(5, 3000)
    x[1] = float("nan")  # masked: never read
    x[2, 7] = float("nan")
    x[3, 9] = float("inf")
    x[4] = float("-inf")
    mask = torch.tensor([True, False, True, True, True])
    base = x.clone().requires_grad_(True)
    h = eo.top_p_entropy(base, 0.8, mask=mask)
    assert torch.isfinite(h[0]) and h[1] == 0 and torch.isnan(h[2:]).all()
    h.backward(torch.ones_like(h))
    assert (base.grad[1] == 0).all() and torch.isfinite(base.grad[0]).all()
    assert torch.isnan(base.grad[2:]).all()
    kept = eo.top_p_mask(x, 0.8, mask=mask)
    assert kept[0].any() and not kept[1:].any()


def test_top_p_shifted_rows_keep_precision():
    x, kinds = make_rows(6, 2000, torch.float32, kinds=("shift_pos", "shift_neg"), seed=11)
    for top_p in (0.3, 0.9):
        h = eo.top_p_entropy(x, top_p)
        torch.testing.assert_close(h.double(), R.top_p_entropy_ref(x, top_p), rtol=0, atol=1e-5)


# ---- min-p ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("min_p", (0.0, 0.02, 0.5, 1.0))
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_min_p_logprobs_matches_reference(vocab, dtype, min_p):
    t = torch.rand(12) + 0.5
    x, kinds, checked = selective_rows(12, vocab, dtype, lambda r, ti: _min_p_margin(r, min_p, ti), t, seed=vocab)
    y = make_labels(12, vocab, dtype=torch.int32 if vocab % 2 else torch.int64)
    y[10] = x[10].float().argmin()  # a random row: filtered (-inf) unless min_p = 0
    mask = torch.ones(12, dtype=torch.bool)
    mask[-1] = False
    logp = eo.min_p_logprobs(x, y, min_p, t, mask=mask)
    assert logp.dtype == torch.float32 and logp[-1] == 0
    ref = R.min_p_logprobs_ref(x, y, min_p, t, mask=mask)
    eager = torch.where(mask, eager_min_p_logprobs(x, y, min_p, t), 0)
    keep = checked & mask
    assert_within_eager_bound(*_only(keep, logp, ref, eager), [k for k, c in zip(kinds, keep) if c], "min-p logp")


@pytest.mark.parametrize("vocab", (111, 9000))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_min_p_backward_matches_reference(vocab, dtype):
    min_p = 0.05
    t = torch.full((9,), 1.3)
    x, kinds, checked = selective_rows(9, vocab, dtype, lambda r, ti: _min_p_margin(r, min_p, ti), t,
                                       kinds=FINITE_KINDS, seed=vocab + 3)
    y = make_labels(9, vocab)
    y[4] = x[4].float().argmin()  # filtered: a zero row
    x, y = x[checked], y[checked]
    t_rows = t[: x.shape[0]]
    weights = (torch.randn(x.shape[0]),)
    weights[0][1] = 0.0
    g = autograd_grad(eo.min_p_logprobs, x, y, min_p, t_rows, weights=weights)
    assert g.dtype == dtype
    ref = autograd_grad(R.min_p_logprobs_ref, x.double(), y, min_p, t_rows, weights=weights)
    eager = autograd_grad(eager_min_p_logprobs, x, y, min_p, t_rows, weights=weights)
    assert_within_eager_bound(g, ref, eager, what="min-p grad", abs_tol=_interpreter_rounding(ref, dtype))


def test_min_p_masked_bad_and_out_of_range_rows():
    from entropy_ops.triton_kernels.launch_selective import min_p_logprobs_bwd_triton, min_p_logprobs_fwd_triton
    x = torch.randn(6, 500)
    x[1] = float("nan")  # masked: never read
    x[2, 3] = float("inf")
    x[3] = float("-inf")
    y = torch.tensor([4, 4, 4, -100, 500, -1])  # 500 and -1 are out of range (unchecked at this level)
    y[0] = x[0].argmax()
    mask = torch.tensor([True, False, True, True, True, True])
    logp, row_max, log_norm = min_p_logprobs_fwd_triton(x, y, None, 1.0, -100, 0.1, mask)
    assert torch.isfinite(logp[0]) and logp[1] == 0 and torch.isnan(logp[2])
    assert logp[3] == 0  # ignored, even in a bad row
    assert torch.isnan(logp[4:]).all()
    grad = torch.empty_like(x)
    min_p_logprobs_bwd_triton(x, y, None, 1.0, -100, 0.1, mask, row_max, log_norm, torch.ones(6), grad)
    assert torch.isfinite(grad[0]).all() and (grad[1] == 0).all() and (grad[3] == 0).all()
    assert torch.isnan(grad[2]).all() and torch.isnan(grad[4:]).all()


# ---- token_stats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_stats_matches_reference(vocab, dtype):
    from test_token_stats import assert_stats_match
    x, kinds = make_rows(13, vocab, dtype, kinds=FINITE_KINDS + NAN_KINDS if vocab > 2 else (), seed=vocab)
    # Powers of two: lse = m / T + log s is then free of the rounding of m / T, which on rows shifted
    # by 1e4 is ~1e-3 for any fp32 output (eager's error there is as large, but random).
    t = 2.0 ** torch.randint(-1, 2, (13,)).float()
    y = make_labels(13, vocab, dtype=torch.int32)
    mask = torch.ones(13, dtype=torch.bool)
    mask[5] = False
    stats = eo.token_stats(x, y, t, mask=mask)
    assert_stats_match(stats, x, kinds, labels=y, temperature=t, mask=mask)
    assert eo.token_stats(x, temperature=t).logp is None
    assert all(getattr(stats, name)[5] == 0 for name in stats._fields)


def test_token_stats_self_certainty_of_many_equal_logits():
    """Rows where most logits share one value (``selective_common.many_equal_logits_rows``): the
    mean of ``x - max`` free of roundings that every term would repeat."""
    from selective_common import check_self_certainty_of_many_equal_logits
    check_self_certainty_of_many_equal_logits()


def test_token_stats_lse_of_shifted_rows():
    """lse = max / T + log S on rows shifted by 1e4 at T = 1.3 rounded once, as on cpu and cuda (in
    float32 it was up to 1.5 ulp off, beyond SPEC §2's bound). Found by fuzzing the interpreter."""
    from selective_common import check_lse_of_shifted_rows
    check_lse_of_shifted_rows()


# ---- every op ------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", (1023, 9000))
def test_batch_invariance(vocab):
    """A row's bits do not depend on N or its position (every size is a function of V alone)."""
    x, _ = make_rows(24, vocab, torch.bfloat16, seed=5)
    y = make_labels(24, vocab, n_ignored=0)
    full = (eo.top_p_entropy(x, 0.9), eo.top_p_mask(x, 0.9), eo.min_p_logprobs(x, y, 0.05),
            *eo.token_stats(x, y))
    for i in (0, 13, 23):
        one = (eo.top_p_entropy(x[i:i + 1], 0.9), eo.top_p_mask(x[i:i + 1], 0.9),
               eo.min_p_logprobs(x[i:i + 1], y[i:i + 1], 0.05), *eo.token_stats(x[i:i + 1], y[i:i + 1]))
        for a, b in zip(one, full):
            assert torch.equal(a, b[i:i + 1])


def test_strided_rows_and_leading_shape():
    """Rows with a stride > V and a [B, T, V] leading shape give the bits of a contiguous copy."""
    x = (torch.randn(2, 3, 400) * 2)[..., :300]
    y = make_labels(6, 300).view(2, 3)
    t = torch.rand(2, 3) + 0.5
    c = x.contiguous()
    for fn in (lambda v: eo.top_p_entropy(v, 0.7, t), lambda v: eo.top_p_mask(v, 0.7, t),
               lambda v: eo.min_p_logprobs(v, y, 0.1, t), lambda v: torch.stack(eo.token_stats(v, y, t))):
        assert torch.equal(fn(x), fn(c))
    g_strided = autograd_grad(eo.top_p_entropy, x, 0.7, t, weights=(torch.ones(2, 3),))
    g = autograd_grad(eo.top_p_entropy, c, 0.7, t, weights=(torch.ones(2, 3),))
    assert torch.equal(g_strided, g)


def test_empty_batch():
    x = torch.empty(0, 7)
    assert eo.top_p_entropy(x).shape == (0,)
    assert eo.top_p_mask(x, 0.5).shape == (0, 7)
    assert eo.min_p_logprobs(x, torch.empty(0, dtype=torch.long)).shape == (0,)
    assert eo.token_stats(x).entropy.shape == (0,)


@pytest.mark.parametrize("min_p", [0.0, 0.05])
def test_min_p_bad_rows_have_a_nan_gradient(min_p):
    from selective_common import check_min_p_bad_rows_have_a_nan_gradient
    check_min_p_bad_rows_have_a_nan_gradient(min_p)
