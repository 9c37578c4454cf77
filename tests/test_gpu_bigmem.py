"""GPU tests: 64-bit indexing, N * V > 2^31 (they need the most memory)."""
import gc
import math

import entropy_ops as eo
import pytest
import torch

from conftest import eager_entropy, eager_grad, eager_logprobs_and_entropy, reference_grad
from entropy_ops.reference import entropy_ref, logprobs_and_entropy_ref
from gpu_common import (  # noqa: F401, F811 (pytestmark applies the gpu marks; gpu_backend is a fixture)
    DEVICE,
    check,
    gpu_backend,
    needs_real_gpu,
    pytestmark as _gpu_marks,
)

pytestmark = [*_gpu_marks, needs_real_gpu]

# ---- 64-bit indexing: N * V > 2^31 (last: they need the most memory) -------------------------------

BIG_N, BIG_V = 16384, 151936
BOUNDARY_ROW = 2**31 // BIG_V  # 14134: straddles element 2^31
BIG_RANDOM_ROWS = [0, BOUNDARY_ROW - 1, BOUNDARY_ROW, BOUNDARY_ROW + 1, BIG_N - 1]
BIG_CHECKED = BIG_RANDOM_ROWS + [BOUNDARY_ROW + 2, BIG_N - 2]  # the last two stay all zero
BIG_KINDS = [f"#{i}" for i in BIG_CHECKED]  # one tolerance group per row: failures name the row


@pytest.fixture
def free_gpu_memory():
    gc.collect()
    torch.cuda.empty_cache()
    yield lambda: torch.cuda.mem_get_info()[0]
    gc.collect()
    torch.cuda.empty_cache()


def _require_gib(free_gpu_memory, gib):
    free = free_gpu_memory()
    if free < gib * 2**30:
        pytest.skip(f"needs {gib} GiB of free GPU memory, {free / 2**30:.1f} GiB free")


def _big_run(backward):
    """Run on a zero [16384, 151936] bf16 tensor whose BIG_RANDOM_ROWS hold random rows; return
    small CPU results only (the 5 GB tensors are dropped before any assertion)."""
    assert BOUNDARY_ROW * BIG_V < 2**31 < (BOUNDARY_ROW + 1) * BIG_V
    x = y = logp = h = h1 = None
    try:
        x = torch.zeros(BIG_N, BIG_V, dtype=torch.bfloat16, device=DEVICE)
        gen = torch.Generator().manual_seed(0)
        rows = (torch.randn(len(BIG_RANDOM_ROWS), BIG_V, generator=gen) * 3).bfloat16()
        rows[1, :100] = float("-inf")
        x[BIG_RANDOM_ROWS] = rows.to(DEVICE)
        labels = torch.randint(BIG_V, (BIG_N,), generator=gen)
        labels[BOUNDARY_ROW] = -100
        y = labels.to(DEVICE)
        out = {"rows": x[BIG_CHECKED].cpu(), "labels": labels[BIG_CHECKED]}
        if backward:
            g_logp, g_h = torch.randn(BIG_N, generator=gen), torch.randn(BIG_N, generator=gen)
            x.requires_grad_(True)
            logp, h = eo.logprobs_and_entropy(x, y, 0.7)
            torch.autograd.backward((logp, h), (g_logp.to(DEVICE), g_h.to(DEVICE)))
            out.update(g_logp=g_logp[BIG_CHECKED], g_h=g_h[BIG_CHECKED], grad=x.grad[BIG_CHECKED].cpu(),
                       grad_dtype=x.grad.dtype, grad_all_finite=bool(torch.isfinite(x.grad).all()))
        else:
            h1 = eo.entropy(x)
            logp, h = eo.logprobs_and_entropy(x, y, 0.7)
            out["h1"] = h1[BIG_CHECKED].cpu()
            # Every other row is all zeros: uniform at any temperature, H = log V, logp = -log V.
            others = torch.ones(BIG_N, dtype=torch.bool, device=DEVICE)
            others[BIG_CHECKED] = False
            log_v = math.log(BIG_V)
            for name, values, target in (("entropy", h1, log_v), ("entropy (T = 0.7)", h, log_v), ("logp", logp, -log_v)):
                err = torch.where(others, (values.double() - target).abs(), 0)
                out[f"uniform {name}"] = (err.max().item(), int(err.argmax()))
        out.update(logp=logp[BIG_CHECKED].detach().cpu(), h=h[BIG_CHECKED].detach().cpu())
        return out
    finally:
        x = y = logp = h = h1 = None


def _check_big_outputs(r):
    labels = r["labels"]
    ref_logp, ref_h = logprobs_and_entropy_ref(r["rows"], labels, 0.7)
    eager_logp, eager_h = eager_logprobs_and_entropy(r["rows"].to(DEVICE), labels.to(DEVICE), 0.7)
    check(r["h"], ref_h, eager_h, BIG_KINDS, "entropy (T = 0.7)")
    check(r["logp"], ref_logp, eager_logp, BIG_KINDS, "logp")
    return ref_logp, ref_h


@pytest.mark.bigmem
def test_forward_past_2_pow_31_elements(gpu_backend, free_gpu_memory):
    _require_gib(free_gpu_memory, 6)
    r = _big_run(backward=False)
    _check_big_outputs(r)
    check(r["h1"], entropy_ref(r["rows"]), eager_entropy(r["rows"].to(DEVICE)), BIG_KINDS, "entropy")
    for name in ("entropy", "entropy (T = 0.7)", "logp"):
        err, row = r[f"uniform {name}"]
        assert err <= 1e-5, f"{name}: all-zero rows off by {err:.3e} (worst row {row}; 2^31 is inside row {BOUNDARY_ROW})"


@pytest.mark.bigmem
def test_backward_past_2_pow_31_elements(gpu_backend, free_gpu_memory):
    """5 GB of bf16 logits and a 5 GB bf16 gradient; the CHECKED gradient rows vs the reference."""
    _require_gib(free_gpu_memory, 12)
    r = _big_run(backward=True)
    _check_big_outputs(r)
    assert r["grad_dtype"] == torch.bfloat16
    assert r["grad_all_finite"], "non-finite values in the gradient"
    rows, labels, weights = r["rows"], r["labels"], (r["g_logp"], r["g_h"])
    ref = reference_grad(logprobs_and_entropy_ref, rows, labels, 0.7, weights=weights)
    eager = eager_grad(eager_logprobs_and_entropy, rows.to(DEVICE), labels.to(DEVICE), 0.7,
                       weights=tuple(w.to(DEVICE) for w in weights))
    check(r["grad"], ref, eager, BIG_KINDS, "grad")
