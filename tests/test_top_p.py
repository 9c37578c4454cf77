"""``top_p_entropy`` and ``top_p_mask`` (SPEC §3.1) on every CPU backend vs the float64 sort-based
references: V at regime boundaries, every dtype, ``top_p`` in {tiny, 0.5, 0.999, 1}, special rows,
exact ties, temperatures, row mask, gradients with the nucleus held fixed, batch invariance,
opcheck, ``torch.compile`` and bad arguments."""

import pytest
import torch

import entropy_ops as eo
from conftest import FINITE_KINDS, FLOAT_DTYPES, NAN_KINDS, acc_dtype, eager_grad, make_rows, ours_grad, reference_grad
from entropy_ops import reference as R
from selective_common import (
    MARGIN, clear_of_top_p_cut, eager_top_p_entropy, tied_rows, with_clear_cuts, within,
)

VOCABS = [1, 2, 111, 1023, 1024, 32000]
TOP_PS = [1e-6, 0.5, 0.8, 0.999, 1.0]


def _rows(n_rows, vocab, dtype, seed=0):
    kinds = FINITE_KINDS + NAN_KINDS if vocab > 2 else ()
    x, row_kinds = make_rows(n_rows, vocab, dtype, kinds=kinds, seed=seed)
    return with_clear_cuts(x, row_kinds, seed), row_kinds


