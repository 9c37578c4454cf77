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

# Under the Triton interpreter tl.dot is numpy's matmul. OpenBLAS's Haswell sgemm (what numpy picks
# on AVX2-only x86, Zen included) rounds a row differently by its position in the tile, so the fused
# linear kernel's batch-invariance checks would test OpenBLAS instead of the kernel (measured on an
# AMD EPYC: 218 of 240 shifted rows differ). The Sandybridge kernel, like SkylakeX's, gives a row the
# same bits wherever it sits; OpenBLAS reads the variable when numpy first loads, hence before torch.
# Set, not defaulted: some machines come with OPENBLAS_CORETYPE=Haswell in their environment (seen
# 2026-12-08, where CI's interpreter stage then failed on it).
if (os.environ.get("TRITON_INTERPRET") == "1"
        and os.environ.get("OPENBLAS_CORETYPE") not in ("Sandybridge", "SkylakeX")):
    os.environ["OPENBLAS_CORETYPE"] = "Sandybridge"

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


@pytest.fixture(autouse=True)
def _unwritten_outputs_read_as_nan():
    """Where the GPU kernels run on CPU tensors (the Triton interpreter, the CUDA emulator), torch's
    deterministic mode fills every ``torch.empty`` (NaN for floats, True / the maximum for bool and
    integers): an output a kernel fails to write then reads as NaN, never as leftover memory that
    happens to hold the expected 0. ``warn_only``: no op is refused."""
    if os.environ.get("TRITON_INTERPRET") != "1" and not os.environ.get("ENTROPY_OPS_CUDA_EMULATOR"):
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


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

def eager_z(logits, temperature):
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
    _, h = _eager_lse_entropy(eager_z(logits, temperature))
    return h if mask is None else torch.where(mask, h, 0)


def eager_logprobs_and_entropy(logits, labels, temperature=1.0, ignore_index=-100, mask=None):
    z = eager_z(logits, temperature)
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


def assert_same_bits(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, (
        f"{what}: {tuple(got.shape)} {got.dtype} vs {tuple(want.shape)} {want.dtype}")
    same = (got == want) | (got.isnan() & want.isnan())
    if not bool(same.all()):
        bad = (~same).nonzero()[:5]
        idx = tuple(bad.t())
        raise AssertionError(f"{what}: bits differ at {bad.tolist()}: got {got[idx].tolist()}, "
                             f"want {want[idx].tolist()}")
