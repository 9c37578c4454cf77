"""Helpers shared by the tests of the selective row ops (top-p, min-p) on every backend.

Random rows are compared with the float64 sort-based references only where the cut is not
decided by rounding: the reference's cumulative mass stays > ``MARGIN`` away from ``top_p`` at
every position (SPEC §3.1), and no ``p_j / max p`` sits within a relative ``MARGIN`` of ``min_p``.
Equal probabilities are tested on rows built exactly (``tied_rows``).
"""
import math

import torch

import entropy_ops as eo
from conftest import eager_z, acc_dtype
from entropy_ops import reference as R

MARGIN = 1e-4


def _z64(x, temperature):
    z = x.double()
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        return z / temperature.double().unsqueeze(-1)
    return z / (temperature.double() if isinstance(temperature, torch.Tensor) else temperature)


def clear_of_top_p_cut(x, top_p, temperature=1.0):
    """Bool ``[...]``: rows whose sorted cumulative mass never comes within ``MARGIN`` of ``top_p``
    (and that are not NaN rows, which are compared separately)."""
    p = torch.softmax(_z64(x, temperature), dim=-1)
    cum = p.sort(dim=-1, descending=True).values.cumsum(-1)
    clear = ((cum - top_p).abs() > MARGIN).all(-1) | (top_p >= 1.0)
    return clear & ~torch.isnan(p).any(-1)


def clear_of_min_p_cut(x, min_p, temperature=1.0):
    if min_p == 0:
        return torch.ones(x.shape[:-1], dtype=torch.bool)
    z = _z64(x, temperature)
    ratio = (z - z.amax(-1, keepdim=True)).exp()
    near = ((ratio - min_p).abs() <= MARGIN * max(min_p, 1e-30)) & (ratio != 1.0)
    return ~near.any(-1)


def eager_top_p_entropy(x, top_p, temperature=1.0):
    """The yardstick: the reference's nucleus, its entropy computed eagerly with fp32 upcast."""
    kept = R.top_p_mask_ref(x, top_p, temperature, inclusive=False)
    z = eager_z(x, temperature)
    z = torch.where(kept, z, float("-inf"))
    lse = torch.logsumexp(z, dim=-1)
    p = torch.softmax(z, dim=-1)
    return lse - (p * torch.where(p > 0, z, 0)).sum(-1)


def eager_min_p_logprobs(x, labels, min_p, temperature=1.0, ignore_index=-100):
    z = eager_z(x, temperature)
    p = torch.softmax(z, dim=-1)
    kept = p >= min_p * p.amax(-1, keepdim=True)
    lse = torch.logsumexp(torch.where(kept, z, float("-inf")), dim=-1)
    y = labels.long().clamp(0, x.shape[-1] - 1)
    z_y = z.gather(-1, y[..., None]).squeeze(-1)
    kept_y = kept.gather(-1, y[..., None]).squeeze(-1)
    logp = torch.where(kept_y, z_y - lse, float("-inf"))
    return torch.where(labels == ignore_index, 0, logp)


def with_clear_cuts(x, kinds, seed=0, head=16):
    """``x`` with its random (``normal``) rows replaced by rows whose mass sits on ``head`` random
    logits (the rest at -40, negligible mass): their sorted cumulative masses take steps large
    enough that most rows are clear of any ``top_p`` cut. Special rows are kept as they are."""
    gen = torch.Generator().manual_seed(seed)
    x = x.clone()
    vocab = x.shape[-1]
    for r, kind in enumerate(kinds):
        if kind == "normal" and vocab > head:
            row = torch.full((vocab,), -40.0)
            row[torch.randperm(vocab, generator=gen)[:head]] = torch.randn(head, generator=gen) * 3
            x[r] = row.to(x.dtype)
    return x


def tied_rows(vocab, dtype, seed=0):
    """``([4, V] logits, ties [4])``: row r holds ``ties[r]`` equal logits (p = 1/ties exactly, the
    rest ``-inf``) at random positions: 8, 8, 8 and 16 tokens (16 only where V allows)."""
    gen = torch.Generator().manual_seed(seed)
    ties = [8, 8, 8, 16 if vocab >= 16 else 8]
    x = torch.full((4, vocab), float("-inf"))
    for r, n_tied in enumerate(ties):
        x[r, torch.randperm(vocab, generator=gen)[:n_tied]] = 2.0
    return x.to(dtype), torch.tensor(ties)


