"""Smoke test of an installed entropy-ops wheel: run by `.ci/run` in a fresh venv (torch 2.13.0 CPU,
the wheel, Triton, numpy), from a temporary directory, so that the source tree is never imported.

    python smoke_wheel.py           the wheel's layout and native modules, `python -m entropy_ops
                                    info`, every public op once on CPU against its float64
                                    reference, then the Triton path in a child process
    python smoke_wheel.py --triton  (that child, under TRITON_INTERPRET=1, which Triton reads when a
                                    kernel is decorated) every op with a Triton kernel, CPU tensors
    python smoke_wheel.py --gpu     (on a GPU machine: `.ci/gpu_check wheel`) the layout, then
                                    logprobs_and_entropy and its gradient on bf16 rows of a 151936
                                    vocabulary on each GPU backend

A check that fails raises, naming itself; the exit status is then non-zero. This is a sanity check
of the packaging (small shapes, tolerances for float32 against float64); the test suite holds the
kernels to their exact bounds.
"""
import argparse
import importlib
import importlib.metadata
import os
import subprocess
import sys
import warnings

import torch

import entropy_ops as eo
from entropy_ops import reference as R
from smoke_native import expected_archs  # this file's directory is on sys.path

SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Public names that are not ops: errors, result types, backend selection, the reference module.
NOT_OPS = {"BackendUnavailableError", "NoKernelError", "PolicyLossOutput", "TokenStats",
           "available_backends", "get_backend", "set_backend", "use_backend", "reference"}


def check(what, ours, ref, exact=False, tol=2e-4):
    """``ours`` (a tensor, or a tuple of tensors) equals ``ref`` exactly or within ``tol`` (abs and rel)."""
    if isinstance(ours, (tuple, list)):
        assert len(ours) == len(ref), f"{what}: {len(ours)} outputs, reference has {len(ref)}"
        for i, (a, b) in enumerate(zip(ours, ref)):
            check(f"{what}[{i}]", a, b, exact, tol)
        return
    ours, ref = torch.as_tensor(ours), torch.as_tensor(ref)
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)}, reference {tuple(ref.shape)}"
    if exact:
        assert torch.equal(ours, ref.to(ours.dtype)), f"{what}: differs from the reference"
        return
    torch.testing.assert_close(ours.double(), ref.double(), rtol=tol, atol=tol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def inputs():
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 7, 50
    logits = torch.randn(B, T, V, generator=g) * 2
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 0] = -100
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, -2:] = False
    mask[2, 0] = False
    return g, logits, labels, mask


# ---- one case per public op: runs it once and compares with reference.py ----

def case_entropy():
    _, x, _, mask = inputs()
    check("entropy", eo.entropy(x, 0.7, mask=mask), R.entropy_ref(x, 0.7, mask=mask))


def case_logprobs_and_entropy():
    g, x, y, mask = inputs()
    w = torch.randn(2, *y.shape, generator=g)
    ours_x = x.clone().requires_grad_()
    logp, h = eo.logprobs_and_entropy(ours_x, y, 0.7, mask=mask)
    (logp * w[0] + h * w[1]).sum().backward()
    ref_x = x.double().requires_grad_()
    ref_logp, ref_h = R.logprobs_and_entropy_ref(ref_x, y, 0.7, mask=mask)
    (ref_logp * w[0] + ref_h * w[1]).sum().backward()
    check("logprobs_and_entropy", (logp, h), (ref_logp, ref_h))
    check("logprobs_and_entropy grad", ours_x.grad, ref_x.grad)


def case_token_stats():
    _, x, y, mask = inputs()
    ours, ref = eo.token_stats(x, y, 0.7, mask=mask), R.token_stats_ref(x, y, 0.7, mask=mask)
    for field in ref._fields:
        check(f"token_stats.{field}", getattr(ours, field), getattr(ref, field))


def case_top_p_entropy():
    g, x, _, mask = inputs()
    w = torch.randn(mask.shape, generator=g)
    ours_x = x.clone().requires_grad_()
    h = eo.top_p_entropy(ours_x, 0.8, 0.7, mask=mask)
    (h * w).sum().backward()
    ref_x = x.double().requires_grad_()
    ref_h = R.top_p_entropy_ref(ref_x, 0.8, 0.7, mask=mask)
    (ref_h * w).sum().backward()
    check("top_p_entropy", h, ref_h)
    check("top_p_entropy grad", ours_x.grad, ref_x.grad)


def case_top_p_mask():
    _, x, _, mask = inputs()
    check("top_p_mask", eo.top_p_mask(x, 0.8, 0.7, mask=mask), R.top_p_mask_ref(x, 0.8, 0.7, mask=mask),
          exact=True)


def case_min_p_logprobs():
    _, x, y, mask = inputs()
    check("min_p_logprobs", eo.min_p_logprobs(x, y, 0.05, 0.7, mask=mask),
          R.min_p_logprobs_ref(x, y, 0.05, 0.7, mask=mask))


