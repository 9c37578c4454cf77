"""``masked_quantile`` (SPEC §3.2) vs the float64 reference and ``torch.nanquantile``: per sequence
([B, T] rows and packed, agreeing with each other) and over all tokens, q a float or a tensor,
every dtype, ties, signed zeros and infinities, all-masked rows, single valid tokens, empty
sequences, many short sequences, 20M entries (past torch.quantile's cap), opcheck,
``torch.compile`` and bad arguments."""
import numpy as np
import pytest
import torch

import entropy_ops as eo
from entropy_ops import reference as R
from token_common import TOKEN_BACKENDS, TOKEN_DTYPES, acc_dtype, make_batch, make_packed, prefix_mask, rows_as_packed

QS = [0.0, 0.1, 0.25, 0.5, 0.8, 0.95, 1.0]


def _same(ours, ref):
    """Bit-exact after rounding: rank and interpolation are the reference's float64 arithmetic."""
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=0, atol=0, equal_nan=True)


@pytest.fixture(autouse=True, params=TOKEN_BACKENDS)
def backend(request):
    """Every test runs on each CPU backend."""
    with eo.use_backend(request.param):
        yield request.param


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("dtype", TOKEN_DTYPES, ids=str)
def test_rows_match_reference(dtype, q):
    x, mask = make_batch(7, 41, dtype, seed=int(q * 100))
    out = eo.masked_quantile(x, mask, q)
    assert out.dtype == acc_dtype(dtype) and out.shape == (7,)
    _same(out, R.masked_quantile_ref(x, mask, q))
    assert torch.isnan(out[0]) and out[1] == x[1, 20].to(out.dtype), "all-masked row, single valid token"
    over_all = eo.masked_quantile(x, mask, q, per_sequence=False)
    assert over_all.shape == ()
    _same(over_all, R.masked_quantile_ref(x, mask, q, per_sequence=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_packed_matches_reference(dtype):
    x, mask, cu = make_packed([5, 0, 1, 17, 0, 9, 2, 30], dtype, seed=4)
    for q in QS:
        out = eo.masked_quantile(x, mask, q, cu_seqlens=cu)
        assert out.shape == (8,)
        _same(out, R.masked_quantile_ref(x, mask, q, cu_seqlens=cu))
        assert torch.isnan(out[1]) and torch.isnan(out[4]), "empty sequences give NaN"
        _same(eo.masked_quantile(x, None, q, cu_seqlens=cu), R.masked_quantile_ref(x, None, q, cu_seqlens=cu))
        _same(eo.masked_quantile(x, mask, q, False, cu), R.masked_quantile_ref(x, mask, q, False, cu))


def test_many_short_sequences():
    # Thousands of sequences of 0-6 tokens: the narrowest digits of the selection.
    lengths = torch.randint(0, 7, (3000,), generator=torch.Generator().manual_seed(1)).tolist()
    x, mask, cu = make_packed(lengths, seed=2)
    q = torch.tensor([0.0, 0.3, 0.5, 1.0])
    _same(eo.masked_quantile(x, mask, q, cu_seqlens=cu), R.masked_quantile_ref(x, mask, q, cu_seqlens=cu))


@pytest.mark.parametrize("q", [0.37, torch.tensor(0.37), torch.tensor([0.0, 0.37, 0.5, 0.99, 1.0])])
def test_matches_torch_nanquantile(q):
    x, mask = make_batch(9, 300, torch.float64, seed=5)  # NaN where masked
    ours = eo.masked_quantile(x, mask, q)
    assert ours.shape == ((9,) if not isinstance(q, torch.Tensor) or q.dim() == 0 else (5, 9))
    qt = torch.as_tensor(q, dtype=torch.float64)
    _same(ours, torch.nanquantile(x, qt, dim=-1))
    _same(eo.masked_quantile(x, mask, q, per_sequence=False), torch.nanquantile(x.reshape(-1), qt))
    # NaN values are skipped like masked ones, as torch.nanquantile does.
    _same(eo.masked_quantile(x, None, q), torch.nanquantile(x, qt, dim=-1))


def test_rows_and_packed_agree():
    x, mask = make_batch(6, 50, seed=6)
    lengths = [50, 0, 1, 23, 49, 7]
    xv = torch.where(prefix_mask(50, lengths), x, float("nan"))
    pmask = prefix_mask(50, lengths) & mask
    xp, mp, cu = rows_as_packed(xv, pmask, lengths)
    q = torch.tensor([0.2, 0.5, 0.9])
    _same(eo.masked_quantile(xv, pmask, q), eo.masked_quantile(xp, mp, q, cu_seqlens=cu))
    _same(eo.masked_quantile(xv, pmask, q, False), eo.masked_quantile(xp, mp, q, False))


@pytest.mark.parametrize("dtype", TOKEN_DTYPES, ids=str)
def test_ties_signed_zeros_and_infinities(dtype):
    x = torch.tensor([[2.0, 2.0, 2.0, 1.0, 2.0, 3.0],
                      [-0.0, 0.0, -0.0, 0.0, 1.0, -1.0],
                      [float("inf"), 1.0, float("-inf"), 2.0, 0.5, float("inf")],
                      [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]], dtype=dtype)
    mask = torch.ones_like(x, dtype=torch.bool)
    for q in QS + [0.33, 0.6]:
        _same(eo.masked_quantile(x, mask, q), R.masked_quantile_ref(x, mask, q))
        _same(eo.masked_quantile(x, mask, q, False), R.masked_quantile_ref(x, mask, q, False))


def test_flat_values_over_all_and_empty_inputs():
    x = torch.rand(100, dtype=torch.float64)
    _same(eo.masked_quantile(x, None, 0.3, per_sequence=False), torch.quantile(x, 0.3))
    assert torch.isnan(eo.masked_quantile(x, torch.zeros(100, dtype=torch.bool), 0.3, False))
    assert eo.masked_quantile(torch.empty(0, 5), None, 0.5).shape == (0,)
    assert torch.isnan(eo.masked_quantile(torch.empty(3, 0), None, 0.5)).all()
    assert torch.isnan(eo.masked_quantile(torch.empty(0), None, torch.tensor([0.5, 0.7]), False)).all()
    assert eo.masked_quantile(torch.empty(0), None, 0.5, cu_seqlens=torch.tensor([0])).shape == (0,)
    for q in (0.5, torch.tensor([0.5, 0.7])):  # no sequence at all: the reference agrees
        no_seq = dict(cu_seqlens=torch.tensor([0]))
        ours, ref = eo.masked_quantile(torch.empty(0), None, q, **no_seq), R.masked_quantile_ref(torch.empty(0), None, q, **no_seq)
        assert ours.shape == ref.shape == ((2, 0) if isinstance(q, torch.Tensor) else (0,))
    assert torch.isnan(eo.masked_quantile(torch.empty(0), None, 0.5, cu_seqlens=torch.tensor([0, 0]))).all()


def test_non_contiguous_inputs():
    x, mask = make_batch(30, 7, seed=12)
    xt, mt = x.t(), mask.t()
    _same(eo.masked_quantile(xt, mt, 0.6), eo.masked_quantile(xt.contiguous(), mt.contiguous(), 0.6))
    xs, ms = x.reshape(-1)[::3], mask.reshape(-1)[::3]
    cu = torch.tensor([0, 20, 20, 70])
    _same(eo.masked_quantile(xs, ms, 0.6, cu_seqlens=cu), eo.masked_quantile(xs.contiguous(), ms, 0.6, cu_seqlens=cu))


def test_not_differentiable():
    x = torch.rand(3, 9, requires_grad=True)
    out = eo.masked_quantile(x, None, 0.5)
    assert not out.requires_grad


@pytest.mark.slow
def test_twenty_million_entries():
    # torch.quantile refuses inputs of more than 16M elements; the op has no cap.
    n = 20_000_000
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, generator=gen)
    mask = torch.rand(n, generator=gen) < 0.9
    q = torch.tensor([0.05, 0.8])
    ours = eo.masked_quantile(x, mask, q, per_sequence=False)
    valid = x[mask].double().numpy()
    assert valid.size > 1 << 24
    ref = torch.from_numpy(np.quantile(valid, q.double().numpy(), method="linear"))
    _same(ours, ref)
    # Two packed sequences of 10M each, per sequence.
    cu = torch.tensor([0, n // 2, n])
    halves = [x[:n // 2][mask[:n // 2]].double().numpy(), x[n // 2:][mask[n // 2:]].double().numpy()]
    ref = torch.tensor([np.quantile(h, 0.8, method="linear") for h in halves])
    _same(eo.masked_quantile(x, mask, 0.8, cu_seqlens=cu), ref)


@pytest.mark.parametrize("variant", ["rows", "rows_q_vector", "packed", "over_all", "bfloat16", "q_0d"])
def test_opcheck(variant, backend):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 12, generator=gen)
    mask = torch.rand(4, 12, generator=gen) > 0.3
    q, q_scalar, per_sequence, cu = None, 0.7, True, None
    if variant == "rows_q_vector":
        q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    elif variant == "packed":
        x, mask, cu = x.reshape(-1), mask.reshape(-1), torch.tensor([0, 10, 30, 48], dtype=torch.int32)
    elif variant == "over_all":
        per_sequence = False
    elif variant == "bfloat16":
        x = x.bfloat16()
    elif variant == "q_0d":
        q = torch.tensor(0.25, dtype=torch.float64)
    torch.library.opcheck(torch.ops.entropy_ops.masked_quantile.default,
                          (x, mask, q, q_scalar, per_sequence, cu, backend))


def test_compile_fullgraph():
    torch._dynamo.reset()
    x, mask = make_batch(5, 33, seed=9)
    xp, mp, cu = make_packed([6, 0, 11, 4], seed=10)
    qt = torch.tensor([0.25, 0.75])

    def fn(x, mask, xp, mp, cu, qt):
        return (eo.masked_quantile(x, mask, 0.8), eo.masked_quantile(x, mask, qt, per_sequence=False),
                eo.masked_quantile(xp, mp, qt, cu_seqlens=cu), eo.masked_quantile(xp, mp, qt[0], cu_seqlens=cu))

    compiled = torch.compile(fn, fullgraph=True)
    for a, b in zip(compiled(x, mask, xp, mp, cu, qt), fn(x, mask, xp, mp, cu, qt)):
        _same(a, b)
    # New shapes: a dynamic-shape recompilation.
    (x, mask), (xp, mp, cu) = make_batch(3, 20, seed=11), make_packed([4, 9, 0, 0, 13], seed=12)
    for a, b in zip(compiled(x, mask, xp, mp, cu, qt[:1]), fn(x, mask, xp, mp, cu, qt[:1])):
        _same(a, b)


_X = torch.rand(3, 8)
_M = _X > 0.5
_CU = torch.tensor([0, 3, 8])


@pytest.mark.parametrize("call, error, name", [
    (lambda: eo.masked_quantile(_X, _M, 1.5), ValueError, "q"),
    (lambda: eo.masked_quantile(_X, _M, -0.1), ValueError, "q"),
    (lambda: eo.masked_quantile(_X, _M, float("nan")), ValueError, "q"),
    (lambda: eo.masked_quantile(_X, _M, True), TypeError, "q"),
    (lambda: eo.masked_quantile(_X, _M, "0.5"), TypeError, "q"),
    (lambda: eo.masked_quantile(_X, _M, torch.tensor([1, 2])), TypeError, "q"),
    (lambda: eo.masked_quantile(_X, _M, torch.rand(2, 2)), ValueError, "q"),
    (lambda: eo.masked_quantile(_X, _M, torch.tensor([0.5, 1.2])), ValueError, "q"),
    (lambda: eo.masked_quantile(_X, _M, torch.tensor(-0.5)), ValueError, "q"),
    (lambda: eo.masked_quantile(_X, _M.float(), 0.5), TypeError, "mask"),
    (lambda: eo.masked_quantile(_X, _M[:, :7], 0.5), ValueError, "mask"),
    (lambda: eo.masked_quantile(_X.int(), _M, 0.5), TypeError, "values"),
    (lambda: eo.masked_quantile(_X[0], None, 0.5), ValueError, "values"),
    (lambda: eo.masked_quantile(_X, _M, 0.5, per_sequence=1), TypeError, "per_sequence"),
    (lambda: eo.masked_quantile(_X[0], None, 0.5, cu_seqlens=_CU.double()), TypeError, "cu_seqlens"),
    (lambda: eo.masked_quantile(_X[0], _M, 0.5, cu_seqlens=_CU), ValueError, "mask"),
    (lambda: eo.masked_quantile(_X, None, 0.5, cu_seqlens=_CU), ValueError, "values"),
    (lambda: eo.masked_quantile(_X[0], None, 0.5, cu_seqlens=torch.tensor([0, 9])), ValueError, "cu_seqlens"),
    (lambda: eo.masked_quantile(_X[0], None, 0.5, False, torch.tensor([0, 9])), ValueError, "cu_seqlens"),
])
def test_bad_arguments_name_themselves(call, error, name):
    with pytest.raises(error, match=f"^{name}:"):
        call()
