"""Checks of the entropy row ops that every backend runs (the CPU tests with the ``backend`` fixture,
the Triton interpreter, ``-m gpu``), each on a ``device``, against the float64 reference within
SPEC §2's eager bound:

- ``check_finfo_masked_rows`` / ``check_uniform_row_of_finfo_min``: rows masked with
  ``torch.finfo(dtype).min`` (``masked_fill``'s idiom) stay finite and exact;
- ``check_low_temperature_grads`` / ``check_far_label_logps``: low temperatures, where a rounded
  lse or ``1/T`` would show;
- ``check_layouts_give_the_same_bits``: a row's bits do not depend on its memory layout;
- ``check_inplace_backward_on_a_grid``: ``inplace_backward`` of ``logits[:, :-1]`` and of a transpose
  writes into the view's own rows only;
- ``check_bad_rows_get_nan_gradients``: NaN stays in its row, gradients included;
- ``check_labels_at_chunk_edges``: labels on the first and last token of a backend's chunks.
"""
import torch

import entropy_ops as eo
from conftest import (
    assert_same_bits,
    assert_within_eager_bound,
    eager_grad,
    eager_logprobs_and_entropy,
    eager_z,
    make_rows,
    ours_grad,
    reference_grad,
)


# ---- rows masked with finfo(dtype).min (masked_fill(~allowed, torch.finfo(dtype).min)) ---------

FINFO_MASK_PATTERNS = ("first_16", "first_60_percent", "random_90_percent", "all_but_two")


def finfo_masked_rows(vocab, dtype, seed=0):
    """``(logits [P, vocab], labels [P])``: one row per pattern of FINFO_MASK_PATTERNS, the masked
    entries ``torch.finfo(dtype).min``, the label an unmasked token. Masked entries first make
    states of masked entries alone (a GPU lane's first groups, a whole CPU block, a Triton block)
    that are later rescaled to a real max: where the rescale factor underflows, ``sum_exp * delta``
    overflows (delta ~ -3.4e38), and a `-inf * 0` used to make the entropy NaN."""
    gen = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for pattern in FINFO_MASK_PATTERNS:
        x = torch.randn(vocab, generator=gen) * 2
        j = torch.arange(vocab)
        drop = {"first_16": j < 16, "first_60_percent": j < int(0.6 * vocab),
                "random_90_percent": torch.rand(vocab, generator=gen) < 0.9,
                "all_but_two": j < vocab - 2}[pattern]
        drop[-1] = False  # at least one allowed token, the label
        rows.append(x.to(dtype).masked_fill(drop, torch.finfo(dtype).min))
        labels.append(vocab - 1)
    return torch.stack(rows), torch.tensor(labels)


def check_finfo_masked_rows(device="cpu", vocabs=(16, 1000, 4099, 32000), dtypes=None, temperatures=(1.0, 0.7)):
    """``entropy`` and ``logprobs_and_entropy`` on the current backend, forward and the gradient of
    ``w_H H + w_logp logp``, against the float64 reference within SPEC §2's eager bound, and every
    ``token_stats`` field, on rows masked with ``finfo.min``: finite values, no NaN."""
    from entropy_ops.reference import logprobs_and_entropy_ref, token_stats_ref

    for dtype in dtypes or (torch.float32, torch.bfloat16, torch.float16):
        for vocab in vocabs:
            x, y = finfo_masked_rows(vocab, dtype, seed=vocab)
            kinds = list(FINFO_MASK_PATTERNS)
            weights = (torch.linspace(0.5, 1.5, len(kinds)), torch.linspace(-1.0, 1.0, len(kinds)))
            for t in temperatures:
                what = f"{dtype} V={vocab} T={t}"
                ref_logp, ref_h = logprobs_and_entropy_ref(x, y, t)
                eager_logp, eager_h = eager_logprobs_and_entropy(x, y, t)
                logp, h = eo.logprobs_and_entropy(x.to(device), y.to(device), t)
                assert_within_eager_bound(h.cpu(), ref_h, eager_h, kinds, what=f"entropy {what}")
                assert_within_eager_bound(logp.cpu(), ref_logp, eager_logp, kinds, what=f"logp {what}")
                assert_within_eager_bound(eo.entropy(x.to(device), t).cpu(), ref_h, eager_h, kinds,
                                          what=f"entropy() {what}")
                ref_g = reference_grad(logprobs_and_entropy_ref, x, y, t, weights=weights[::-1])
                eager_g = eager_grad(eager_logprobs_and_entropy, x, y, t, weights=weights[::-1])
                w_dev = tuple(w.to(device) for w in weights[::-1])
                grad = ours_grad(eo.logprobs_and_entropy, x.to(device), y.to(device), t, weights=w_dev).cpu()
                assert_within_eager_bound(grad, ref_g, eager_g, kinds, what=f"grad {what}")
                check_token_stats_close(eo.token_stats(x.to(device), y.to(device), t),
                                        token_stats_ref(x, y, t), what=f"token_stats {what}")


