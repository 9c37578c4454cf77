"""The fused linear + entropy Triton kernels under the Triton interpreter on CPU tensors, through the
public API, on tiny shapes (SPEC §6). Run in their own process:
`TRITON_INTERPRET=1 pytest -m triton_interp tests/test_triton_interp_linear.py`."""
import os

import pytest
import torch

import entropy_ops as eo

from conftest import assert_within_eager_bound
from test_linear import (_eager, _ours, _ref, check_k_labels_on_a_certain_token, check_strided_bias, grads,
                         make_inputs, temperature_of)

pytestmark = [
    pytest.mark.triton_interp,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 at start-up"),
]
pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def _triton():
    with eo.use_backend("triton"):
        yield


@pytest.fixture
def small_split(monkeypatch):
    """Vocabulary splits of 256 entries, so V = 700 takes the multi-split merge path."""
    from entropy_ops.triton_kernels import launch_linear
    monkeypatch.setattr(launch_linear, "_SPLIT", 256)


CASES = [  # (dtype, k labels, bias, logit_scale, softcap, temperature kind)
    (torch.float32, None, True, 0.7, None, "per_row"),
    (torch.float32, 3, False, 1.0, 4.0, "scalar"),
    (torch.bfloat16, None, True, 1.0, 3.0, "tensor0d"),
    (torch.bfloat16, 2, True, 2.0, None, "per_row"),
    (torch.float16, None, False, 1.0, 4.0, "per_row"),
    (torch.float32, None, True, 1.0, 1e4, "scalar"),  # tanh of tiny arguments: no cancellation
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{str(c[0])[6:]}-k{c[1]}-b{int(c[2])}-s{c[3]}-c{c[4]}-{c[5]}")
@pytest.mark.parametrize("vocab", (300, 700))
def test_matches_reference(case, vocab, small_split):
    dtype, k, has_bias, scale, softcap, t_kind = case
    h, w, b, y = make_inputs(n=21, d=40, vocab=vocab, dtype=dtype, k=k, bias=has_bias)
    mask = torch.ones(21, dtype=torch.bool)
    mask[6] = False
    kw = dict(labels=y, temperature=temperature_of(t_kind, 21), mask=mask, logit_scale=scale, softcap=softcap)
    logp, ent = eo.linear_logprobs_and_entropy(h, w, bias=b, chunk_size=16, **kw)
    ref_logp, ref_h = _ref(h, w, b, **kw)
    eager_logp, eager_h = _eager(h, w, b, **kw)
    assert_within_eager_bound(ent, ref_h, eager_h, what="entropy")
    assert_within_eager_bound(logp, ref_logp, eager_logp, what="logp")
    assert ent[6] == 0 and (logp[6] == 0).all()

    g = torch.Generator().manual_seed(7)
    weights = (torch.randn(y.shape, generator=g), torch.randn(21, generator=g))
    ours = grads(_ours, h, w, b, weights, chunk_size=16, **kw)
    ref = grads(_ref, h.double(), w.double(), None if b is None else b.double(), weights, **kw)
    eag = grads(_eager, h, w, b, weights, **kw)
    for name, o, r, e in zip(("hidden", "weight", "bias"), ours, ref, eag):
        assert o.dtype == dtype, name
        assert_within_eager_bound(o, r, e, what=f"grad {name}")


def _numpy_dot_keeps_row_bits():
    """Whether numpy's matmul (the interpreter's tl.dot) gives a row the same bits at any position
    of the tile: the premise of checking the kernel's batch invariance here (tests/conftest.py)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((32, 24)).astype(np.float32)
    b = rng.standard_normal((24, 64)).astype(np.float32)
    shifted = np.zeros_like(a)
    shifted[:27] = a[5:]
    return np.array_equal((shifted @ b)[:27], (a @ b)[5:])


def test_batch_and_chunk_invariance(small_split):
    """Forward bits depend only on the row (tiles and splits are functions of V); backward's
    gradient rows are computed per row too, so a different chunk_size keeps grad_hidden close."""
    assert _numpy_dot_keeps_row_bits(), (
        "numpy's matmul rounds a row by its position in the tile on this machine (OPENBLAS_CORETYPE="
        f"{os.environ.get('OPENBLAS_CORETYPE')}): pick an OpenBLAS core type that does not (tests/conftest.py)")
    h, w, b, y = make_inputs(n=40, d=24, vocab=600)
    logp, ent = eo.linear_logprobs_and_entropy(h, w, y, b, softcap=5.0)
    for lo, hi in ((0, 1), (5, 23), (17, 40)):
        part = eo.linear_logprobs_and_entropy(h[lo:hi], w, y[lo:hi], b, softcap=5.0)
        assert torch.equal(part[0], logp[lo:hi]) and torch.equal(part[1], ent[lo:hi]), (lo, hi)
    weights = (torch.randn(40), torch.randn(40))
    g16 = grads(_ours, h, w, b, weights, labels=y, chunk_size=16, softcap=5.0)
    g_all = grads(_ours, h, w, b, weights, labels=y, chunk_size=40, softcap=5.0)
    for a, c in zip(g16, g_all):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_masked_nan_rows_and_ignored_labels():
    h, w, b, y = make_inputs(n=12, d=16, vocab=200)
    mask = torch.ones(12, dtype=torch.bool)
    mask[[1, 7]] = False
    h_nan = h.clone()
    h_nan[[1, 7]] = float("nan")
    logp, ent = eo.linear_logprobs_and_entropy(h_nan, w, y, b, mask=mask)
    assert not logp.isnan().any() and not ent.isnan().any()
    assert logp[3] == 0  # make_inputs puts ignore_index at row 3
    g = grads(_ours, h_nan, w, b, (torch.randn(12), torch.randn(12)), labels=y, mask=mask)
    for t in g:
        assert not t.isnan().any()
    assert (g[0][[1, 7]] == 0).all()


def test_empty_batch():
    h = torch.randn(0, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True)
    logp, ent = eo.linear_logprobs_and_entropy(h, w, torch.zeros(0, dtype=torch.long), b)
    (logp.sum() + ent.sum()).backward()
    assert logp.shape == ent.shape == (0,) and h.grad.shape == (0, 16)
    assert (w.grad == 0).all() and (b.grad == 0).all()


def test_strided_bias():
    check_strided_bias()


@pytest.mark.parametrize("vocab", (1, 7))
def test_k_labels_on_a_certain_token_at_a_low_temperature(vocab):
    """The fused backward wrote G p - sum_k g_k 1[j = y_k] at the label columns: ulp(G) / T off
    where every candidate sits on a p ~ 1 token (5e-4 at T = 1e-3, nonzero at V = 1). Found by
    fuzzing the interpreter."""
    check_k_labels_on_a_certain_token(vocab)
