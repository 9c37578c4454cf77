"""GPU tests that run in subprocesses where a CUDA context may break: ENTROPY_OPS_CHECK's
device-side asserts, what ``auto`` resolves to on CUDA tensors, tensors on a second device."""
import importlib.util
import os
import subprocess

import entropy_ops as eo
import pytest
import torch

from conftest import (
    PYTHON,
    REPO_ROOT,
    eager_entropy,
    eager_grad,
    eager_logprobs_and_entropy,
    reference_grad,
    subprocess_env,
)
from entropy_ops import _backends
from entropy_ops.reference import entropy_ref, logprobs_and_entropy_ref
from gpu_common import (  # noqa: F401, F811 (pytestmark applies the gpu marks; gpu_backend is a fixture)
    DEVICE,
    GPU_BACKENDS,
    GPU_DTYPES,
    OPS,
    assert_same_bits,
    check,
    gpu_backend,
    needs_real_gpu,
    pytestmark as _gpu_marks,
)

pytestmark = [*_gpu_marks, needs_real_gpu]


# ---- ENTROPY_OPS_CHECK, dispatch, devices (subprocesses where a CUDA context may break) -----------

CHECK_SCRIPT = r"""
import os, sys, torch
import entropy_ops as eo
backend, case, out_path = sys.argv[1:4]
assert os.environ.get("ENTROPY_OPS_CHECK") == "1"
gen = torch.Generator().manual_seed(7)
x = (torch.randn(6, 1000, generator=gen) * 2).cuda()
y = torch.randint(1000, (6,), generator=gen)
y[0] = -100
y = y.cuda()
t = (torch.rand(6, generator=gen) + 0.5).cuda()
with eo.use_backend(backend):
    eo.logprobs_and_entropy(x, y, t)
    torch.cuda.synchronize()
    print("VALID_OK", flush=True)
    if case == "label":
        bad_y = y.clone()
        bad_y[2], bad_y[4] = 1007, -3
        del os.environ["ENTROPY_OPS_CHECK"]
        logp, h = eo.logprobs_and_entropy(x, bad_y, t)
        torch.cuda.synchronize()
        torch.save({"x": x.cpu(), "y": bad_y.cpu(), "t": t.cpu(), "logp": logp.cpu(), "h": h.cpu()}, out_path)
        print("UNCHECKED_OK", flush=True)
        os.environ["ENTROPY_OPS_CHECK"] = "1"
        args = (x, bad_y, t)
    else:
        bad_t = t.clone()
        bad_t[3] = 0.0
        args = (x, y, bad_t)
    try:
        eo.logprobs_and_entropy(*args)
        torch.cuda.synchronize()
    except BaseException as e:
        print(f"RAISED {type(e).__name__} runtime_error={isinstance(e, RuntimeError)}: {e}", flush=True)
        os._exit(0)
    print("NO_RAISE", flush=True)
    os._exit(3)
"""


@pytest.mark.parametrize("case", ["label", "temperature"])
def test_entropy_ops_check_in_subprocess(gpu_backend, case, tmp_path):
    """ENTROPY_OPS_CHECK=1: an out-of-range label (or a per-row temperature of 0) on CUDA tensors
    raises at the next sync (device-side assert: in a subprocess, it poisons the CUDA context).
    Unchecked, the out-of-range labels give NaN logp in their rows only."""
    out_path = tmp_path / "unchecked.pt"
    proc = subprocess.run([PYTHON, "-c", CHECK_SCRIPT, gpu_backend, case, str(out_path)], cwd=REPO_ROOT,
                          env=subprocess_env(ENTROPY_OPS_CHECK="1", ENTROPY_OPS_BACKEND=None),
                          capture_output=True, text=True, timeout=300)
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "VALID_OK" in proc.stdout, f"valid inputs failed under ENTROPY_OPS_CHECK=1\n{report}"
    assert "RAISED" in proc.stdout and "runtime_error=True" in proc.stdout, report
    assert proc.returncode == 0, report
    if case == "label":
        assert "UNCHECKED_OK" in proc.stdout, report
        r = torch.load(out_path)
        ref_logp, ref_h = logprobs_and_entropy_ref(r["x"], r["y"], r["t"])
        eager_logp, eager_h = eager_logprobs_and_entropy(r["x"], r["y"], r["t"])
        assert torch.equal(r["logp"].isnan(), torch.tensor([False, False, True, False, True, False])), r["logp"]
        check(r["logp"], ref_logp, eager_logp, what="logp with out-of-range labels")
        check(r["h"], ref_h, eager_h, what="entropy with out-of-range labels")