def _entropy_rows():
    g, x, _, mask = inputs()
    return g, R.entropy_ref(x).float(), mask


def case_window_entropy():
    _, h, mask = _entropy_rows()
    check("window_entropy", eo.window_entropy(h, mask, window=3, offset=1),
          R.window_entropy_ref(h, mask, window=3, offset=1))


def case_masked_quantile():
    _, h, mask = _entropy_rows()
    check("masked_quantile", eo.masked_quantile(h, mask, 0.8), R.masked_quantile_ref(h, mask, 0.8))
    check("masked_quantile (all)", eo.masked_quantile(h, mask, 0.3, per_sequence=False),
          R.masked_quantile_ref(h, mask, 0.3, per_sequence=False))


def case_peak_entropy_mask():
    _, h, mask = _entropy_rows()
    check("peak_entropy_mask", eo.peak_entropy_mask(h, mask, 0.8), R.peak_entropy_mask_ref(h, mask, 0.8),
          exact=True)


def case_EntropyThreshold():
    _, h, mask = _entropy_rows()
    threshold = eo.EntropyThreshold(q=0.8, momentum=0.9)
    per_seq = R.masked_quantile_ref(h, mask, 0.8)
    # The first update takes the median (linear interpolation) of the per-sequence quantiles.
    check("EntropyThreshold", threshold(h, mask), torch.quantile(per_seq[~per_seq.isnan()], 0.5))


def case_selective_entropy_loss():
    _, x, _, mask = inputs()
    check("selective_entropy_loss", eo.selective_entropy_loss(x, mask, 0.5, coef=0.1),
          R.selective_entropy_loss_ref(x, mask, 0.5, coef=0.1))


def _policy_inputs():
    g, _, _, mask = inputs()
    logp = -torch.rand(mask.shape, generator=g) * 3
    old = logp + torch.randn(mask.shape, generator=g) * 0.3
    adv = torch.randn(mask.shape, generator=g) * 3
    return g, logp, old, adv, mask


def case_agg_loss():
    _, loss_mat, _, _, mask = _policy_inputs()
    for mode in ("token-mean", "seq-mean-token-mean"):
        check(f"agg_loss {mode}", eo.agg_loss(loss_mat, mask, mode), R.agg_loss_ref(loss_mat, mask, mode))


def case_token_covariance():
    _, logp, _, adv, mask = _policy_inputs()
    check("token_covariance", eo.token_covariance(logp, adv, mask), R.token_covariance_ref(logp, adv, mask))


def case_clip_cov_policy_loss():
    g, logp, old, adv, mask = _policy_inputs()
    keys = torch.randint(0, 2**62, mask.shape, generator=g)
    kw = dict(clip_cov_ratio=0.2, clip_cov_lb=-10.0, clip_cov_ub=10.0)
    ours = eo.clip_cov_policy_loss(logp, old, adv, mask, random_keys=keys, **kw)
    ref = R.clip_cov_policy_loss_ref(logp, old, adv, mask, keys, **kw)
    assert bool(ref[2].any()), "clip_cov_policy_loss: the smoke input selects no token"
    check("clip_cov_policy_loss", tuple(ours), ref)
    check("clip_cov_policy_loss.selected", ours.selected, ref[2], exact=True)
    # generator=: the keys are the SplitMix64 stream of one seed drawn from it (ops/random_keys.py).
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(3)))
    drawn = eo.clip_cov_policy_loss(logp, old, adv, mask, generator=torch.Generator().manual_seed(3), **kw)
    keys = R.random_keys_ref(seed, 0, mask.numel()).view(mask.shape)
    check("clip_cov_policy_loss(generator).selected", drawn.selected,
          R.clip_cov_policy_loss_ref(logp, old, adv, mask, keys, **kw)[2], exact=True)


def case_kl_cov_policy_loss():
    _, logp, old, adv, mask = _policy_inputs()
    ours = eo.kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=0.2)
    ref = R.kl_cov_policy_loss_ref(logp, old, adv, mask, kl_cov_ratio=0.2)
    check("kl_cov_policy_loss", tuple(ours), ref)
    check("kl_cov_policy_loss.selected", ours.selected, ref[2], exact=True)


def case_linear_logprobs_and_entropy():
    g, _, y, mask = inputs()
    hidden = torch.randn(*y.shape, 16, generator=g)
    weight = torch.randn(50, 16, generator=g) * 0.3
    check("linear_logprobs_and_entropy", eo.linear_logprobs_and_entropy(hidden, weight, y, mask=mask),
          R.linear_logprobs_and_entropy_ref(hidden, weight, y, mask=mask))


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


# ---- the checks ----