def check_uniform_row_of_finfo_min(dtype, device="cpu"):
    """Four equal ``finfo.min`` logits at T = 0.5: ``max / T`` overflows, so ``lse`` is -inf (the
    correctly rounded float32 of -6.8e38), but the distribution is uniform: ``logp = -log 4``,
    ``H = log 4``, every ``token_stats`` field of a uniform row, and the gradient of ``logp_0 + H``
    is ``(1[j = 0] - 1/4) / T`` (the entropy term is 0 for a uniform row). The saved row state
    ``(max, log S) = (finfo.min, log 4)`` is finite. The float64 reference cannot serve here (its
    ``lse - sum p z`` cancels 3e38-sized terms)."""
    import math

    x = torch.full((1, 4), torch.finfo(dtype).min, dtype=dtype, device=device, requires_grad=True)
    y = torch.tensor([0], device=device)
    stats = eo.token_stats(x.detach(), y, 0.5)
    log4 = math.log(4)
    uniform = dict(lse=-math.inf, entropy=log4, logp=-log4, max_logp=-log4, collision=0.25, varentropy=0.0,
                   self_certainty=0.0, entropy_drift=0.0)
    for field, want in uniform.items():
        torch.testing.assert_close(getattr(stats, field).cpu(), torch.tensor([want]), rtol=1e-6, atol=1e-6,
                                   msg=lambda m: f"token_stats.{field}: {m}")
    logp, h = eo.logprobs_and_entropy(x, y, 0.5)
    (logp + h).sum().backward()
    torch.testing.assert_close(logp.cpu(), torch.tensor([-log4]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.cpu(), torch.tensor([log4]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad.float().cpu(), torch.tensor([[1.5, -0.5, -0.5, -0.5]]), rtol=0, atol=0)


# ---- low temperatures ------------------------------------------------------------------------------

LOW_TEMPERATURES = (0.01, 0.1)


def eager_logprobs_and_entropy_log_softmax(logits, labels, temperature=1.0):
    """The eager formula through ``log_softmax`` (fp32 upcast), finite rows only: the yardstick at
    low temperatures, where SPEC's ``lse - sum p z`` cancels (its own gradient is off by 1.4e-4 on
    a row of ``low_temperature_rows`` at T = 0.01, log_softmax's by 3e-6)."""
    log_p = torch.log_softmax(eager_z(logits, temperature), -1)
    h = -(log_p.exp() * log_p).sum(-1)
    return log_p.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1), h


def low_temperature_rows(vocab, temperature, n_rows=12, seed=0):
    """float32 ``[n_rows, V]`` rows whose ``lse = log sum e^(x / T)`` spans [8, 64 + log V): there a
    float32 lse carries a rounding error of up to 1.9e-6, which ``z_j - lse`` would pass to every
    ``log p_j`` and the gradient would multiply by ``1 / T``. The logits sit within a few ``T`` of
    the row max, so ``p`` is far from one-hot."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, vocab, generator=gen) * (3 * temperature)
    x = x - x.amax(-1, keepdim=True)
    top = torch.linspace(8, 63.9, n_rows)[:, None] * temperature  # max / T across [8, 64)
    return x + top


def check_low_temperature_grads(device="cpu", vocabs=(1, 4, 111, 5000), temperatures=LOW_TEMPERATURES):
    """The gradient of ``w_H H + w_logp logp`` on ``low_temperature_rows`` against the float64
    reference, within the eager bound of the ``log_softmax`` formula; exactly 0 at V = 1 (H and
    logp of a one-token row are constants)."""
    from entropy_ops.reference import logprobs_and_entropy_ref

    for vocab in vocabs:
        for t in temperatures:
            x = low_temperature_rows(vocab, t, seed=vocab)
            gen = torch.Generator().manual_seed(vocab + 1)
            y = torch.randint(vocab, (x.shape[0],), generator=gen)
            weights = (torch.randn(x.shape[0], generator=gen), torch.randn(x.shape[0], generator=gen))
            w_dev = tuple(w.to(device) for w in weights)
            grad = ours_grad(eo.logprobs_and_entropy, x.to(device), y.to(device), t, weights=w_dev).cpu()
            ref = reference_grad(logprobs_and_entropy_ref, x, y, t, weights=weights)
            eager = eager_grad(eager_logprobs_and_entropy_log_softmax, x, y, t, weights=weights)
            assert_within_eager_bound(grad, ref, eager, what=f"grad at V={vocab} T={t}")
            if vocab == 1:
                assert (grad == 0).all(), f"a one-token row has a constant H and logp: grad {grad.abs().max()}"
            grad_h = ours_grad(eo.entropy, x.to(device), t, weights=w_dev[:1]).cpu()
            ref_h = reference_grad(logprobs_and_entropy_ref, x, y, t, weights=(None, weights[0]))
            eager_h = eager_grad(eager_logprobs_and_entropy_log_softmax, x, y, t, weights=(None, weights[0]))
            assert_within_eager_bound(grad_h, ref_h, eager_h, what=f"entropy() grad at V={vocab} T={t}")


def check_far_label_logps(device="cpu", vocabs=(4, 111, 5000), temperatures=LOW_TEMPERATURES, linear_up_to=5000):
    """Log-probs of labels far below the row max at low temperatures (|logp| up to ~2000), row by
    row within the eager bound, from ``logprobs_and_entropy``, ``token_stats``, ``min_p_logprobs``
    (min_p = 0 keeps every token) and the linear head with one and with two labels per row (an
    identity head, V <= ``linear_up_to``: its product is V x V). Each
    forms ``(x_y - max) / T - log S`` in float64 and rounds once: in float32, ``(x_y - max) (1/T)``
    rounds 1/T and the product at the size of logp, an ulp of it, more than eager's error there."""
    from entropy_ops.reference import logprobs_and_entropy_ref

    for vocab in vocabs:
        for t in temperatures:
            gen = torch.Generator().manual_seed(vocab)
            x = torch.randn(64, vocab, generator=gen) * 4
            y = x.argmin(-1)  # the label farthest below the max
            ref, _ = logprobs_and_entropy_ref(x, y, t)
            eager, _ = eager_logprobs_and_entropy(x, y, t)
            rows = [str(i) for i in range(len(x))]  # the bound row by row
            xd, yd = x.to(device), y.to(device)
            outs = {
                "logprobs_and_entropy": eo.logprobs_and_entropy(xd, yd, t)[0],
                "token_stats": eo.token_stats(xd, yd, t).logp,
                "min_p_logprobs": eo.min_p_logprobs(xd, yd, 0.0, t),
            }
            if vocab <= linear_up_to:
                eye = torch.eye(vocab, device=device)
                outs["linear (one label)"] = eo.linear_logprobs_and_entropy(xd, eye, yd, temperature=t)[0]
                outs["linear (two labels)"] = eo.linear_logprobs_and_entropy(
                    xd, eye, torch.stack([yd, yd], -1), temperature=t)[0][:, 1]
            for name, logp in outs.items():
                assert_within_eager_bound(logp.detach().cpu(), ref, eager, rows, what=f"{name} at V={vocab} T={t}")


def check_token_stats_close(stats, ref, what, tol=1e-4):
    """Every field of ``token_stats`` against the float64 reference rounded to float32 (a true
    self_certainty past float32's range is inf there): the same NaN / inf pattern, values within
    ``tol`` (relative, or absolute below 1)."""
    for name, got in stats._asdict().items():
        want = getattr(ref, name)
        if got is None:
            assert want is None, f"{what}: {name}"
            continue
        got, want = got.cpu().double(), want.float().double()
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, equal_nan=True, msg=lambda m: f"{what}: {name}: {m}")


