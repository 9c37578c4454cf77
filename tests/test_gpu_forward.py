"""GPU tests: forward of every GPU backend vs the float64 reference (SPEC §2, §3.1)."""
import math

import entropy_ops as eo
import pytest
import torch

from conftest import (
    FINITE_KINDS,
    NAN_KINDS,
    eager_entropy,
    eager_grad,
    eager_logprobs_and_entropy,
    make_labels,
    make_rows,
    ours_grad,
    reference_grad,
)
from entropy_common import (
    check_far_label_logps,
    check_finfo_masked_rows,
    check_layouts_give_the_same_bits,
    check_uniform_row_of_finfo_min,
)
from entropy_ops import _backends
from entropy_ops.reference import entropy_ref, logprobs_and_entropy_ref
from gpu_common import (  # noqa: F401, F811 (pytestmark applies the gpu marks; gpu_backend is a fixture)
    DEVICE,
    GPU_DTYPES,
    LAYOUTS,
    MANY_ROWS,
    TEMPERATURES,
    VOCABS,
    assert_outputs,
    check,
    gpu_backend,
    pytestmark,
    temperature_of,
)

# ---- forward vs the reference ---------------------------------------------------------------------

def gpu_rows(layout, vocab, dtype, seed):
    """``[..., V]`` CUDA logits for a layout of SPEC §2's list, and the row kinds (NaN rows too).
    "strided": rows of stride V + 13 at an odd storage offset (the unaligned load path)."""
    big = vocab >= 32000
    leading = {"N0": (0,), "N1": (1,), "Nodd": (11,) if big else (13,), "BT": (2, 3) if big else (3, 5),
               "1d": (), "strided": (5,) if big else (11,)}[layout]
    n = math.prod(leading)
    x, kinds = make_rows(n, vocab, dtype, kinds=FINITE_KINDS + NAN_KINDS, seed=seed)
    x = x.to(DEVICE)
    if layout == "strided":
        wide = torch.full((n, vocab + 13), float("nan"), dtype=dtype, device=DEVICE)
        wide[:, 3:3 + vocab] = x
        x = wide[:, 3:3 + vocab]
        assert not x.is_contiguous()
    return x.reshape(*leading, vocab), kinds


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_forward_matches_reference(gpu_backend, dtype, vocab, layout):
    """Special rows (one-hot, uniform, +-1e4, -inf masks, NaN/+inf/all -inf); int32 labels on the
    "Nodd" and "strided" layouts, int64 elsewhere."""
    x, kinds = gpu_rows(layout, vocab, dtype, seed=vocab + LAYOUTS.index(layout))
    label_dtype = torch.int32 if layout in ("Nodd", "strided") else torch.int64
    n = len(kinds)
    y = make_labels(n, vocab, label_dtype, n_ignored=1 if n > 2 else 0, seed=vocab).reshape(x.shape[:-1]).to(DEVICE)
    before = x.clone()
    h = eo.entropy(x)
    logp, h2 = eo.logprobs_and_entropy(x, y)
    assert h.shape == logp.shape == h2.shape == x.shape[:-1]
    assert_outputs({"entropy": h, "logp": logp, "entropy (logprobs_and_entropy)": h2}, x.device)
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y)
    eager_logp, eager_h = eager_logprobs_and_entropy(x, y)
    check(h, ref_h, eager_h, kinds, "entropy")
    check(h2, ref_h, eager_h, kinds, "entropy (logprobs_and_entropy)")
    check(logp, ref_logp, eager_logp, kinds, "logp")
    assert (logp[y == -100] == 0).all()
    assert torch.equal(x.isnan(), before.isnan()) and torch.equal(x.nan_to_num(), before.nan_to_num()), "input modified"


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("vocab", [2, 1023, 5000, 151936])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_forward_temperature_labels_mask(gpu_backend, dtype, vocab, temperature, label_dtype):
    """Per-row / 0-d / float temperature, ignore_index=-1, a row mask that hides a NaN row. On the
    cuda backend the vocabularies take each kernel: a warp per row (2, 1023), one block that
    finalizes its row (5000), chunks merged by the combine kernel (151936)."""
    leading = (3, 5) if vocab < 32000 else (2, 5)
    n = math.prod(leading)
    x, kinds = make_rows(n, vocab, dtype, kinds=FINITE_KINDS + NAN_KINDS, seed=vocab + 11)
    x = x.to(DEVICE).reshape(*leading, vocab)
    y = make_labels(n, vocab, label_dtype, ignore_index=-1, n_ignored=3, seed=vocab + 12).to(DEVICE).reshape(leading)
    t = temperature_of(temperature, leading)
    mask = torch.ones(n, dtype=torch.bool)
    mask[[i for i, k in enumerate(kinds) if k == "has_nan"] + [n // 2]] = False
    mask = mask.to(DEVICE).reshape(leading)
    h = eo.entropy(x, t, mask=mask)
    logp, h2 = eo.logprobs_and_entropy(x, y, t, ignore_index=-1, mask=mask)
    assert_outputs({"entropy": h, "logp": logp, "entropy (logprobs_and_entropy)": h2}, x.device)
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y, t, -1, mask)
    eager_logp, eager_h = eager_logprobs_and_entropy(x, y, t, -1, mask)
    check(h, ref_h, eager_h, kinds, "entropy")
    check(h2, ref_h, eager_h, kinds, "entropy (logprobs_and_entropy)")
    check(logp, ref_logp, eager_logp, kinds, "logp")
    for name, out in (("entropy", h), ("logp", logp), ("entropy (logprobs_and_entropy)", h2)):
        assert (out[~mask] == 0).all(), f"{name}: masked rows must be exactly 0"
    assert (logp[(y == -1) & mask] == 0).all(), "ignored labels must give logp = 0"


def test_layouts_give_the_same_bits(gpu_backend):
    """The vectorized path with a partial last group (a vocabulary sliced from a padded buffer,
    151646 of 151936), the scalar path (storage offset 1) and contiguous rows: the same bits,
    values and gradients, for every vocabulary op."""
    check_layouts_give_the_same_bits(DEVICE, shapes=((3, 1000, 16), (2, 4099, 13), (2, 151646, 290)))


def test_far_label_logps_at_low_temperatures(gpu_backend):
    """|logp| in the hundreds to thousands: each label's log-prob formed in float64, rounded once
    (the warp, one-chunk and split paths)."""
    check_far_label_logps(DEVICE, vocabs=(4, 111, 5000, 20000))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_uniform_row_of_finfo_min(gpu_backend, dtype):
    """lse overflows to -inf, the row is still a uniform distribution (forward, token_stats, grad)."""
    check_uniform_row_of_finfo_min(dtype, DEVICE)


def test_finfo_masked_rows(gpu_backend):
    """Rows masked with finfo(dtype).min (masked first tokens: a lane's first groups alone, then
    rescaled to the real max): finite entropy, log-probs and gradients within the eager bound."""
    check_finfo_masked_rows(DEVICE, vocabs=(16, 1000, 4099, 32000, 151936))


@pytest.mark.parametrize("vocab", [111, 32000, 151936])
@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_shifted_rows(gpu_backend, vocab, shift):
    """fp32 rows shifted by +-1e4: entropy error <= 1e-5; logp and gradient within the bound."""
    gen = torch.Generator().manual_seed(vocab)
    x = (torch.randn(5, vocab, generator=gen) * torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])[:, None] + shift).to(DEVICE)
    y = torch.randint(vocab, (5,), generator=gen).to(DEVICE)
    weights = (torch.randn(5, generator=gen).to(DEVICE), torch.randn(5, generator=gen).to(DEVICE))
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y)
    logp, h = eo.logprobs_and_entropy(x, y)
    for name, out in (("entropy", eo.entropy(x)), ("entropy (logprobs_and_entropy)", h)):
        err = (out.double() - ref_h).abs().max().item()
        assert err <= 1e-5, f"{name}: error {err:.3e} > 1e-5 on rows shifted by {shift}"
    check(logp, ref_logp, eager_logprobs_and_entropy(x, y)[0], what="logp")
    grad = ours_grad(eo.logprobs_and_entropy, x, y, weights=weights)
    check(grad, reference_grad(logprobs_and_entropy_ref, x, y, weights=weights),
          eager_grad(eager_logprobs_and_entropy, x, y, weights=weights), what="grad")