def test_auto_resolves_to_a_gpu_backend(monkeypatch):
    usable = {n: eo.available_backends()[n][0] and all(op in _backends.registered_backends()[n].kernels for op in OPS)
              for n in GPU_BACKENDS}
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("unset TRITON_INTERPRET")
    if importlib.util.find_spec("triton") is not None:
        assert usable["triton"], f"Triton is installed but the triton backend is not usable: {eo.available_backends()['triton']}"
        expected = "triton"
    elif usable["cuda"]:
        expected = "cuda"
    else:
        pytest.skip(f"no GPU backend usable: {eo.available_backends()}")
    device = torch.device(DEVICE, torch.cuda.current_device())
    with eo.use_backend("auto"):
        for op in OPS:
            for dtype in GPU_DTYPES:
                assert _backends.resolve(op, device, dtype) == expected, (op, dtype)
            assert _backends.resolve(op, device, torch.float64) == "torch"
        calls = []
        kernel = _backends.get_kernel(expected, "entropy")
        spy = kernel._replace(fwd=lambda *a: calls.append("fwd") or kernel.fwd(*a))
        monkeypatch.setitem(_backends.registered_backends()[expected].kernels, "entropy", spy)
        x = torch.randn(3, 500, device=device).bfloat16()
        check(eo.entropy(x), entropy_ref(x), eager_entropy(x), what="auto entropy")
    assert calls == ["fwd"], f"auto did not run the {expected} kernel"


MULTI_GPU_SCRIPT = r"""
import sys, torch
import entropy_ops as eo
backend, out_path = sys.argv[1:3]
torch.cuda.set_device(0)
gen = torch.Generator().manual_seed(5)
x = (torch.randn(6, 20000, generator=gen) * 2).bfloat16()
y = torch.randint(20000, (6,), generator=gen)
y[1] = -100
t = torch.rand(6, generator=gen) + 0.5
mask = torch.tensor([True, True, False, True, True, True])
w = (torch.randn(6, generator=gen), torch.randn(6, generator=gen))
out = {"x": x, "y": y, "t": t, "mask": mask, "w": w}
with eo.use_backend(backend):
    for dev in ("cuda:1", "cuda:0"):
        xd = x.to(dev).requires_grad_(True)
        logp, h = eo.logprobs_and_entropy(xd, y.to(dev), t.to(dev), mask=mask.to(dev))
        h1 = eo.entropy(xd.detach(), 0.8)
        torch.autograd.backward((logp, h), (w[0].to(dev), w[1].to(dev)))
        torch.cuda.synchronize(dev)
        out[dev] = {"current": torch.cuda.current_device(), "devices": [str(v.device) for v in (logp, h, h1, xd.grad)],
                    "logp": logp.detach().cpu(), "h": h.detach().cpu(), "h1": h1.cpu(), "grad": xd.grad.cpu()}
torch.save(out, out_path)
print("OK", flush=True)
"""


def test_tensors_on_second_device(gpu_backend, tmp_path):
    """Tensors on cuda:1 while the current device is cuda:0 (in a subprocess: a launch on the
    wrong device can leave an illegal-address error in the context)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    out_path = tmp_path / "multi.pt"
    proc = subprocess.run([PYTHON, "-c", MULTI_GPU_SCRIPT, gpu_backend, str(out_path)], cwd=REPO_ROOT,
                          env=subprocess_env(ENTROPY_OPS_CHECK=None, ENTROPY_OPS_BACKEND=None),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    r = torch.load(out_path)
    x, y, t, mask, w = r["x"], r["y"], r["t"], r["mask"], r["w"]
    ref_logp, ref_h = logprobs_and_entropy_ref(x, y, t, mask=mask)
    eager_logp, eager_h = eager_logprobs_and_entropy(x, y, t, mask=mask)
    ref_grad = reference_grad(logprobs_and_entropy_ref, x, y, t, weights=w, mask=mask)
    eager_g = eager_grad(eager_logprobs_and_entropy, x, y, t, weights=w, mask=mask)
    for dev in ("cuda:1", "cuda:0"):
        res = r[dev]
        assert res["current"] == 0, f"{dev}: the op changed the current device to {res['current']}"
        assert res["devices"] == [dev] * 4, f"outputs on {res['devices']}, expected {dev}"
        check(res["logp"], ref_logp, eager_logp, what=f"{dev} logp")
        check(res["h"], ref_h, eager_h, what=f"{dev} entropy")
        check(res["h1"], entropy_ref(x, 0.8), eager_entropy(x, 0.8), what=f"{dev} entropy (T = 0.8)")
        check(res["grad"], ref_grad, eager_g, what=f"{dev} grad")
    if torch.cuda.get_device_capability(0) == torch.cuda.get_device_capability(1):
        for key in ("logp", "h", "h1", "grad"):
            assert_same_bits(r["cuda:1"][key], r["cuda:0"][key], f"{key}: cuda:1 vs cuda:0 (same arch)")