# ---- one row in several memory layouts ------------------------------------------------------------

def _layouts(x, pad):
    """``x [N, V]`` contiguous, inside rows ``pad`` wider (row stride V + pad: 16-byte aligned rows
    whose last vector group is partial when V is not a multiple of the vector width), and at
    storage offset 1 (unaligned rows: the scalar-load paths)."""
    n, v = x.shape
    wide = torch.full((n, v + pad), float("nan"), dtype=x.dtype, device=x.device)
    wide[:, :v] = x
    flat = torch.full((n * v + 1,), float("nan"), dtype=x.dtype, device=x.device)
    flat[1:] = x.reshape(-1)
    return {"contiguous": x, "wide": wide[:, :v], "offset_1": flat[1:].view(n, v)}


_COPIES = 4  # rows per sequence in the grid layouts: logits[:, :-1] of 5 positions is read in place


def _grid_layouts(x, pad):
    """``x``'s rows, each ``_COPIES`` times, as ``[n, _COPIES, V]`` views whose leading dims do not
    collapse, so that the ops read them on a grid (``ops/_rows.py``): ``shifted`` is a trainer's
    ``logits[:, :-1]`` of a NaN-filled ``[n, _COPIES + 1, V + pad]`` buffer (the NaN rows between
    are never read), ``transposed`` a ``[_COPIES, n, V]`` buffer seen as ``[n, _COPIES, V]``."""
    n, v = x.shape
    shifted = torch.full((n, _COPIES + 1, v + pad), float("nan"), dtype=x.dtype, device=x.device)
    shifted[:, :_COPIES, :v] = x[:, None]
    transposed = x[None].expand(_COPIES, n, v).contiguous()
    return {"shifted": shifted[:, :_COPIES, :v], "transposed": transposed.transpose(0, 1)}


