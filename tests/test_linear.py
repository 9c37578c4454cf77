"""linear_logprobs_and_entropy on the CPU backends ("torch", "cpu"): vs the float64 reference
(SPEC §2's bound against eager F.linear + the fp32-upcast formula), gradcheck, chunk and batch
invariance, [N, K] labels, masks, ignore_index. Bad input, opcheck, torch.compile, layouts, frozen
heads and peak memory: test_linear_checks.py."""
import pytest
import torch
import torch.nn.functional as F

import entropy_ops as eo
from entropy_ops import reference as R

from conftest import assert_within_eager_bound, skip_unless_available
from gpu_common import DEVICE, EMULATED, GPU_BACKENDS, sync_debug_error

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (bias, logit_scale, softcap, temperature kind)
OPTIONS = [
    (False, 1.0, None, "scalar"),
    (True, 0.7, None, "per_row"),
    (True, 1.0, 4.0, "tensor0d"),
    (False, 2.0, 3.0, "per_row"),
]


def make_inputs(n=37, d=24, vocab=300, dtype=torch.float32, k=None, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype)
    w = (torch.randn(vocab, d, generator=g) * 0.4).to(dtype)
    b = torch.randn(vocab, generator=g).to(dtype) if bias else None
    y = torch.randint(vocab, (n,) if k is None else (n, k), generator=g)
    y.view(-1)[3] = -100
    return h, w, b, y


def temperature_of(kind, n):
    if kind == "scalar":
        return 0.8
    if kind == "tensor0d":
        return torch.tensor(1.3)
    return torch.rand(n, generator=torch.Generator().manual_seed(5)) + 0.5


def eager(h, w, y, b=None, temperature=1.0, ignore_index=-100, mask=None, logit_scale=1.0, softcap=None):
    """What a trainer runs today: F.linear in the input dtype, then the fp32-upcast formula."""
    z = F.linear(h, w, b).float() * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        z = z / temperature.float()[:, None]
    else:
        z = z / temperature
    lse = torch.logsumexp(z, -1)
    h_row = lse - (torch.softmax(z, -1) * z).sum(-1)
    yk = y if y.dim() == 2 else y[:, None]
    logp = z.gather(-1, yk.clamp(0, z.shape[-1] - 1)) - lse[:, None]
    logp = torch.where(yk == ignore_index, 0, logp)
    if mask is not None:
        logp, h_row = torch.where(mask[:, None], logp, 0), torch.where(mask, h_row, 0)
    return (logp if y.dim() == 2 else logp[:, 0]), h_row


