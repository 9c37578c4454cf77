"""``min_p_logprobs`` (SPEC §3.1, Lp-Reg's proxy) on every CPU backend vs the float64 reference:
V at regime boundaries, every dtype, ``min_p`` in {0, 0.02, 0.5, 1}, special rows, labels that are
filtered / ignored / int32, temperatures, row mask, gradients with the kept set held fixed, batch
invariance, opcheck, ``torch.compile`` and bad arguments."""
import pytest
import torch

import entropy_ops as eo
from conftest import (
    FINITE_KINDS, FLOAT_DTYPES, NAN_KINDS, acc_dtype, eager_grad, make_labels, make_rows, ours_grad, reference_grad,
)
from entropy_ops import reference as R
from selective_common import check_min_p_bad_rows_have_a_nan_gradient, clear_of_min_p_cut, eager_min_p_logprobs, within

VOCABS = [1, 2, 111, 1023, 1024, 32000]
MIN_PS = [0.0, 0.02, 0.5, 1.0]


def _inputs(n_rows, vocab, dtype, seed=0):
    kinds = FINITE_KINDS + NAN_KINDS if vocab > 2 else ()
    x, row_kinds = make_rows(n_rows, vocab, dtype, kinds=kinds, seed=seed)
    return x, make_labels(n_rows, vocab, seed=seed + 1), row_kinds