def _vocab_ops(view, y, w):
    """Every vocabulary op's outputs and gradients on ``view`` (leading shape of ``y`` and ``w``)."""
    leaf = view.detach().requires_grad_(True)
    logp, h = eo.logprobs_and_entropy(leaf, y, 0.7)
    (g_rows,) = torch.autograd.grad((w * logp + h).sum(), leaf)
    h_top = eo.top_p_entropy(leaf, 0.8, 0.7)
    (g_top,) = torch.autograd.grad((w * h_top).sum(), leaf)
    lp_min = eo.min_p_logprobs(leaf, y, 0.05, 0.7)
    (g_min,) = torch.autograd.grad((w * torch.where(torch.isfinite(lp_min), lp_min, 0)).sum(), leaf)
    stats = list(eo.token_stats(view, y, 0.7))
    return [logp, h, g_rows, h_top, g_top, lp_min, g_min, eo.top_p_mask(view, 0.8, 0.7), *stats]


def check_layouts_give_the_same_bits(device="cpu", shapes=((3, 1000, 16), (2, 4099, 13)), dtype=torch.bfloat16):
    """Every vocabulary op on the current backend gives the same bits, values and gradients, for the
    same rows in each layout of ``_layouts`` and ``_grid_layouts`` (SPEC §2: a row's results depend
    on its values, never on where it sits in memory; a microbatch slice, a padded vocabulary or a
    shifted ``logits[:, :-1]`` must not change a bit)."""
    from entropy_ops.ops._rows import Rows
    for n, vocab, pad in shapes:
        gen = torch.Generator().manual_seed(vocab)
        x = (torch.randn(n, vocab, generator=gen) * 3).to(dtype).to(device)
        y = torch.randint(0, vocab, (n,), generator=gen).to(device)
        w = torch.linspace(0.5, 1.5, n, device=device)
        base = _vocab_ops(x, y, w)
        for name, view in _layouts(x, pad).items():
            for i, (a, b) in enumerate(zip(_vocab_ops(view, y, w), base)):
                assert_same_bits(a, b, f"{name} layout, output {i}, V={vocab}")
        for name, view in _grid_layouts(x, pad).items():
            assert n == 1 or Rows(view).on_grid, name
            outs = _vocab_ops(view, y[:, None].expand(n, _COPIES), w[:, None].expand(n, _COPIES))
            for i, (a, b) in enumerate(zip(outs, base)):
                for j in range(_COPIES):
                    assert_same_bits(a[:, j], b, f"{name} layout, copy {j}, output {i}, V={vocab}")