def grads(fn, h, w, b, weights, **kw):
    """Gradients wrt (hidden, weight, bias) of ``sum(w0 * logp) + sum(w1 * H)``."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (h, w, b) if t is not None]
    hh, ww = leaves[:2]
    bb = leaves[2] if b is not None else None
    logp, ent = fn(hh, ww, bias=bb, **kw)
    loss = (weights[0].to(logp.dtype) * logp).sum() + (weights[1].to(ent.dtype) * ent).sum()
    return torch.autograd.grad(loss, leaves)


def _ours(h, w, bias=None, **kw):
    return eo.linear_logprobs_and_entropy(h, w, bias=bias, **kw)


def _eager(h, w, bias=None, y=None, labels=None, **kw):
    kw.pop("chunk_size", None)
    return eager(h, w, labels, bias, **kw)


def _ref(h, w, bias=None, labels=None, **kw):
    kw.pop("chunk_size", None)
    return R.linear_logprobs_and_entropy_ref(h, w, labels, bias, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"b{int(o[0])}-s{o[1]}-c{o[2]}-{o[3]}")
@pytest.mark.parametrize("k", (None, 3))
def test_matches_reference(backend, dtype, options, k):
    has_bias, scale, softcap, t_kind = options
    h, w, b, y = make_inputs(dtype=dtype, k=k, bias=has_bias)
    n = h.shape[0]
    mask = torch.ones(n, dtype=torch.bool)
    mask[6] = False
    kw = dict(labels=y, temperature=temperature_of(t_kind, n), mask=mask, logit_scale=scale, softcap=softcap)
    logp, ent = eo.linear_logprobs_and_entropy(h, w, bias=b, chunk_size=10, **kw)
    assert logp.dtype == ent.dtype == torch.float32
    assert logp.shape == y.shape and ent.shape == (n,)
    ref_logp, ref_h = _ref(h, w, b, **kw)
    eager_logp, eager_h = _eager(h, w, b, **kw)
    assert_within_eager_bound(ent, ref_h, eager_h, what="entropy")
    assert_within_eager_bound(logp, ref_logp, eager_logp, what="logp")
    assert ent[6] == 0 and (logp[6] == 0).all()

    g = torch.Generator().manual_seed(7)
    weights = (torch.randn(y.shape, generator=g), torch.randn(n, generator=g))
    ours = grads(_ours, h, w, b, weights, chunk_size=10, **kw)
    ref = grads(_ref, h.double(), w.double(), None if b is None else b.double(), weights, **kw)
    eag = grads(_eager, h, w, b, weights, **kw)
    for name, o, r, e in zip(("hidden", "weight", "bias"), ours, ref, eag):
        assert o.dtype == dtype, name
        assert_within_eager_bound(o, r, e, what=f"grad {name}")


@pytest.mark.parametrize("k", (None, 2))
def test_gradcheck_float64(backend, k):
    h, w, b, y = make_inputs(n=6, d=5, vocab=9, dtype=torch.float64, k=k)
    t = torch.rand(6, dtype=torch.float64) + 0.5
    mask = torch.tensor([True, True, False, True, True, True])

    def fn(hh, ww, bb):
        return eo.linear_logprobs_and_entropy(hh, ww, y, bb, temperature=t, mask=mask, logit_scale=0.9,
                                              softcap=2.0, chunk_size=4)

    inputs = [x.clone().requires_grad_(True) for x in (h, w, b)]
    assert torch.autograd.gradcheck(fn, inputs)


def test_chunk_size_does_not_change_bits():
    """Native row kernels + products of >= 16 rows: the same logp, entropy and grad_hidden bits for
    every chunk size (grad_weight sums over chunks: equal up to rounding)."""
    skip_unless_available("cpu")
    h, w, b, y = make_inputs(n=70, d=40, vocab=1000, bias=True)
    weights = (torch.randn(70), torch.randn(70))
    results = []
    with eo.use_backend("cpu"):
        for chunk in (None, 1, 5, 16, 17, 33, 64, 70, 1000):
            out = eo.linear_logprobs_and_entropy(h, w, y, b, temperature=0.9, softcap=5.0, chunk_size=chunk)
            g = grads(_ours, h, w, b, weights, labels=y, temperature=0.9, softcap=5.0, chunk_size=chunk)
            results.append((chunk, out, g))
    _, (logp0, h0), g0 = results[0]
    for chunk, (logp, ent), g in results[1:]:
        assert torch.equal(logp, logp0) and torch.equal(ent, h0), f"chunk_size={chunk} changed the forward bits"
        assert torch.equal(g[0], g0[0]), f"chunk_size={chunk} changed grad_hidden bits"
        torch.testing.assert_close(g[1], g0[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g[2], g0[2], rtol=1e-5, atol=1e-6)


def test_batch_invariance():
    """A row's results depend only on that row: a slice of the batch gives the same bits."""
    skip_unless_available("cpu")
    h, w, b, y = make_inputs(n=90, d=32, vocab=500)
    with eo.use_backend("cpu"):
        logp, ent = eo.linear_logprobs_and_entropy(h, w, y, b)
        for lo, hi in ((0, 1), (3, 10), (17, 90), (40, 41)):
            part_logp, part_h = eo.linear_logprobs_and_entropy(h[lo:hi], w, y[lo:hi], b)
            assert torch.equal(part_logp, logp[lo:hi]) and torch.equal(part_h, ent[lo:hi]), (lo, hi)


def test_k_labels_match_single_labels(backend):
    h, w, b, y = make_inputs(k=2)
    logp_k, h_k = eo.linear_logprobs_and_entropy(h, w, y, b)
    for j in range(2):
        logp_j, h_j = eo.linear_logprobs_and_entropy(h, w, y[:, j].contiguous(), b)
        torch.testing.assert_close(logp_k[:, j], logp_j, rtol=0, atol=2e-6)
        assert torch.equal(h_k, h_j)
    one, _ = eo.linear_logprobs_and_entropy(h, w, y[:, :1].contiguous(), b)
    assert one.shape == (h.shape[0], 1)


@pytest.mark.parametrize("vocab", (1, 7))
def test_k_labels_on_a_certain_token_at_a_low_temperature(backend, vocab):
    check_k_labels_on_a_certain_token(vocab)


