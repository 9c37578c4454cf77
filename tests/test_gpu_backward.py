"""GPU tests: backward, in-place backward and batch invariance of every GPU backend."""
import math

import entropy_ops as eo
import pytest
import torch

from conftest import (
    assert_neginf_grad_is_zero,
    eager_entropy,
    eager_grad,
    eager_logprobs_and_entropy,
    make_labels,
    make_rows,
    ours_grad,
    reference_grad,
)
from entropy_common import (
    check_bad_rows_get_nan_gradients,
    check_inplace_backward_on_a_grid,
    check_labels_at_chunk_edges,
    check_low_temperature_grads,
)
from entropy_ops.reference import entropy_ref, logprobs_and_entropy_ref
from gpu_common import (  # noqa: F401, F811 (pytestmark applies the gpu marks; gpu_backend is a fixture)
    BIG_BATCH,
    DEVICE,
    GPU_DTYPES,
    TEMPERATURES,
    UNSHIFTED_KINDS,
    VOCABS,
    assert_same_bits,
    check,
    gpu_backend,
    pytestmark,
    temperature_of,
)

# ---- backward -------------------------------------------------------------------------------------

def _fns(mode):
    if mode == "entropy":
        return eo.entropy, entropy_ref, eager_entropy, False
    return eo.logprobs_and_entropy, logprobs_and_entropy_ref, eager_logprobs_and_entropy, True