def check_inplace_backward_on_a_grid(device="cpu", shapes=((3, 1000, 16), (2, 4099, 0)), dtype=torch.bfloat16):
    """``inplace_backward`` on the ``_grid_layouts`` views of an intermediate: the gradient, the same
    bits as out of place, lands in the view's own rows; the rows between (NaN, the last position of
    each sequence in ``shifted``) and the padding keep their bits. Returns the in-place runs'
    ``(logits, labels, upstream weights)`` for callers that check more (memory)."""
    runs = []
    for n, vocab, pad in shapes:
        gen = torch.Generator().manual_seed(vocab + 1)
        x = (torch.randn(n, vocab, generator=gen) * 3).to(dtype).to(device)
        y = torch.randint(0, vocab, (n, _COPIES), generator=gen).to(device)
        a, b = (torch.randn(n, _COPIES, generator=gen).to(device) for _ in range(2))
        for name, view in _grid_layouts(x, pad).items():
            base = view._base if view._base is not None else view
            grads = []
            for inplace in (False, True):
                leaf = base.clone().requires_grad_(True)
                inter = leaf * 1.0  # an intermediate: its buffer may take the gradient
                logits = inter.as_strided(view.shape, view.stride(), view.storage_offset())
                logp, h = eo.logprobs_and_entropy(logits, y, 0.7, inplace_backward=inplace)
                grads.append(torch.autograd.grad((a * logp + b * h).sum(), leaf)[0])
                if inplace:
                    runs.append((logits, y, (a, b)))
            what = f"{name} layout, V={vocab}"
            grad_view = grads[1].as_strided(view.shape, view.stride(), view.storage_offset())
            assert_same_bits(grads[1], grads[0], f"{what}: in place vs out of place")
            assert_same_bits(logits.detach(), grad_view, f"{what}: the gradient is in the view")
            outside = torch.ones_like(base, dtype=torch.bool)
            outside.as_strided(view.shape, view.stride(), view.storage_offset()).fill_(False)
            assert_same_bits(inter.detach()[outside], base[outside], f"{what}: the rows between")
    return runs