def check_layout():
    where = os.path.realpath(eo.__file__)
    print(f"entropy_ops {eo.__version__} from {where}")
    assert not where.startswith(SOURCE_TREE + os.sep), f"imported the source tree ({where}), not the wheel"
    assert where.startswith(os.path.realpath(sys.prefix) + os.sep), f"{where} is outside this venv"
    dist = importlib.metadata.distribution("entropy-ops")
    assert dist.version == eo.__version__, f"metadata version {dist.version} != {eo.__version__}"
    tops = sorted({str(f).split("/")[0] for f in dist.files})
    assert all(t == "entropy_ops" or t.endswith(".dist-info") for t in tops), (
        f"the wheel installs top-level {tops}: only entropy_ops (never a top-level triton_kernels)")
    importlib.import_module("entropy_ops.triton_kernels")
    from entropy_ops import _C, _C_cuda
    archs = expected_archs()
    assert _C_cuda.compiled_archs() == archs, f"_C_cuda archs {_C_cuda.compiled_archs()}, want {archs}"
    ok, reason = _C_cuda.available()
    print(f"_C isa {_C.get_isa()}; _C_cuda archs {_C_cuda.compiled_archs()}, available={ok} ({reason})")


def check_info():
    proc = subprocess.run([sys.executable, "-m", "entropy_ops", "info"], capture_output=True, text=True)
    print(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"python -m entropy_ops info exited {proc.returncode}"
    for module in ("_C", "_C_cuda"):
        assert any(line.startswith(module + " ") and " built (" in line for line in proc.stdout.splitlines()), (
            f"`info` does not report {module} as built")


def public_ops():
    return sorted(n for n in eo.__all__ if n not in NOT_OPS)


def run_cases(names, label):
    for name in names:
        CASES[name]()
        print(f"  ok  {name} ({label})")


def main_cpu():
    check_layout()
    check_info()
    ops = public_ops()
    missing = [n for n in ops if n not in CASES]
    assert not missing, f"smoke_wheel.py has no case for the public op(s) {missing}: add a case_<name>"
    assert eo.available_backends()["cpu"][0], f"cpu backend unavailable: {eo.available_backends()['cpu'][1]}"
    run_cases(ops, "CPU, auto backend")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--triton"], env=env)
    assert proc.returncode == 0, f"the Triton interpreter run failed ({proc.returncode})"
    print("smoke test passed")


def main_triton():
    from entropy_ops._backends import registered_backends

    assert os.environ.get("TRITON_INTERPRET") == "1", "--triton needs TRITON_INTERPRET=1 at start-up"
    # numpy's warnings from inside the interpreter (log(0), inf * 0 in masked lanes) are noise here.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton.runtime.interpreter")
    ok, reason = eo.available_backends()["triton"]
    assert ok, f"triton backend unavailable under the interpreter: {reason}"
    kernels = set(registered_backends()["triton"].kernels)
    ops = [n for n in public_ops() if n in kernels]
    assert {"entropy", "logprobs_and_entropy"} <= set(ops), f"Triton kernels only for {sorted(kernels)}"
    with eo.use_backend("triton"):
        run_cases(ops, "Triton interpreter")


def main_gpu():
    check_layout()
    from entropy_ops import _C_cuda

    assert torch.cuda.is_available(), "--gpu: torch sees no GPU"
    ok, reason = _C_cuda.available()
    assert ok, f"_C_cuda unavailable on this GPU: {reason}"
    g = torch.Generator(device="cuda").manual_seed(0)
    n, vocab = 64, 151936
    x = (torch.randn(n, vocab, device="cuda", generator=g) * 3).bfloat16()
    y = torch.randint(0, vocab, (n,), device="cuda", generator=g)
    w = torch.randn(2, n, device="cuda", generator=g)
    ref_x = x.double().requires_grad_()
    ref_logp, ref_h = R.logprobs_and_entropy_ref(ref_x, y, 0.7)
    (ref_logp * w[0] + ref_h * w[1]).sum().backward()
    for backend in ("cuda", "triton"):
        ours_x = x.clone().requires_grad_()
        with eo.use_backend(backend):
            logp, h = eo.logprobs_and_entropy(ours_x, y, 0.7)
            (logp * w[0] + h * w[1]).sum().backward()
        check(f"logprobs_and_entropy ({backend}, GPU)", (logp, h), (ref_logp, ref_h))
        # The gradient is written in bf16: within a bf16 rounding of the float64 one.
        check(f"logprobs_and_entropy grad ({backend}, GPU)", ours_x.grad, ref_x.grad, tol=1e-2)
        print(f"  ok  logprobs_and_entropy fwd+bwd ({backend}, {torch.cuda.get_device_name()})")
    print("GPU smoke test passed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--triton", action="store_true", help="the Triton-interpreter child run")
    mode.add_argument("--gpu", action="store_true", help="on a GPU machine: each GPU backend")
    args = parser.parse_args()
    sys.exit(main_triton() if args.triton else main_gpu() if args.gpu else main_cpu())