def all_outputs(x, y, g_h, g_lp):
    """Every output and gradient row of the selective ops (top-p entropy and mask, min-p log-probs
    with per-row upstream gradients, token_stats) on ``x``: what batch-invariance tests compare."""
    import entropy_ops as eo
    xa = x.detach().clone().requires_grad_(True)
    xb = x.detach().clone().requires_grad_(True)
    h = eo.top_p_entropy(xa, 0.8, 0.9)
    lp = eo.min_p_logprobs(xb, y, 0.05, 0.9)
    (ga,) = torch.autograd.grad(h, xa, g_h)
    (gb,) = torch.autograd.grad(lp, xb, torch.where(torch.isfinite(lp), g_lp, 0))
    return [h.detach(), lp.detach(), ga, gb, eo.top_p_mask(x, 0.8, 0.9), *eo.token_stats(x, y, 0.9)]


def masked_bad_shifted_rows():
    """``(x, y, mask, bad, shifted)``: 12 rows of V = 2000 holding every special kind (NaN kinds
    included), an ignored label in row 0, rows 1 and 4 masked out, and bool flags of the NaN
    and the +-1e4-shifted rows."""
    from conftest import FINITE_KINDS, NAN_KINDS, make_labels, make_rows
    x, kinds = make_rows(12, 2000, torch.float32, kinds=FINITE_KINDS + NAN_KINDS, seed=9)
    y = make_labels(12, 2000, seed=9)
    y[0] = -100
    mask = torch.ones(12, dtype=torch.bool)
    mask[[1, 4]] = False
    bad = torch.tensor([k in NAN_KINDS for k in kinds])
    shifted = torch.tensor([k.startswith("shift") for k in kinds])
    return x, y, mask, bad, shifted


def within(ours, ref, eager, abs_tol=1e-5):
    """SPEC §2's bound for a subset of rows already selected: ``|ours - ref| <= 2 |eager - ref| +
    abs_tol``, infinities and NaN matched exactly."""
    ref = ref.double()
    same_special = (torch.isnan(ours) == torch.isnan(ref)).all() and (
        ours.double()[torch.isinf(ref)] == ref[torch.isinf(ref)]).all()
    assert same_special, f"NaN/inf pattern differs: ours {ours}, ref {ref}"
    finite = torch.isfinite(ref)
    err = (ours.double() - ref)[finite].abs()
    bound = 2 * (eager.double() - ref)[finite].abs().max().item() + abs_tol if finite.any() else 0.0
    assert err.numel() == 0 or err.max().item() <= bound, f"max error {err.max().item():.3e} > {bound:.3e}"


__all__ = ["MARGIN", "acc_dtype", "clear_of_min_p_cut", "clear_of_top_p_cut", "eager_min_p_logprobs",
           "eager_top_p_entropy", "all_outputs", "masked_bad_shifted_rows", "tied_rows", "with_clear_cuts",
           "within"]


def check_min_p_bad_rows_have_a_nan_gradient(min_p, device="cpu"):
    """A NaN / +inf / all -inf row has a NaN logp and, under a non-zero upstream gradient, a NaN
    gradient row on the current backend (the torch backend used to give 0 when min_p > 0: a bad
    row's e keeps nothing); an ignored label's row gets 0."""
    import entropy_ops as eo
    nan = float("nan")
    x = torch.tensor([[0.0, 1, nan], [0, 1, float("inf")], [float("-inf")] * 3, [0, 1, nan], [0, 1, 2]], device=device)
    y = torch.tensor([1, 0, 2, -100, 1], device=device)
    xg = x.clone().requires_grad_(True)
    out = eo.min_p_logprobs(xg, y, min_p)
    (g,) = torch.autograd.grad(out, xg, torch.ones(5, device=device))
    out, g = out.cpu(), g.cpu()
    assert torch.isnan(out[:3]).all() and out[3] == 0 and torch.isfinite(out[4])
    assert torch.isnan(g[:3]).all() and (g[3] == 0).all() and torch.isfinite(g[4]).all()