def _weights(mode, n, kinds, seed):
    """Upstream gradients per row (a for logp, b for H) with exact zeros, among them the rows holding
    ``-inf`` entries; returned with the rows whose gradient must be exactly 0."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    zero_rows = torch.tensor([k in ("neginf_mask", "onehot_neginf") for k in kinds], dtype=torch.bool)
    if n > 2:
        zero_rows[n // 2] = True
    a[zero_rows], b[zero_rows] = 0.0, 0.0
    if n > 3:
        a[1], b[2] = 0.0, 0.0
    a, b = a.to(DEVICE), b.to(DEVICE)
    return {"entropy": (b,), "logp": (a, None), "both": (a, b)}[mode], zero_rows.to(DEVICE)


@pytest.mark.parametrize("mode", ["entropy", "logp", "both"])
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_backward_matches_reference(gpu_backend, dtype, vocab, mode):
    n = 7 if vocab >= 32000 else 9
    x, kinds = make_rows(n, vocab, dtype, kinds=UNSHIFTED_KINDS, seed=vocab + 3)
    x = x.to(DEVICE)
    fn, ref_fn, eager_fn, takes_labels = _fns(mode)
    args = (make_labels(n, vocab, seed=vocab).to(DEVICE),) if takes_labels else ()
    weights, zero_rows = _weights(mode, n, kinds, seed=vocab)
    grad = ours_grad(fn, x, *args, weights=weights)
    assert grad.dtype == dtype and grad.shape == x.shape and grad.device == x.device
    check(grad, reference_grad(ref_fn, x, *args, weights=weights), eager_grad(eager_fn, x, *args, weights=weights),
          kinds, f"grad ({mode})")
    assert_neginf_grad_is_zero(grad.cpu(), x.cpu(), args[0].cpu() if takes_labels else None)
    assert (grad[zero_rows] == 0).all(), "rows with zero upstream gradient must get an exact 0 gradient"
    if mode == "logp":
        assert (grad[args[0] == -100] == 0).all(), "ignored labels must give no logp gradient"


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("vocab", [333, 151936])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_backward_temperature_labels_mask(gpu_backend, dtype, vocab, temperature, label_dtype):
    leading = (3, 5) if vocab < 32000 else (2, 4)
    n = math.prod(leading)
    x, kinds = make_rows(n, vocab, dtype, kinds=UNSHIFTED_KINDS, seed=51)
    x = x.to(DEVICE).reshape(*leading, vocab)
    y = make_labels(n, vocab, label_dtype, ignore_index=-1, n_ignored=3, seed=52).to(DEVICE).reshape(leading)
    t = temperature_of(temperature, leading, seed=53)
    mask = (torch.rand(leading, generator=torch.Generator().manual_seed(54)) < 0.7).to(DEVICE)
    mask.view(-1)[0] = True
    ignored = (y == -1) & mask
    if not ignored.any():
        mask[y == -1] = True
        ignored = y == -1
    kw = dict(temperature=t, ignore_index=-1, mask=mask)
    gen = torch.Generator().manual_seed(55)
    weights = (torch.randn(leading, generator=gen).to(DEVICE), torch.randn(leading, generator=gen).to(DEVICE))
    grad = ours_grad(eo.logprobs_and_entropy, x, y, weights=weights, **kw)
    assert grad.dtype == dtype
    ref = reference_grad(logprobs_and_entropy_ref, x, y, weights=weights, **kw)
    eager = eager_grad(eager_logprobs_and_entropy, x, y, weights=weights, **kw)
    check(grad.reshape(n, vocab), ref.reshape(n, vocab), eager.reshape(n, vocab), kinds, "grad")
    assert (grad[~mask] == 0).all(), "masked rows must get an exact 0 gradient"
    h_only = ours_grad(eo.entropy, x, weights=(weights[1],), temperature=t, mask=mask)
    # An ignored row keeps its entropy gradient only (equal up to rounding: the kernels may fuse
    # the two terms differently when a logp term is present).
    torch.testing.assert_close(grad[ignored], h_only[ignored], msg=lambda m: f"ignored rows vs entropy-only grad: {m}")


@pytest.mark.parametrize("vocab", [111, 32000])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_backward_of_non_contiguous_rows(gpu_backend, dtype, vocab):
    """Rows of stride V + 13 at an odd storage offset, the logits being a view of a leaf."""
    gen = torch.Generator().manual_seed(vocab)
    wide = (torch.randn(6, vocab + 13, generator=gen) * 2).to(dtype).to(DEVICE).requires_grad_(True)
    x = wide[:, 3:3 + vocab]
    y = torch.randint(vocab, (6,), generator=gen).to(DEVICE)
    weights = (torch.randn(6, generator=gen).to(DEVICE), torch.randn(6, generator=gen).to(DEVICE))
    logp, h = eo.logprobs_and_entropy(x, y, 0.9)
    torch.autograd.backward((logp, h), weights)
    grad = wide.grad[:, 3:3 + vocab]
    assert (wide.grad[:, :3] == 0).all() and (wide.grad[:, 3 + vocab:] == 0).all()
    check(grad, reference_grad(logprobs_and_entropy_ref, x, y, 0.9, weights=weights),
          eager_grad(eager_logprobs_and_entropy, x.detach(), y, 0.9, weights=weights), what="grad")


def _inplace_run(base, y, weights, inplace):
    x = base.clone().requires_grad_(True)
    w = x * 1.0  # an intermediate: its buffer may receive the gradient
    seen = []
    w.register_hook(seen.append)
    logp, h = eo.logprobs_and_entropy(w, y, 0.9, inplace_backward=inplace)
    torch.autograd.backward((logp, h), weights)
    return x.grad, seen[0], w


def test_bad_rows_get_nan_gradients(gpu_backend):
    """All -inf, NaN and +inf rows: NaN gradient rows where the upstream is nonzero (not 0), exactly
    0 where it is 0, other rows untouched; the fused head with a NaN hidden state alike."""
    check_bad_rows_get_nan_gradients(DEVICE)


def test_labels_at_chunk_edges(gpu_backend):
    """Labels on the first and last token of each chunk of a 40000-token row: the cuda backend's
    chunk_plan (entropy_rows.cuh) cuts it into 3 chunks of 13336, the triton launcher into splits
    of 8192."""
    check_labels_at_chunk_edges(40000, {"cuda": 13336, "triton": 8192}[gpu_backend], DEVICE)


def test_grad_at_low_temperatures(gpu_backend):
    """T in {0.01, 0.1}: log p from the saved row max and log-sum, on the warp, one-chunk and split
    paths (V = 111, 5000, 20000)."""
    check_low_temperature_grads(DEVICE, vocabs=(1, 4, 111, 5000, 20000))


@pytest.mark.parametrize("shape", [(4, 300), (2, 3, 40000)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_inplace_backward(gpu_backend, dtype, shape):
    gen = torch.Generator().manual_seed(71)
    base = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    y = torch.randint(shape[-1], shape[:-1], generator=gen).to(DEVICE)
    weights = (torch.randn(shape[:-1], generator=gen).to(DEVICE), torch.randn(shape[:-1], generator=gen).to(DEVICE))
    grad_out, _, _ = _inplace_run(base, y, weights, False)
    grad_in, seen, w = _inplace_run(base, y, weights, True)
    assert_same_bits(grad_in, grad_out, "inplace_backward vs out of place")
    assert seen.data_ptr() == w.data_ptr(), "inplace_backward must write the gradient into the logits' buffer"
    v = shape[-1]
    check(grad_in.reshape(-1, v), reference_grad(logprobs_and_entropy_ref, base, y, 0.9, weights=weights).reshape(-1, v),
          eager_grad(eager_logprobs_and_entropy, base, y, 0.9, weights=weights).reshape(-1, v), what="inplace grad")


def test_inplace_backward_on_a_grid(gpu_backend):
    """``logits[:, :-1]`` and a transpose, on the warp, one-chunk and split paths: the in-place
    gradient lands in the view's own rows only."""
    check_inplace_backward_on_a_grid(DEVICE, shapes=((3, 1000, 16), (2, 4099, 0), (2, 40000, 8)))


