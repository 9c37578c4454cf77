"""Shared fixtures and helpers of the test suite.

- ``backend``: parametrizes a test over the backends that run on CPU tensors ("torch", "cpu") and
  runs it inside ``eo.use_backend``; "cpu" is skipped only while ``entropy_ops._C`` is not built.
- ``make_rows``: random ``[N, V]`` logits with special rows (one-hot, uniform, shifted by +-1e4,
  ``-inf`` masked vocab, and the NaN-producing rows) at known positions.
- ``eager_*``: the eager torch formula with fp32 upcast, the yardstick of SPEC §2's tolerance.
- ``assert_within_eager_bound``: error vs the float64 reference <= 2 x eager's error + 1e-5,
  per group of rows of the same kind; NaN and infinite reference values must be matched exactly.
"""
import os
import sys
import zlib

import pytest
import torch

import entropy_ops as eo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_BACKENDS = ["torch", "cpu"]
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
ABS_TOL = 1e-5

# Row kinds. Finite kinds have finite entropy; NAN_KINDS give NaN entropy (SPEC §2).
NORMAL = "normal"
FINITE_KINDS = ("onehot_neginf", "onehot_soft", "uniform", "shift_pos", "shift_neg", "neginf_mask")
NAN_KINDS = ("all_neginf", "has_nan", "has_posinf")


def skip_unless_available(name):
    ok, reason = eo.available_backends()[name]
    if not ok:
        pytest.skip(f"backend {name!r} unavailable: {reason}")


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    skip_unless_available(request.param)
    with eo.use_backend(request.param):
        yield request.param


@pytest.fixture
def native():
    """The ``entropy_ops._C`` module (skipped while it is not built)."""
    skip_unless_available("cpu")
    from entropy_ops import _C
    return _C


@pytest.fixture(autouse=True)
def _seed_global_rng(request):
    """Each test draws from the global RNG seeded by its own id: its data do not depend on which
    tests ran before it (or on how many numbers an op under test drew)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _restore_backend_state():
    before = eo.get_backend()
    yield
    eo.set_backend(before)


def subprocess_env(**overrides):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


PYTHON = sys.executable


# ---- inputs --------------------------------------------------------------------------------------

def _special_row(kind, vocab, gen):
    row = torch.randn(vocab, generator=gen) * 2.0
    pos = int(torch.randint(vocab, (1,), generator=gen))
    if kind == "onehot_neginf":
        row.fill_(float("-inf"))
        row[pos] = 3.0
    elif kind == "onehot_soft":
        row.fill_(-60.0)
        row[pos] = 40.0
    elif kind == "uniform":
        row.fill_(3.7)
    elif kind == "shift_pos":
        row += 1e4
    elif kind == "shift_neg":
        row -= 1e4
    elif kind == "neginf_mask":
        drop = torch.rand(vocab, generator=gen) < 0.5
        drop[pos] = False
        row[drop] = float("-inf")
    elif kind == "all_neginf":
        row.fill_(float("-inf"))
    elif kind == "has_nan":
        row[pos] = float("nan")
    elif kind == "has_posinf":
        row[pos] = float("inf")
    else:
        raise ValueError(kind)
    return row


def make_rows(n_rows, vocab, dtype=torch.float32, kinds=FINITE_KINDS, seed=0, scale=2.0):
    """``([N, V] logits in dtype, kinds list of length N)``: random rows, the first ``len(kinds)``
    rows (as many as fit) replaced by special rows of those kinds, then rows shuffled."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, vocab, generator=gen) * scale
    row_kinds = [NORMAL] * n_rows
    for i, kind in enumerate(kinds[:n_rows]):
        x[i] = _special_row(kind, vocab, gen)
        row_kinds[i] = kind
    perm = torch.randperm(n_rows, generator=gen)
    return x[perm].to(dtype), [row_kinds[i] for i in perm.tolist()]