def check_k_labels_on_a_certain_token(vocab):
    """Every candidate on the row's argmax, p = 1 at T = 1e-3 (found by a differential fuzzer): the
    gradient is ~0 (exactly 0 at V = 1), as eager's; formed as total p / T minus a scatter of
    g_k / T it was ulp(total) / T off, 5e-4. Also run by the Triton interpreter tests."""
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(8, 4, generator=g), torch.randn(vocab, 4, generator=g)
    y = (h @ w.T).argmax(-1, keepdim=True).repeat(1, 3)
    weights = (torch.randn(8, 3, generator=g), torch.randn(8, generator=g))

    def grads(fn, dtype):
        hh, ww = h.to(dtype).requires_grad_(True), w.to(dtype).requires_grad_(True)
        logp, ent = fn(hh, ww)
        return torch.autograd.grad((logp * weights[0].to(dtype)).sum() + (ent * weights[1].to(dtype)).sum(), [hh, ww])

    ours = grads(lambda a, c: eo.linear_logprobs_and_entropy(a, c, y, temperature=1e-3), torch.float32)
    ref = grads(lambda a, c: R.linear_logprobs_and_entropy_ref(a, c, y, temperature=1e-3), torch.float64)
    eager_ = grads(lambda a, c: eager(a, c, y, temperature=1e-3), torch.float32)
    for name, o, r, e in zip(("hidden", "weight"), ours, ref, eager_):
        assert_within_eager_bound(o, r, e, what=f"grad {name}")
        if vocab == 1:
            assert (o == 0).all(), f"grad {name}: a one-token head has constant logp and H"


def test_leading_dims_and_empty(backend):
    h, w, b, y = make_inputs(n=12)
    logp, ent = eo.linear_logprobs_and_entropy(h.view(3, 4, -1), w, y.view(3, 4), b)
    flat = eo.linear_logprobs_and_entropy(h, w, y, b)
    assert logp.shape == ent.shape == (3, 4)
    torch.testing.assert_close(logp.reshape(-1), flat[0], rtol=0, atol=0)
    empty_h = h[:0].clone().requires_grad_(True)
    logp, ent = eo.linear_logprobs_and_entropy(empty_h, w, y[:0], b)
    assert logp.shape == ent.shape == (0,)
    (logp.sum() + ent.sum()).backward()
    assert empty_h.grad.shape == (0, h.shape[1])


def test_non_contiguous_inputs(backend):
    h, w, b, y = make_inputs(n=18, d=12, vocab=90)
    h_big = torch.stack([h, h], -1).requires_grad_(True)
    w_big = torch.cat([w, w], 1).requires_grad_(True)
    h_strided, w_strided = h_big[..., 0], w_big[:, :12]  # column stride 2; row stride 24
    assert not h_strided.is_contiguous() and not w_strided.is_contiguous()
    weights = (torch.randn(18), torch.randn(18))
    logp, ent = eo.linear_logprobs_and_entropy(h_strided, w_strided, y, b)
    g_h, g_w = torch.autograd.grad((weights[0] * logp).sum() + (weights[1] * ent).sum(), (h_big, w_big))
    want = grads(_ours, h, w, b, weights, labels=y)
    torch.testing.assert_close(g_h[..., 0], want[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_w[:, :12], want[1], rtol=1e-6, atol=1e-7)
    assert (g_h[..., 1] == 0).all() and (g_w[:, 12:] == 0).all()
    torch.testing.assert_close((logp, ent), eo.linear_logprobs_and_entropy(h, w, y, b), rtol=1e-6, atol=1e-7)


def check_strided_bias():
    """A strided bias and an expanded (stride-0) one give what their contiguous copies give, values
    and gradients (the kernels read the bias with unit stride)."""
    h, w, _, y = make_inputs(n=10, d=8, vocab=90)
    b_big = torch.randn(90, 2, dtype=h.dtype)
    for bias in (b_big[:, 0], torch.full((1,), 0.3, dtype=h.dtype).expand(90)):
        got, want = [], []
        for b, out in ((bias, got), (bias.contiguous(), want)):
            b = b.detach().requires_grad_(True)
            logp, ent = eo.linear_logprobs_and_entropy(h, w, y, b)
            (g_b,) = torch.autograd.grad((logp * 0.7 + ent).sum(), b)
            out += [logp, ent, g_b]
        for a, c in zip(got, want):
            torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


def test_strided_bias(backend):
    check_strided_bias()


def test_masked_rows_are_zero_even_with_nan_hidden(backend):
    h, w, b, y = make_inputs(n=20)
    mask = torch.ones(20, dtype=torch.bool)
    mask[[2, 11]] = False
    h_nan = h.clone()
    h_nan[[2, 11]] = float("nan")
    kw = dict(labels=y, mask=mask, softcap=3.0)
    logp, ent = eo.linear_logprobs_and_entropy(h_nan, w, bias=b, **kw)
    clean_logp, clean_h = eo.linear_logprobs_and_entropy(h, w, bias=b, **kw)
    assert torch.equal(logp, clean_logp) and torch.equal(ent, clean_h)
    weights = (torch.randn(20), torch.randn(20))
    g_nan = grads(_ours, h_nan, w, b, weights, **kw)
    g = grads(_ours, h, w, b, weights, **kw)
    for a, c in zip(g_nan, g):
        assert not a.isnan().any()
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-7)
    assert (g_nan[0][[2, 11]] == 0).all()