def check_bad_rows_get_nan_gradients(device="cpu", vocab=300):
    """SPEC §2: a row that is all -inf or holds NaN / +inf gives NaN in that row only, in its
    gradient too wherever its upstream gradient is nonzero (not a silent 0); a zero upstream
    gradient still gives exactly 0; the other rows keep the bits they have alone. The same for the
    fused linear head with a NaN hidden state."""
    gen = torch.Generator().manual_seed(vocab)
    x = torch.randn(5, vocab, generator=gen).to(device)
    x[1] = float("-inf")
    x[2, 7] = float("nan")
    x[3, 11] = float("inf")
    y = torch.randint(0, vocab, (5,), generator=gen).to(device)
    for g_logp, g_h in ((0.0, 1.0), (1.0, 0.0), (0.5, -1.0)):
        leaf = x.clone().requires_grad_(True)
        logp, h = eo.logprobs_and_entropy(leaf, y)
        up_h = torch.full((5,), g_h, device=device)
        up_h[2] = 0.0  # a bad row whose upstream gradient is 0 in both outputs (g_logp aside)
        (grad,) = torch.autograd.grad((g_logp * logp + up_h * h).sum(), leaf)
        assert grad[[1, 3]].isnan().all(), (g_logp, g_h)
        assert (grad[2].isnan().all() if g_logp else (grad[2] == 0).all()), (g_logp, g_h)
        alone = x[[0, 4]].clone().requires_grad_(True)
        lp0, h0 = eo.logprobs_and_entropy(alone, y[[0, 4]])
        (g0,) = torch.autograd.grad((g_logp * lp0 + g_h * h0).sum(), alone)
        assert_same_bits(grad[[0, 4]], g0, f"good rows next to bad ones ({g_logp}, {g_h})")
    hidden = torch.randn(6, 16, generator=gen).to(device)
    hidden[2] = float("nan")
    hidden.requires_grad_(True)
    weight = (torch.randn(vocab, 16, generator=gen) * 0.3).to(device)
    _, h = eo.linear_logprobs_and_entropy(hidden, weight, y[[0, 1, 2, 3, 4, 0]])
    (grad,) = torch.autograd.grad(h.sum(), hidden)
    assert grad[2].isnan().all() and torch.isfinite(grad[[0, 1, 3, 4, 5]]).all()


# ---- labels at the edges of a row's chunks --------------------------------------------------------

def check_labels_at_chunk_edges(vocab, chunk, device="cpu", temperature=0.7):
    """Log-probs and the gradient of ``w_H H + w_logp logp`` with each row's label on the first or
    the last token of one of the backend's chunks of ``chunk`` elements (a row split over programs
    or blocks), against the float64 reference within the eager bound: the label's logit is read by
    one chunk only in the forward, and its ``1[j=y]`` term is written by one chunk in the backward.
    Random labels almost never land there."""
    from entropy_ops.reference import logprobs_and_entropy_ref

    edges = sorted({j for start in range(0, vocab, chunk) for j in (start, min(start + chunk, vocab) - 1)})
    y = torch.tensor(edges)
    x, _ = make_rows(len(edges), vocab, kinds=(), seed=vocab)
    gen = torch.Generator().manual_seed(vocab + 1)
    weights = (torch.randn(len(edges), generator=gen), torch.randn(len(edges), generator=gen))
    logp, h = eo.logprobs_and_entropy(x.to(device), y.to(device), temperature)
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y, temperature)
    eager_logp, eager_h = eager_logprobs_and_entropy(x, y, temperature)
    assert_within_eager_bound(logp.cpu(), ref_logp, eager_logp, what=f"logp, labels {edges}")
    assert_within_eager_bound(h.cpu(), ref_h, eager_h, what="entropy")
    w_dev = tuple(w.to(device) for w in weights)
    grad = ours_grad(eo.logprobs_and_entropy, x.to(device), y.to(device), temperature, weights=w_dev).cpu()
    ref = reference_grad(logprobs_and_entropy_ref, x, y, temperature, weights=weights)
    eager = eager_grad(eager_logprobs_and_entropy, x, y, temperature, weights=weights)
    assert_within_eager_bound(grad, ref, eager, what=f"grad, labels {edges}")