def test_float64_is_routed_to_torch(gpu_backend):
    """SPEC §2: fp64 CUDA input runs on the torch backend, in fp64 (outputs and gradient)."""
    assert _backends.resolve("entropy", torch.device(DEVICE), torch.float64) == "torch"
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 500, dtype=torch.float64, generator=gen).to(DEVICE)
    y = torch.randint(500, (2, 3), generator=gen).to(DEVICE)
    t = torch.tensor(0.8, dtype=torch.float64, device=DEVICE)
    h = eo.entropy(x, t)
    logp, h2 = eo.logprobs_and_entropy(x, y, t)
    assert_outputs({"entropy": h, "logp": logp, "entropy 2": h2}, x.device, torch.float64)
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y, t)
    for got, want in ((h, ref_h), (h2, ref_h), (logp, ref_logp)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    weights = (torch.randn(2, 3, dtype=torch.float64, device=DEVICE),) * 2
    grad = ours_grad(eo.logprobs_and_entropy, x, y, t, weights=weights)
    assert grad.dtype == torch.float64 and grad.device == x.device
    torch.testing.assert_close(grad, reference_grad(logprobs_and_entropy_ref, x, y, t, weights=weights),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_empty_batch(gpu_backend, dtype):
    """N = 0 (also as [2, 0, V]): empty outputs and an empty gradient, no launch."""
    for shape in ((0, 1000), (2, 0, 40000)):
        x = torch.empty(shape, dtype=dtype, device=DEVICE, requires_grad=True)
        y = torch.empty(shape[:-1], dtype=torch.int64, device=DEVICE)
        logp, h = eo.logprobs_and_entropy(x, y)
        h1 = eo.entropy(x, 0.5)
        assert logp.shape == h.shape == h1.shape == shape[:-1]
        (logp.sum() + h.sum() + h1.sum()).backward()
        assert x.grad.shape == shape and x.grad.dtype == dtype


@pytest.mark.parametrize("vocab", [1, 8, 111])
def test_many_rows(gpu_backend, vocab):
    """SPEC §2: no grid-size limit on N; 70000 rows (3000 emulated), forward (fp32, bf16) and backward."""
    n = MANY_ROWS
    x, kinds = make_rows(n, vocab, torch.float32, seed=7)
    x = x.to(DEVICE)
    y = make_labels(n, vocab, torch.int32, n_ignored=100, seed=8).to(DEVICE)
    logp, h = eo.logprobs_and_entropy(x, y)
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y)
    eager_logp, eager_h = eager_logprobs_and_entropy(x, y)
    check(logp, ref_logp, eager_logp, kinds, "logp")
    check(h, ref_h, eager_h, kinds, "entropy")
    xb = x.bfloat16()
    check(eo.entropy(xb), entropy_ref(xb), eager_entropy(xb), kinds, "entropy bf16")
    finite = torch.tensor([k not in ("onehot_neginf", "neginf_mask") for k in kinds]).to(DEVICE)
    gen = torch.Generator().manual_seed(9)
    weights = tuple(torch.where(finite, torch.randn(n, generator=gen).to(DEVICE), 0) for _ in range(2))
    grad = ours_grad(eo.logprobs_and_entropy, xb, y, weights=weights)
    check(grad, reference_grad(logprobs_and_entropy_ref, xb, y, weights=weights),
          eager_grad(eager_logprobs_and_entropy, xb, y, weights=weights), kinds, "grad bf16")