def test_ignore_index_gives_zero_and_no_logp_gradient(backend):
    h, w, b, y = make_inputs(n=10)
    y[3] = 0  # make_inputs' -100 is a label like any other here: ignore_index is -1
    y[4] = 7
    y_ign = y.clone()
    y_ign[4] = -1
    logp, _ = eo.linear_logprobs_and_entropy(h, w, y_ign, b, ignore_index=-1)
    assert logp[4] == 0
    weights = (torch.randn(10), torch.zeros(10))
    g_ign = grads(_ours, h, w, b, weights, labels=y_ign, ignore_index=-1)
    weights_zeroed = (torch.where(torch.arange(10) == 4, 0.0, weights[0]), weights[1])
    g_ref = grads(_ours, h, w, b, weights_zeroed, labels=y, ignore_index=-1)
    for a, c in zip(g_ign, g_ref):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-7)


def test_out_of_range_label_raises_on_cpu(backend):
    h, w, b, y = make_inputs(n=5, vocab=30)
    y[1] = 30
    with pytest.raises(ValueError, match="labels"):
        eo.linear_logprobs_and_entropy(h, w, y, b)


# ---- GPU (`pytest -m gpu`; on the CUDA emulator without a GPU): not yet run on a GPU ---------------

@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() or EMULATED), reason="needs a CUDA device or the CUDA emulator")
@pytest.mark.parametrize("name", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_backends_match_reference_batch_invariant_and_sync_free(name, dtype):
    skip_unless_available(name)
    h, w, b, y = make_inputs(n=70, d=64, vocab=20000, dtype=dtype)  # 20000 > one Triton split
    kw = dict(labels=y, temperature=temperature_of("per_row", 70), mask=None, logit_scale=1.0, softcap=30.0)
    cuda = [t.to(DEVICE) for t in (h, w, b, y, kw["temperature"])]
    gkw = dict(kw, labels=cuda[3], temperature=cuda[4])
    g = torch.Generator().manual_seed(7)
    weights = (torch.randn(70, generator=g), torch.randn(70, generator=g))
    with eo.use_backend(name):
        logp, ent = eo.linear_logprobs_and_entropy(*cuda[:2], bias=cuda[2], **gkw)
        part = eo.linear_logprobs_and_entropy(cuda[0][5:9], cuda[1], cuda[3][5:9], cuda[2], softcap=30.0,
                                              temperature=cuda[4][5:9])
        with sync_debug_error():
            ours = grads(_ours, *cuda[:3], [x.to(DEVICE) for x in weights], **gkw)
    assert torch.equal(part[0], logp[5:9]) and torch.equal(part[1], ent[5:9])
    ref_logp, ref_h = _ref(h, w, b, **kw)
    eager_logp, eager_h = _eager(h, w, b, **kw)
    assert_within_eager_bound(ent.cpu(), ref_h, eager_h, what="entropy")
    assert_within_eager_bound(logp.cpu(), ref_logp, eager_logp, what="logp")
    ref = grads(_ref, h.double(), w.double(), b.double(), weights, **kw)
    eag = grads(_eager, h, w, b, weights, **kw)
    for label, o, r, e in zip(("hidden", "weight", "bias"), ours, ref, eag):
        assert_within_eager_bound(o.cpu(), r, e, what=f"grad {label}")