def many_equal_logits_rows():
    """``(x, T)`` rows where most logits share one value (a vocabulary masked with -40 or -1e4; a
    max whose ``-40 - max`` is halfway between two fp32 values): any rounding of ``x - max`` or of
    the ``1/V`` and ``1/T`` scalings repeats in every term of self_certainty's mean of ``z`` and
    does not average out (found by a differential fuzzer: 4.5e-5 off at T = 0.05, SPEC's bound 4.3e-5)."""
    idx = [385, 1352, 2102, 4584, 5314, 6267, 8449, 8877, 9725, 11380, 11990, 12139, 12140, 12220, 14543, 15735]
    val = [-2.427734375, 1.45098876953125, 2.0932395458221436, 2.5984694957733154, 2.533547878265381,
           -2.8469395637512207, 4.888757705688477, 0.08172424137592316, 1.674838900566101, 3.450935125350952,
           -2.2151529788970947, -10.01122760772705, 2.201066732406616, 0.7368154525756836, 0.4640354514122009,
           -3.330998420715332]
    fuzzed = torch.full((1, 16385), -40.0)
    fuzzed[0, idx] = torch.tensor(val)
    halfway = torch.full((1, 4096), -40.0)
    halfway[0, 7] = 4.0 + 2.0 ** -19
    masked = torch.full((3, 4096), -1e4)
    masked[:, :64] = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)) * 2
    return [(fuzzed, 0.05), (halfway, 1.0 / 64), (masked, 1.0)]


def check_self_certainty_of_many_equal_logits(device="cpu"):
    """token_stats' self_certainty on ``many_equal_logits_rows`` (fp32 and bf16) within SPEC §2's
    bound of the float64 reference, and fp32's first row within one rounding of it."""
    from conftest import assert_within_eager_bound
    from test_token_stats import eager_token_stats

    for i, (x, temperature) in enumerate(many_equal_logits_rows()):
        for dtype in (torch.float32, torch.bfloat16):
            xd = x.to(dtype)
            got = eo.token_stats(xd.to(device), None, temperature).self_certainty.cpu()
            ref = R.token_stats_ref(xd, None, temperature).self_certainty
            eager = eager_token_stats(xd, None, temperature).self_certainty
            assert_within_eager_bound(got, ref, eager, what=f"self_certainty, rows {i}, {dtype}")
    x, temperature = many_equal_logits_rows()[0]
    got = eo.token_stats(x.to(device), None, temperature).self_certainty.cpu().double().item()
    ref = R.token_stats_ref(x, None, temperature).self_certainty.item()
    ulp = torch.finfo(torch.float32).eps * 2.0 ** math.floor(math.log2(abs(ref)))
    assert abs(got - ref) <= ulp, f"self_certainty {got} vs {ref}: more than one rounding off"


def check_lse_of_shifted_rows(device="cpu"):
    """token_stats' lse on rows shifted by +-1e4 (|lse| ~ 8e3, an fp32 ulp of 4.9e-4) at temperatures
    that are not powers of two: ``max / T + log S`` finished in double and rounded once, so within
    half an ulp of the float64 reference (plus log S's own rounding, far below 1e-5), hence within
    SPEC §2's bound whatever eager's luck; two float32 roundings were up to 1.5 ulp off (found by a
    differential fuzzer of the triton backend: 4.0e-4 where the bound was 1.8e-4)."""
    x = torch.randn(64, 100, generator=torch.Generator().manual_seed(0)) * 2
    x[::2] -= 1e4
    x[1::2] += 1e4
    for temperature in (1.3, torch.tensor(1.3), torch.rand(64, generator=torch.Generator().manual_seed(1)) + 0.3):
        t = temperature.to(device) if isinstance(temperature, torch.Tensor) else temperature
        got = eo.token_stats(x.to(device), None, t).lse.cpu().double()
        ref = R.token_stats_ref(x, None, temperature).lse
        half_ulp = torch.finfo(torch.float32).eps * 2.0 ** torch.floor(torch.log2(ref.abs())) / 2
        err = (got - ref).abs()
        assert (err <= half_ulp + 1e-5).all(), (
            f"lse at T = {temperature if not isinstance(temperature, torch.Tensor) else 'tensor'}: "
            f"{int((err > half_ulp + 1e-5).sum())} of 64 rows more than half an ulp off (max {err.max():.3e})")