@pytest.mark.parametrize("min_p", MIN_PS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_matches_reference(backend, dtype, vocab, min_p):
    x, y, _ = _inputs(13, vocab, dtype)
    # Labels near the top of each row as well, so that kept labels are common for large min_p.
    y[::2] = x[::2].float().argmax(-1)
    t = torch.rand(13, dtype=acc_dtype(dtype)) + 0.5
    logp = eo.min_p_logprobs(x, y, min_p, t)
    assert logp.dtype == acc_dtype(dtype) and logp.shape == (13,)
    clear = clear_of_min_p_cut(x, min_p, t)
    assert clear.sum() >= 10
    ref = R.min_p_logprobs_ref(x, y, min_p, t)
    within(logp[clear], ref[clear], eager_min_p_logprobs(x, y, min_p, t)[clear])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_min_p_zero_is_plain_logprob(backend, dtype):
    x, y, _ = _inputs(12, 1023, dtype)
    logp, _ = eo.logprobs_and_entropy(x, y)
    torch.testing.assert_close(eo.min_p_logprobs(x, y, 0.0), logp, rtol=1e-6, atol=2e-6, equal_nan=True)


def test_min_p_one_keeps_the_argmax_ties(backend):
    x = torch.tensor([[1.0, 3.0, 3.0, -2.0], [0.5, 0.0, -1.0, 0.25]])
    y = torch.tensor([2, 1])
    out = eo.min_p_logprobs(x, y, 1.0)
    torch.testing.assert_close(out[0], torch.tensor(-0.6931471805599453), rtol=0, atol=1e-7)
    assert out[1] == float("-inf")


def test_labels_ignored_filtered_and_int32(backend):
    x = torch.tensor([[4.0, 0.0, -5.0, 3.9], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([2, -100, 3], dtype=torch.int32)
    out = eo.min_p_logprobs(x, y, 0.1)
    assert out[0] == float("-inf") and out[1] == 0
    torch.testing.assert_close(out[2], torch.tensor(-1.3862943611198906), rtol=0, atol=1e-7)
    out = eo.min_p_logprobs(x, torch.tensor([0, 5, 1]), 0.1, ignore_index=5)
    assert out[1] == 0


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_gradient_matches_reference(backend, dtype, min_p):
    x, y, _ = _inputs(9, 300, dtype, seed=21)
    y[::2] = x[::2].float().argmax(-1)
    t = torch.tensor(0.9, dtype=acc_dtype(dtype))
    w = torch.randn(9, dtype=acc_dtype(dtype))
    w[1] = 0
    ref_out = R.min_p_logprobs_ref(x, y, min_p, t)
    # Only rows with a finite reference log-prob carry a gradient; -inf rows must give zero rows.
    finite = torch.isfinite(ref_out)
    w = torch.where(finite, w, 0)

    def masked_sum(fn):
        return lambda z, *a: torch.where(finite, fn(z, *a), 0)

    ours = ours_grad(masked_sum(eo.min_p_logprobs), x, y, min_p, t, weights=(w,))
    ref = reference_grad(masked_sum(R.min_p_logprobs_ref), x, y, min_p, t, weights=(w,))
    eager = eager_grad(masked_sum(eager_min_p_logprobs), x, y, min_p, t, weights=(w,))
    clear = clear_of_min_p_cut(x, min_p, t)
    within(ours[clear], ref[clear], eager[clear])
    assert (ours[~finite] == 0).all()


def test_filtered_label_gives_zero_gradient(backend):
    x = torch.tensor([[4.0, 0.0, -5.0, 3.9]], requires_grad=True)
    out = eo.min_p_logprobs(x, torch.tensor([2]), 0.1)
    assert out.item() == float("-inf")
    (g,) = torch.autograd.grad(out.sum(), x)
    assert (g == 0).all()


def test_masked_and_bad_rows(backend):
    x, y, kinds = _inputs(9, 111, torch.float32)
    mask = torch.ones(9, dtype=torch.bool)
    bad_rows = [i for i, k in enumerate(kinds) if k in NAN_KINDS]
    mask[bad_rows[0]] = False
    xg = x.clone().requires_grad_(True)
    out = eo.min_p_logprobs(xg, y, 0.05, mask=mask)
    assert out[bad_rows[0]] == 0
    for i in bad_rows[1:]:
        assert torch.isnan(out[i]) or y[i] == -100
    (g,) = torch.autograd.grad(torch.where(torch.isfinite(out), out, 0).sum(), xg)
    assert (g[~mask] == 0).all()


@pytest.mark.parametrize("min_p", [0.0, 0.05])
def test_bad_rows_have_a_nan_gradient(backend, min_p):
    check_min_p_bad_rows_have_a_nan_gradient(min_p)


def test_out_of_range_label_raises_on_cpu(backend):
    with pytest.raises(ValueError, match="labels"):
        eo.min_p_logprobs(torch.randn(2, 8), torch.tensor([1, 8]))


def test_leading_shape_and_empty(backend):
    x = torch.randn(2, 3, 50)
    y = torch.randint(50, (2, 3))
    out = eo.min_p_logprobs(x, y, 0.01)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.reshape(-1), eo.min_p_logprobs(x.reshape(6, 50), y.reshape(6), 0.01))
    assert eo.min_p_logprobs(torch.empty(0, 7), torch.empty(0, dtype=torch.long)).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_batch_invariance(dtype):
    if not eo.available_backends()["cpu"][0]:
        pytest.skip("cpu backend not built")
    x, y, _ = _inputs(33, 4000, dtype, seed=4)
    with eo.use_backend("cpu"):
        whole = eo.min_p_logprobs(x, y, 0.02)
        for i in (0, 17, 32):
            assert torch.equal(eo.min_p_logprobs(x[i:i + 1], y[i:i + 1], 0.02), whole[i:i + 1])


@pytest.mark.parametrize("variant", ["plain", "mask", "tensor_0d", "per_row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_opcheck(backend, dtype, variant):
    gen = torch.Generator().manual_seed(91)
    acc = acc_dtype(dtype)
    x = torch.randn(2, 3, 17, generator=gen).to(dtype).requires_grad_(True)
    # Labels at the argmax: kept for any min_p, so every gradient check sees finite values.
    y = x.detach().float().argmax(-1)
    y[0, 1] = -100
    mask = torch.tensor([[True, False, True], [True, True, True]])
    t = (torch.rand(2, 3, generator=gen) + 0.5).to(acc)
    args = {
        "plain": (x, y, None, 1.0, -100, 0.02, None),
        "mask": (x, y.int(), None, 0.7, -100, 0.1, mask),
        "tensor_0d": (x, y, torch.tensor(1.3, dtype=acc), 1.0, -100, 0.0, None),
        "per_row": (x, y, t, 1.0, -100, 0.3, mask),
    }[variant]
    torch.library.opcheck(torch.ops.entropy_ops.min_p_logprobs.default, (*args, backend))
    x0, y0, t0, ts, ignore, min_p, m = args
    _, row_max, log_norm = torch.ops.entropy_ops.min_p_logprobs.default(x0.detach(), *args[1:], backend)
    grad = torch.randn(row_max.shape, generator=gen).to(row_max.dtype)
    torch.library.opcheck(torch.ops.entropy_ops.min_p_logprobs_bwd.default,
                          (x0.detach(), y0, t0, ts, ignore, min_p, m, row_max, log_norm, grad, backend))


@pytest.mark.parametrize("temperature", ["tensor_0d", "float"])
def test_compile_fullgraph(backend, temperature):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(101)
    x = torch.randn(2, 3, 40, generator=gen, requires_grad=True)
    y = x.detach().argmax(-1)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    t = torch.tensor(0.8) if temperature == "tensor_0d" else 0.8

    def fn(x, y, t, mask):
        return eo.min_p_logprobs(x, y, 0.05, t, mask=mask)

    out_c, out_e = torch.compile(fn, fullgraph=True)(x, y, t, mask), fn(x, y, t, mask)
    assert torch.equal(out_c, out_e)
    (g_c,) = torch.autograd.grad(out_c.sum(), x)
    (g_e,) = torch.autograd.grad(out_e.sum(), x)
    assert torch.equal(g_c, g_e)


@pytest.mark.parametrize("call, error, name", [
    (lambda x, y: eo.min_p_logprobs(x, y, -0.1), ValueError, "min_p"),
    (lambda x, y: eo.min_p_logprobs(x, y, 1.5), ValueError, "min_p"),
    (lambda x, y: eo.min_p_logprobs(x, y, float("nan")), ValueError, "min_p"),
    (lambda x, y: eo.min_p_logprobs(x, y, False), TypeError, "min_p"),
    (lambda x, y: eo.min_p_logprobs(x, y.float()), TypeError, "labels"),
    (lambda x, y: eo.min_p_logprobs(x, y[:2]), ValueError, "labels"),
    (lambda x, y: eo.min_p_logprobs(x, y, temperature=0.0), ValueError, "temperature"),
    (lambda x, y: eo.min_p_logprobs(x, y, ignore_index=0.5), TypeError, "ignore_index"),
    (lambda x, y: eo.min_p_logprobs(x, y, mask=torch.ones(3)), TypeError, "mask"),
])
def test_bad_arguments_name_themselves(call, error, name):
    with pytest.raises(error, match=f"^{name}:"):
        call(torch.randn(3, 8), torch.tensor([1, 2, 3]))