def make_labels(n_rows, vocab, dtype=torch.int64, ignore_index=-100, n_ignored=1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(vocab, (n_rows,), generator=gen)
    y[:min(n_ignored, n_rows)] = ignore_index
    return y[torch.randperm(n_rows, generator=gen)].to(dtype)


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- eager torch with fp32 upcast: the yardstick ---------------------------------------------------

def _eager_z(logits, temperature):
    z = logits.to(acc_dtype(logits.dtype))
    if isinstance(temperature, torch.Tensor):
        t = temperature.to(z.dtype)
        return z / (t.unsqueeze(-1) if t.dim() > 0 else t)
    return z / temperature


def _eager_lse_entropy(z):
    lse = torch.logsumexp(z, dim=-1)
    p = torch.softmax(z, dim=-1)
    # where() around z, not around p*z, so that autograd never forms 0 * -inf.
    h = lse - (p * torch.where(p > 0, z, 0)).sum(-1)
    return lse, h


def eager_entropy(logits, temperature=1.0, mask=None):
    _, h = _eager_lse_entropy(_eager_z(logits, temperature))
    return h if mask is None else torch.where(mask, h, 0)


def eager_logprobs_and_entropy(logits, labels, temperature=1.0, ignore_index=-100, mask=None):
    z = _eager_z(logits, temperature)
    lse, h = _eager_lse_entropy(z)
    y = labels.long()
    z_y = z.gather(-1, y.clamp(0, z.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(y == ignore_index, 0, z_y - lse)
    if mask is not None:
        logp, h = torch.where(mask, logp, 0), torch.where(mask, h, 0)
    return logp, h


# ---- the tolerance of SPEC §2 ---------------------------------------------------------------------

def assert_within_eager_bound(ours, ref, eager, kinds=None, what="value", abs_tol=ABS_TOL):
    """``|ours - ref| <= 2 |eager - ref| + abs_tol`` with errors taken as the max over each group of
    rows of one kind (``kinds``: one entry per row of the flattened leading shape). Where the
    reference is NaN or infinite, ``ours`` must be the same NaN / infinity; a reference beyond the
    range of ``ours``' dtype (the logp of a label masked with ``finfo.min``, at T < 1) counts as the
    infinity it rounds to."""
    ref = ref.double()
    if ours.dtype != torch.float64:
        ref = torch.where(ref.abs() > torch.finfo(ours.dtype).max, ref.to(ours.dtype).double(), ref)
    ours_d = ours.double()
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    nan_ref = torch.isnan(ref)
    bad_nan = torch.isnan(ours_d) != nan_ref
    assert not bad_nan.any(), (
        f"{what}: NaN pattern differs from the reference at {bad_nan.nonzero().tolist()[:10]} "
        f"(ours {ours_d[bad_nan][:10].tolist()}, ref {ref[bad_nan][:10].tolist()})"
    )
    inf_ref = torch.isinf(ref)
    bad_inf = inf_ref & (ours_d != ref)
    assert not bad_inf.any(), f"{what}: reference is infinite at {bad_inf.nonzero().tolist()[:10]}, ours differs"
    finite = torch.isfinite(ref)
    assert torch.isfinite(ours_d[finite]).all(), f"{what}: non-finite output where the reference is finite"
    if ref.numel() == 0:
        return
    n_rows = len(kinds) if kinds is not None else (ref.shape[0] if ref.dim() else 1)
    err = torch.where(finite, (ours_d - ref).abs(), 0).reshape(n_rows, -1).amax(-1)
    eager_err = torch.where(finite, (eager.double() - ref).abs(), 0).reshape(n_rows, -1).amax(-1)
    assert not torch.isnan(eager_err).any(), f"{what}: the eager yardstick is NaN where the reference is finite"
    kinds = kinds if kinds is not None else [NORMAL] * n_rows
    for kind in sorted(set(kinds)):
        rows = torch.tensor([k == kind for k in kinds])
        ours_max, eager_max = err[rows].max().item(), eager_err[rows].max().item()
        bound = 2 * eager_max + abs_tol
        assert ours_max <= bound, (
            f"{what} ({kind} rows): max error {ours_max:.3e} > bound {bound:.3e} "
            f"(eager fp32-upcast error {eager_max:.3e})"
        )


def reference_grad(fn, logits, *args, weights, **kwargs):
    """Gradient wrt logits of ``sum_k (weights[k] * out[k]).sum()`` with ``out = fn(logits64, ...)``,
    by autograd in float64 through the reference, on the same (rounded) input."""
    x = logits.detach().double().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    out = out if isinstance(out, tuple) else (out,)
    loss = sum((w.double() * o).sum() for w, o in zip(weights, out) if w is not None)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def autograd_grad(fn, logits, *args, weights, **kwargs):
    """Gradient wrt logits of ``sum_k (weights[k] * out[k]).sum()`` through ``fn`` as it is (our
    ops, or the eager fp32-upcast formula as the yardstick), in logits' dtype."""
    x = logits.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    out = out if isinstance(out, tuple) else (out,)
    loss = sum((w.to(o.dtype) * o).sum() for w, o in zip(weights, out) if w is not None)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


eager_grad = ours_grad = autograd_grad


def assert_neginf_grad_is_zero(grad, x, labels=None):
    """``-inf`` logits get an exact 0 gradient; except the labelled one, whose d logp_y / d z_y is
    1 - p_y = 1 even at ``-inf`` (the reference's value too)."""
    neginf = torch.isneginf(x)
    if labels is not None:
        y = labels.long()
        hit = torch.zeros_like(neginf)
        valid = (y >= 0) & (y < x.shape[-1])
        hit.scatter_(-1, y.clamp(0, x.shape[-1] - 1).unsqueeze(-1), valid.unsqueeze(-1))
        neginf &= ~hit
    assert not grad.isnan().any(), "NaN in the gradient"
    assert (grad[neginf] == 0).all(), "-inf logits must get an exact 0 gradient"


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
    log_p = torch.log_softmax(_eager_z(logits, temperature), -1)
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


def assert_same_bits(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, (
        f"{what}: {tuple(got.shape)} {got.dtype} vs {tuple(want.shape)} {want.dtype}")
    same = (got == want) | (got.isnan() & want.isnan())
    if not bool(same.all()):
        bad = (~same).nonzero()[:5]
        idx = tuple(bad.t())
        raise AssertionError(f"{what}: bits differ at {bad.tolist()}: got {got[idx].tolist()}, "
                             f"want {want[idx].tolist()}")


def check_layouts_give_the_same_bits(device="cpu", shapes=((3, 1000, 16), (2, 4099, 13)), dtype=torch.bfloat16):
    """Every vocabulary op on the current backend gives the same bits, values and gradients, for the
    same rows in each layout of ``_layouts`` (SPEC §2: a row's results depend on its values, never
    on where it sits in memory; a microbatch slice or a padded vocabulary must not change a bit)."""
    for n, vocab, pad in shapes:
        gen = torch.Generator().manual_seed(vocab)
        x = (torch.randn(n, vocab, generator=gen) * 3).to(dtype).to(device)
        y = torch.randint(0, vocab, (n,), generator=gen).to(device)
        w = torch.linspace(0.5, 1.5, n, device=device)
        results = {}
        for name, view in _layouts(x, pad).items():
            leaf = view.detach().requires_grad_(True)
            logp, h = eo.logprobs_and_entropy(leaf, y, 0.7)
            (g_rows,) = torch.autograd.grad((w * logp + h).sum(), leaf)
            h_top = eo.top_p_entropy(leaf, 0.8, 0.7)
            (g_top,) = torch.autograd.grad((w * h_top).sum(), leaf)
            lp_min = eo.min_p_logprobs(leaf, y, 0.05, 0.7)
            (g_min,) = torch.autograd.grad((w * torch.where(torch.isfinite(lp_min), lp_min, 0)).sum(), leaf)
            stats = list(eo.token_stats(view, y, 0.7))
            results[name] = [logp, h, g_rows, h_top, g_top, lp_min, g_min, eo.top_p_mask(view, 0.8, 0.7), *stats]
        base = results.pop("contiguous")
        for name, outs in results.items():
            for i, (a, b) in enumerate(zip(outs, base)):
                assert_same_bits(a, b, f"{name} layout, output {i}, V={vocab}")


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
