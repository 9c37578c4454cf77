"""``token_stats`` (SPEC §3.1) vs the float64 reference: V at regime boundaries, every dtype,
special rows, labels, temperatures, mask; closed forms on constructed rows; the first-order
entropy change of a policy-gradient step; opcheck, ``torch.compile`` and dispatch."""
import math

import pytest
import torch

import entropy_ops as eo
from conftest import (
    FINITE_KINDS,
    FLOAT_DTYPES,
    NAN_KINDS,
    eager_z,
    acc_dtype,
    assert_within_eager_bound,
    make_labels,
    make_rows,
)
from entropy_ops.reference import token_stats_ref

VOCABS = [1, 2, 111, 1023, 32000]
STATS = ("lse", "entropy", "max_logp", "collision", "varentropy", "self_certainty", "entropy_drift")


def eager_token_stats(logits, labels=None, temperature=1.0, ignore_index=-100, mask=None):
    """The yardstick: each statistic by its definition in eager torch with fp32 upcast."""
    z = eager_z(logits, temperature)
    lse = torch.logsumexp(z, dim=-1)
    log_p = torch.log_softmax(z, dim=-1)
    p = torch.softmax(z, dim=-1)
    live = p > 0
    h = lse - (p * torch.where(live, z, 0)).sum(-1)
    stats = {
        "lse": lse,
        "entropy": h,
        "max_logp": z.amax(-1) - lse,
        "collision": (p * p).sum(-1),
        "varentropy": torch.where(live, p * log_p ** 2, 0).sum(-1) - h ** 2,
        "self_certainty": lse - z.mean(-1) - math.log(z.shape[-1]),
        "entropy_drift": torch.where(live, p * p * (log_p + h.unsqueeze(-1)), 0).sum(-1),
        "logp": None,
    }
    if labels is not None:
        y = labels.long()
        z_y = z.gather(-1, y.clamp(0, z.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
        stats["logp"] = torch.where(y == ignore_index, 0, z_y - lse)
    if mask is not None:
        stats = {k: None if v is None else torch.where(mask, v, 0) for k, v in stats.items()}
    return eo.TokenStats(**stats)


def assert_stats_match(ours, x, kinds, labels=None, temperature=1.0, mask=None, ignore_index=-100):
    ref = token_stats_ref(x, labels, temperature, ignore_index, mask)
    eager = eager_token_stats(x, labels, temperature, ignore_index, mask)
    for name in STATS + (("logp",) if labels is not None else ()):
        value = getattr(ours, name)
        assert value.dtype == acc_dtype(x.dtype), name
        assert value.shape == x.shape[:-1], name
        assert_within_eager_bound(value, getattr(ref, name), getattr(eager, name), kinds, what=name)
    if labels is None:
        assert ours.logp is None


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_token_stats_matches_reference(backend, dtype, vocab):
    n = 7 if vocab >= 32000 else 13
    x, kinds = make_rows(n, vocab, dtype, kinds=FINITE_KINDS + NAN_KINDS, seed=vocab)
    stats = eo.token_stats(x)
    assert isinstance(stats, eo.TokenStats)
    assert_stats_match(stats, x, kinds)
    for i, kind in enumerate(kinds):
        if kind in NAN_KINDS:
            assert all(torch.isnan(getattr(stats, name)[i]) for name in STATS), kind
        elif torch.isneginf(x[i]).any():  # -inf entries: mean_j z_j = -inf
            assert stats.self_certainty[i].item() == float("inf")
    assert (stats.varentropy[torch.isfinite(stats.varentropy)] >= 0).all()


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("vocab", [2, 1023])
def test_token_stats_labels(backend, dtype, label_dtype, vocab):
    x, kinds = make_rows(11, vocab, dtype, kinds=FINITE_KINDS + NAN_KINDS, seed=3)
    y = make_labels(11, vocab, label_dtype, n_ignored=3, seed=4)
    stats = eo.token_stats(x, y)
    assert_stats_match(stats, x, kinds, labels=y)
    assert (stats.logp[y == -100] == 0).all()
    y1 = torch.where(y == -100, 1, y)
    stats1 = eo.token_stats(x, y1, ignore_index=1)
    assert_stats_match(stats1, x, kinds, labels=y1, ignore_index=1)
    assert (stats1.logp[y1 == 1] == 0).all()


@pytest.mark.parametrize("temperature", ["float", "tensor_0d", "per_row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_token_stats_temperature_and_mask(backend, dtype, temperature):
    x, kinds = make_rows(12, 111, dtype, kinds=FINITE_KINDS + NAN_KINDS, seed=5)
    x, kinds = x.reshape(3, 4, 111), kinds
    y = make_labels(12, 111, seed=6).reshape(3, 4)
    acc = acc_dtype(dtype)
    t = {"float": 0.7, "tensor_0d": torch.tensor(1.3, dtype=acc),
         "per_row": (torch.rand(3, 4, generator=torch.Generator().manual_seed(2)) + 0.5).to(acc)}[temperature]
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(9)) > 0.3
    stats = eo.token_stats(x, y, t, mask=mask)
    assert_stats_match(stats, x, kinds, labels=y, temperature=t, mask=mask)
    for name in STATS + ("logp",):
        assert (getattr(stats, name)[~mask] == 0).all(), name


def test_masked_nan_rows_give_zero(backend):
    x = torch.full((2, 5), float("nan"))
    x[1] = torch.arange(5.0)
    stats = eo.token_stats(x, mask=torch.tensor([False, True]))
    for name in STATS:
        assert getattr(stats, name)[0].item() == 0, name
        assert torch.isfinite(getattr(stats, name)[1]), name


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_closed_forms(backend, dtype):
    """Uniform row: H = log V, collision = 1/V, varentropy = self_certainty = entropy_drift = 0,
    max_logp = -log V. One-hot row (rest -inf): H = 0, collision = 1, max_logp = 0, varentropy =
    entropy_drift = 0, self_certainty = +inf."""
    vocab = 1000
    x = torch.full((2, vocab), 2.5, dtype=dtype)
    x[1] = float("-inf")
    x[1, 17] = 1.0
    stats = eo.token_stats(x)
    log_v = math.log(vocab)
    close = dict(abs=1e-6, rel=1e-6)
    assert stats.entropy[0].item() == pytest.approx(log_v, **close)
    assert stats.collision[0].item() == pytest.approx(1 / vocab, **close)
    assert stats.max_logp[0].item() == pytest.approx(-log_v, **close)
    assert stats.self_certainty[0].item() == pytest.approx(0, **close)
    assert stats.varentropy[0].item() == 0 and stats.entropy_drift[0].item() == 0
    assert stats.entropy[1].item() == 0 and stats.collision[1].item() == 1
    assert stats.max_logp[1].item() == 0 and stats.lse[1].item() == 1.0
    assert stats.varentropy[1].item() == 0 and stats.entropy_drift[1].item() == 0
    assert stats.self_certainty[1].item() == float("inf")


def test_vocab_one_and_empty(backend):
    stats = eo.token_stats(torch.tensor([[4.0]]))
    assert [getattr(stats, name).item() for name in STATS] == [4.0, 0, 0, 1, 0, 0, 0]
    empty = eo.token_stats(torch.empty(0, 3, 9), torch.empty(0, 3, dtype=torch.long))
    assert all(getattr(empty, name).shape == (0, 3) for name in STATS + ("logp",))


def test_entropy_drift_predicts_policy_gradient_step(backend):
    """SPEC §3.1: a step ``z' = z + eta A grad_z log p_y = z + eta A (onehot(y) - p)`` changes H by
    ``-eta A [p_y (log p_y + H) - entropy_drift]`` to first order (pi_old = pi: ratio 1)."""
    gen = torch.Generator().manual_seed(12)
    z = torch.randn(7, generator=gen, dtype=torch.float64) * 1.5
    eta = 1e-4
    for advantage in (1.3, -0.7):
        for y in range(7):
            stats = eo.token_stats(z[None], torch.tensor([y]))
            h, drift, logp_y = stats.entropy[0].item(), stats.entropy_drift[0].item(), stats.logp[0].item()
            p = torch.softmax(z, -1)
            z_new = z + eta * advantage * (torch.nn.functional.one_hot(torch.tensor(y), 7).double() - p)
            measured = eo.token_stats(z_new[None]).entropy[0].item() - h
            predicted = -eta * advantage * (math.exp(logp_y) * (logp_y + h) - drift)
            assert measured == pytest.approx(predicted, rel=1e-3), (advantage, y)


def test_lse_of_shifted_rows(backend):
    """lse = max / T + log S on rows shifted by 1e4 at temperatures that are not powers of two,
    rounded once (the torch path rounded twice in float32: up to 1.5 ulp off)."""
    from selective_common import check_lse_of_shifted_rows
    check_lse_of_shifted_rows()


def test_chunked_equals_unchunked(monkeypatch):
    from entropy_ops.backends import torch_backend
    x, kinds = make_rows(40, 111, seed=21)
    y = make_labels(40, 111, seed=22)
    with eo.use_backend("torch"):
        whole = eo.token_stats(x, y)
        monkeypatch.setattr(torch_backend, "_CHUNK_ELEMS", 111 * 3)
        chunked = eo.token_stats(x, y)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_outputs_are_not_differentiable(backend):
    x = torch.randn(3, 10, requires_grad=True)
    stats = eo.token_stats(x, torch.tensor([1, 2, 3]))
    assert not any(v.requires_grad for v in stats)
    with pytest.raises(RuntimeError, match="does not require grad"):
        stats.entropy.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("variant", ["plain", "labels_mask", "tensor_0d", "per_row"])
def test_opcheck(backend, dtype, variant):
    gen = torch.Generator().manual_seed(91)
    acc = acc_dtype(dtype)
    x = torch.randn(2, 3, 17, generator=gen).to(dtype).requires_grad_(True)
    y = torch.randint(17, (2, 3), generator=gen)
    y[0, 1] = -100
    mask = torch.tensor([[True, False, True], [True, True, True]])
    t = (torch.rand(2, 3, generator=gen) + 0.5).to(acc)
    args = {
        "plain": (x, None, None, 1.0, -100, None),
        "labels_mask": (x, y.int(), None, 0.7, -100, mask),
        "tensor_0d": (x, y, torch.tensor(1.3, dtype=acc), 1.0, -100, None),
        "per_row": (x, y, t, 1.0, -100, mask),
    }[variant]
    torch.library.opcheck(torch.ops.entropy_ops.token_stats.default, (*args, backend))


@pytest.mark.parametrize("temperature", ["tensor_0d", "float"])
def test_compile_fullgraph(backend, temperature):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(101)
    x = torch.randn(2, 3, 40, generator=gen)
    y = torch.randint(40, (2, 3), generator=gen)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    t = torch.tensor(0.8) if temperature == "tensor_0d" else 0.8

    def fn(x, y, t, mask):
        stats = eo.token_stats(x, y, t, mask=mask)
        return stats.entropy + stats.varentropy, stats.logp, stats.self_certainty

    compiled = torch.compile(fn, fullgraph=True)
    for a, b in zip(compiled(x, y, t, mask), fn(x, y, t, mask)):
        assert torch.equal(a, b)


def test_dispatch_auto_picks_the_native_kernel():
    x = torch.randn(2, 8)
    expected = "cpu" if eo.available_backends()["cpu"][0] else "torch"
    with eo.use_backend("auto"):
        auto = eo.token_stats(x)
    with eo.use_backend(expected):
        forced = eo.token_stats(x)
    for a, b in zip(auto, forced):
        assert a is b is None or torch.equal(a, b)


def test_batch_invariance():
    if not eo.available_backends()["cpu"][0]:
        pytest.skip("cpu backend not built")
    x, _ = make_rows(33, 4000, torch.bfloat16, seed=4)
    y = make_labels(33, 4000)
    with eo.use_backend("cpu"):
        whole = eo.token_stats(x, y)
        for i in (0, 17, 32):
            one = eo.token_stats(x[i:i + 1], y[i:i + 1])
            for a, b in zip(one, whole):
                assert torch.equal(a, b[i:i + 1])


def test_out_of_range_label_raises_on_cpu(backend):
    with pytest.raises(ValueError, match="labels"):
        eo.token_stats(torch.randn(2, 8), torch.tensor([1, 8]))


@pytest.mark.parametrize("call, error, name", [
    (lambda x: eo.token_stats(x.long()), TypeError, "logits"),
    (lambda x: eo.token_stats(x, torch.zeros(3)), TypeError, "labels"),
    (lambda x: eo.token_stats(x, torch.zeros(2, dtype=torch.long)), ValueError, "labels"),
    (lambda x: eo.token_stats(x, temperature=0.0), ValueError, "temperature"),
    (lambda x: eo.token_stats(x, temperature=torch.ones(2)), ValueError, "temperature"),
    (lambda x: eo.token_stats(x, ignore_index=1.5), TypeError, "ignore_index"),
    (lambda x: eo.token_stats(x, mask=torch.ones(3)), TypeError, "mask"),
    (lambda x: eo.token_stats(x, mask=torch.ones(2, dtype=torch.bool)), ValueError, "mask"),
])
def test_bad_inputs_name_the_argument(call, error, name):
    with pytest.raises(error, match=f"^{name}:"):
        call(torch.randn(3, 8))