@pytest.mark.parametrize("top_p", TOP_PS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_entropy_matches_reference(backend, dtype, vocab, top_p):
    n_rows = 24 if vocab < 32000 else 12
    x, _ = _rows(n_rows, vocab, dtype)
    t = torch.rand(n_rows, dtype=acc_dtype(dtype)) + 0.5
    h = eo.top_p_entropy(x, top_p, t)
    assert h.dtype == acc_dtype(dtype) and h.shape == (n_rows,)
    clear = clear_of_top_p_cut(x, top_p, t)
    assert clear.sum() >= n_rows // 4, "too few rows clear of the cut to test anything"
    ref = R.top_p_entropy_ref(x, top_p, t)
    within(h[clear], ref[clear], eager_top_p_entropy(x, top_p, t)[clear])
    nan_rows = torch.isnan(ref)
    assert torch.isnan(h[nan_rows]).all()


@pytest.mark.parametrize("inclusive", [True, False])
@pytest.mark.parametrize("top_p", TOP_PS)
@pytest.mark.parametrize("vocab", [2, 111, 1024, 32000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_mask_matches_sort_reference(backend, dtype, vocab, top_p, inclusive):
    x, _ = _rows(9, vocab, dtype, seed=3)
    m = eo.top_p_mask(x, top_p, 0.9, inclusive=inclusive)
    assert m.dtype == torch.bool and m.shape == x.shape
    ref = R.top_p_mask_ref(x, top_p, 0.9, inclusive=inclusive)
    clear = clear_of_top_p_cut(x, top_p, 0.9)
    assert torch.equal(m[clear], ref[clear])
    bad = torch.isnan(R.entropy_ref(x, 0.9))
    assert not m[bad].any(), "rows that are all -inf or hold NaN/+inf give an all-False mask"


@pytest.mark.parametrize("top_p", [0.5, 0.8, 0.999])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dense_rows_give_a_valid_nucleus(backend, dtype, top_p):
    # Realistic dense rows (every token carries mass) put many cumulative masses within rounding of
    # top_p, so the exact cut may differ from a float64 sort by a token there. What must hold: the
    # nucleus is a prefix of the (p descending, index ascending) order, its mass is < top_p and adding
    # the next token reaches top_p (both up to fp32 rounding), and the entropy is that nucleus's.
    x = (torch.randn(6, 32000, generator=torch.Generator().manual_seed(8)) * 2).to(dtype)
    m = eo.top_p_mask(x, top_p, inclusive=False)
    z = x.double()
    p = torch.softmax(z, dim=-1)
    order = torch.sort(p, dim=-1, descending=True, stable=True).indices
    kept_sorted = m.gather(-1, order)
    n_kept = kept_sorted.sum(-1)
    assert torch.equal(kept_sorted, torch.arange(32000) < n_kept[:, None]), "the nucleus is not a prefix"
    mass = torch.where(m, p, 0).sum(-1)
    next_p = p.gather(-1, order).gather(-1, n_kept[:, None]).squeeze(-1)
    assert (mass < top_p + MARGIN).all() and (mass + next_p >= top_p - MARGIN).all()
    h = eo.top_p_entropy(x, top_p)
    ref = R.entropy_ref(torch.where(m, z, float("-inf")))
    torch.testing.assert_close(h.double(), ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("vocab", [8, 111, 32000])
def test_ties_are_exact_and_order_free(backend, dtype, vocab):
    # n equal probabilities of exactly 1/n: the cumulative masses k/n hit 0.5 exactly at k = n/2,
    # so the exclusive nucleus keeps n/2 - 1 tokens (k/n < 0.5) and the inclusive one n/2.
    x, ties = tied_rows(vocab, dtype)
    h = eo.top_p_entropy(x, 0.5)
    torch.testing.assert_close(h, (ties // 2 - 1).double().log().to(h.dtype), rtol=0, atol=2e-7)
    for inclusive, kept in ((False, ties // 2 - 1), (True, ties // 2)):
        m = eo.top_p_mask(x, 0.5, inclusive=inclusive)
        assert torch.equal(m.sum(-1), kept)
        assert torch.equal(m, R.top_p_mask_ref(x, 0.5, inclusive=inclusive))
        for r in range(4):  # ties are cut by index: the lowest indices are kept
            tied_idx = (x[r] == 2.0).nonzero().flatten()
            assert torch.equal(m[r].nonzero().flatten(), tied_idx[:kept[r]])
    # Whatever the order of the equal probabilities, the entropy is the same bits.
    perm = torch.randperm(vocab, generator=torch.Generator().manual_seed(5))
    assert torch.equal(eo.top_p_entropy(x[:, perm], 0.5), h)
    # top_p below one token's mass keeps exactly one token of the tied maxima.
    assert torch.equal(eo.top_p_entropy(x, 0.05), torch.zeros_like(h))
    assert (eo.top_p_mask(x, 0.05, inclusive=False).sum(-1) == 1).all()
    assert (eo.top_p_mask(x, 0.05, inclusive=True).sum(-1) == 1).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_top_p_one_is_plain_entropy(backend, dtype):
    x, kinds = _rows(12, 1023, dtype)
    h1 = eo.top_p_entropy(x, 1.0)
    # Two kernels, each within SPEC §2's bound of the reference: equal to within its 1e-5.
    torch.testing.assert_close(h1, eo.entropy(x), rtol=0, atol=1e-5, equal_nan=True)
    m = eo.top_p_mask(x, 1.0, inclusive=False)
    bad = torch.isnan(h1)
    assert m[~bad].all() and not m[bad].any()


def test_tiny_top_p_keeps_the_argmax(backend):
    x, _ = _rows(10, 1000, torch.float32, seed=7)
    h = eo.top_p_entropy(x, 1e-6)
    ok = ~torch.isnan(h)
    assert (h[ok] == 0).all()
    m = eo.top_p_mask(x, 1e-6, inclusive=False)
    assert (m[ok].sum(-1) == 1).all()
    assert torch.equal(m[ok].float().argmax(-1), x[ok].argmax(-1))


@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.999])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_gradient_matches_reference(backend, dtype, top_p):
    x, kinds = make_rows(7, 300, dtype, seed=11)
    x = with_clear_cuts(x, kinds, seed=11)
    t = torch.tensor(0.8, dtype=acc_dtype(dtype))
    w = torch.randn(7, dtype=acc_dtype(dtype))
    w[2] = 0
    ours = ours_grad(eo.top_p_entropy, x, top_p, t, weights=(w,))
    assert ours.dtype == dtype
    ref = reference_grad(R.top_p_entropy_ref, x, top_p, t, weights=(w,))
    eager = eager_grad(eager_top_p_entropy, x, top_p, t, weights=(w,))
    clear = clear_of_top_p_cut(x, top_p, t)
    within(ours[clear], ref[clear], eager[clear])
    outside = ~R.top_p_mask_ref(x, top_p, t, inclusive=False)
    assert (ours[clear][outside[clear]] == 0).all(), "tokens outside the nucleus get exactly 0"
    assert (ours[2] == 0).all(), "a zero upstream gradient gives a zero row"


def test_masked_and_bad_rows(backend):
    x, kinds = _rows(12, 111, torch.float32)
    mask = torch.ones(12, dtype=torch.bool)
    bad_rows = [i for i, k in enumerate(kinds) if k in NAN_KINDS]
    mask[bad_rows[0]] = False
    mask[kinds.index("normal")] = False
    xg = x.clone().requires_grad_(True)
    h = eo.top_p_entropy(xg, 0.7, mask=mask)
    assert (h[~mask] == 0).all()
    for i in bad_rows[1:]:
        assert torch.isnan(h[i])
    (g,) = torch.autograd.grad(torch.where(torch.isnan(h), 0, h).sum(), xg)
    assert (g[~mask] == 0).all()
    assert not eo.top_p_mask(x, 0.7, mask=mask)[~mask].any()


def test_shifted_rows_keep_precision(backend):
    # Rows shifted by +-1e4 (in fp32: the shift itself rounds the input, so compare with the
    # reference on the same rounded input): the entropy stays within 1e-5 (SPEC §2).
    gen = torch.Generator().manual_seed(2)
    base = with_clear_cuts(torch.randn(8, 1000, generator=gen), ["normal"] * 8, seed=2)
    for shift in (1e4, -1e4):
        x = base + shift
        clear = clear_of_top_p_cut(x, 0.8)
        assert clear.sum() >= 4
        h, ref = eo.top_p_entropy(x, 0.8), R.top_p_entropy_ref(x, 0.8)
        torch.testing.assert_close(h[clear].double(), ref[clear], rtol=0, atol=1e-5)


def test_leading_shape_and_empty(backend):
    x = torch.randn(2, 3, 50)
    h = eo.top_p_entropy(x, 0.6)
    assert h.shape == (2, 3)
    torch.testing.assert_close(h.reshape(-1), eo.top_p_entropy(x.reshape(6, 50), 0.6))
    assert eo.top_p_entropy(torch.empty(0, 4, 7), 0.5).shape == (0, 4)
    assert eo.top_p_mask(torch.empty(0, 7), 0.5).shape == (0, 7)
    one = torch.tensor([[3.0]])
    assert eo.top_p_entropy(one, 0.5).item() == 0 and eo.top_p_mask(one, 0.5).item()
    strided = torch.randn(4, 100)[:, :60]
    torch.testing.assert_close(eo.top_p_entropy(strided, 0.7), eo.top_p_entropy(strided.contiguous(), 0.7))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_batch_invariance(dtype):
    eo_backend = "cpu"
    if not eo.available_backends()[eo_backend][0]:
        pytest.skip("cpu backend not built")
    x, _ = make_rows(33, 4000, dtype, seed=4)
    with eo.use_backend(eo_backend):
        whole = eo.top_p_entropy(x, 0.8)
        mask_whole = eo.top_p_mask(x, 0.8)
        for i in (0, 17, 32):
            assert torch.equal(eo.top_p_entropy(x[i:i + 1], 0.8), whole[i:i + 1])
            assert torch.equal(eo.top_p_mask(x[i:i + 1], 0.8), mask_whole[i:i + 1])


@pytest.mark.parametrize("variant", ["plain", "mask", "tensor_0d", "per_row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_opcheck(backend, dtype, variant):
    gen = torch.Generator().manual_seed(91)
    acc = acc_dtype(dtype)
    x = torch.randn(2, 3, 17, generator=gen).to(dtype).requires_grad_(True)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    t = (torch.rand(2, 3, generator=gen) + 0.5).to(acc)
    args = {
        "plain": (x, None, 1.0, 0.8, None),
        "mask": (x, None, 0.7, 0.5, mask),
        "tensor_0d": (x, torch.tensor(1.3, dtype=acc), 1.0, 0.9, None),
        "per_row": (x, t, 1.0, 0.6, mask),
    }[variant]
    torch.library.opcheck(torch.ops.entropy_ops.top_p_entropy.default, (*args, backend))
    x0, t0, ts, top_p, m = args
    torch.library.opcheck(torch.ops.entropy_ops.top_p_mask.default, (x0.detach(), t0, ts, top_p, True, m, backend))
    saved = torch.ops.entropy_ops.top_p_entropy.default(x0.detach(), t0, ts, top_p, m, backend)
    grad = torch.randn(saved[0].shape, generator=gen).to(saved[0].dtype)
    torch.library.opcheck(torch.ops.entropy_ops.top_p_entropy_bwd.default,
                          (x0.detach(), t0, ts, m, *saved, grad, backend))


@pytest.mark.parametrize("temperature", ["tensor_0d", "float"])
def test_compile_fullgraph(backend, temperature):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(101)
    x = torch.randn(2, 3, 40, generator=gen, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    t = torch.tensor(0.8) if temperature == "tensor_0d" else 0.8

    def fn(x, t, mask):
        return eo.top_p_entropy(x, 0.7, t, mask=mask), eo.top_p_mask(x.detach(), 0.7, t, mask=mask)

    compiled = torch.compile(fn, fullgraph=True)
    (h_c, m_c), (h_e, m_e) = compiled(x, t, mask), fn(x, t, mask)
    assert torch.equal(h_c, h_e) and torch.equal(m_c, m_e)
    (g_c,) = torch.autograd.grad(h_c.sum(), x)
    (g_e,) = torch.autograd.grad(h_e.sum(), x)
    assert torch.equal(g_c, g_e)


def test_double_backward_is_refused():
    x = torch.randn(3, 20, requires_grad=True)
    with eo.use_backend("torch"):
        (g,) = torch.autograd.grad(eo.top_p_entropy(x, 0.7).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            g.sum().backward()


@pytest.mark.parametrize("call, error, name", [
    (lambda x: eo.top_p_entropy(x, 0.0), ValueError, "top_p"),
    (lambda x: eo.top_p_entropy(x, 1.5), ValueError, "top_p"),
    (lambda x: eo.top_p_entropy(x, -0.2), ValueError, "top_p"),
    (lambda x: eo.top_p_entropy(x, float("nan")), ValueError, "top_p"),
    (lambda x: eo.top_p_entropy(x, True), TypeError, "top_p"),
    (lambda x: eo.top_p_entropy(x, torch.tensor(0.5)), TypeError, "top_p"),
    (lambda x: eo.top_p_mask(x, 1.01), ValueError, "top_p"),
    (lambda x: eo.top_p_mask(x, 0.5, inclusive=1), TypeError, "inclusive"),
    (lambda x: eo.top_p_entropy(x.long(), 0.5), TypeError, "logits"),
    (lambda x: eo.top_p_entropy(x, 0.5, temperature=-1.0), ValueError, "temperature"),
    (lambda x: eo.top_p_entropy(x, 0.5, mask=torch.ones(2, dtype=torch.bool)), ValueError, "mask"),
])
def test_bad_arguments_name_themselves(call, error, name):
    with pytest.raises(error, match=f"^{name}:"):
        call(torch.randn(3, 8))


@pytest.mark.parametrize("layout", ["shifted", "transposed"])
def test_mask_of_a_grid_view_is_contiguous(backend, layout):
    """Logits read in place on a grid (``logits[:, :-1]``, a transpose) still give a contiguous
    mask, equal to the one of the contiguous copy."""
    base = torch.randn(3, 6, 40, generator=torch.Generator().manual_seed(2))
    x = base[:, :-1] if layout == "shifted" else base.transpose(0, 1)
    out = eo.top_p_mask(x, 0.7)
    assert out.is_contiguous() and torch.equal(out, eo.top_p_mask(x.contiguous(), 0.7))
    torch.library.opcheck(torch.ops.entropy_ops.top_p_mask.default, (x, None, 1.0, 0.7, True, None, backend))