def test_inplace_backward_of_shifted_rows_on_the_split_path(gpu_backend):
    """Rows shifted by 1e4 (|lse| >= 64) and V above one split, with inplace_backward: other splits
    of the same row are overwriting it with the gradient while a split runs, so a split may read
    nothing but its own elements and the saved row state (an older backward re-derived such rows'
    max and sum from the whole row). Many rows, so that splits run at different times."""
    gen = torch.Generator(device=DEVICE).manual_seed(72)
    base = torch.randn(2048, 40000, device=DEVICE, generator=gen) * 2 + 1e4
    y = torch.randint(40000, (2048,), device=DEVICE, generator=gen)
    weights = (torch.randn(2048, device=DEVICE, generator=gen), torch.randn(2048, device=DEVICE, generator=gen))
    grad_out, _, _ = _inplace_run(base, y, weights, False)
    grad_in, _, _ = _inplace_run(base, y, weights, True)
    assert_same_bits(grad_in, grad_out, "inplace_backward vs out of place (rows shifted by 1e4, V = 40000)")


def test_inplace_backward_non_collapsible(gpu_backend):
    base = torch.randn(3, 4, 5000, device=DEVICE)
    x = base.clone().requires_grad_(True)
    eo.entropy((x * 1.0).transpose(0, 1), inplace_backward=True).sum().backward()
    ones = (torch.ones(3, 4, device=DEVICE),)
    check(x.grad.reshape(12, -1), reference_grad(entropy_ref, base, weights=ones).reshape(12, -1),
          eager_grad(eager_entropy, base, weights=ones).reshape(12, -1), what="grad")


# ---- batch invariance -----------------------------------------------------------------------------

def _row_results(x, y, g_logp, g_h):
    """Outputs and gradient of every row; ``x`` becomes the leaf (no copy of a big batch)."""
    x = x.detach().requires_grad_(True)
    logp, h = eo.logprobs_and_entropy(x, y, 0.9)
    h_only = eo.entropy(x.detach(), 0.9)
    torch.autograd.backward((logp, h), (g_logp, g_h))
    return logp.detach(), h.detach(), h_only, x.grad


@pytest.mark.parametrize("vocab", [1023, 151936])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_batch_invariance(gpu_backend, dtype, vocab):
    """A row's bits (logp, H, H of `entropy`, gradient row) alone equal its bits at three
    positions inside random batches of 64 and 4096 rows (512 emulated; SPEC §2)."""
    gen = torch.Generator(device=DEVICE).manual_seed(vocab)
    row = (torch.randn(1, vocab, device=DEVICE, generator=gen) * 3).to(dtype)
    label = torch.randint(vocab, (1,), device=DEVICE, generator=gen)
    g = (torch.tensor([0.75], device=DEVICE), torch.tensor([-1.25], device=DEVICE))
    alone = _row_results(row.clone(), label, *g)
    ref_logp, ref_h = logprobs_and_entropy_ref(row, label, 0.9)
    eager_logp, eager_h = eager_logprobs_and_entropy(row, label, 0.9)
    check(alone[0], ref_logp, eager_logp, what="logp (row alone)")
    check(alone[1], ref_h, eager_h, what="entropy (row alone)")
    for trial, n in enumerate((64, BIG_BATCH)):
        positions = (0, 1 + (vocab + trial) % (n - 2), n - 1)
        batch = (torch.randn(n, vocab, device=DEVICE, generator=gen) * (1 + trial)).to(dtype)
        labels = torch.randint(vocab, (n,), device=DEVICE, generator=gen)
        g_logp, g_h = torch.randn(n, device=DEVICE, generator=gen), torch.randn(n, device=DEVICE, generator=gen)
        for pos in positions:
            batch[pos], labels[pos], g_logp[pos], g_h[pos] = row[0], label[0], g[0][0], g[1][0]
        got = _row_results(batch, labels, g_logp, g_h)
        for name, a, b in zip(("logp", "entropy", "entropy op", "grad"), alone, got):
            for pos in positions:
                assert_same_bits(b[pos], a[0], f"{name}: row at position {pos} of {n} vs the row alone")
        del batch, got
