"""GPU tests: no host sync, CUDA graphs, torch.compile, opcheck, ENTROPY_OPS_CHECK, dispatch,
second device (subprocesses where a CUDA context may break)."""
import importlib.util
import os
import subprocess

import entropy_ops as eo
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

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
    TEMPERATURES,
    assert_same_bits,
    check,
    gpu_backend,
    pytestmark,
    temperature_of,
)

# ---- no host sync, CUDA graphs, torch.compile -----------------------------------------------------

def _sync_free_inputs(vocab, temperature):
    gen = torch.Generator().manual_seed(81)
    x = (torch.randn(6, vocab, generator=gen) * 2).bfloat16().to(DEVICE)
    y = torch.randint(vocab, (6,), generator=gen)
    y[1] = -100
    mask = torch.tensor([True, True, False, True, True, True])
    a, b, c = (torch.randn(6, generator=gen).to(DEVICE) for _ in range(3))
    return x, y.to(DEVICE), temperature_of(temperature, (6,)), mask.to(DEVICE), (a, b, c)


@pytest.mark.parametrize("checked", [False, True], ids=["unchecked", "ENTROPY_OPS_CHECK"])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("vocab", [1023, 151936])
def test_no_host_sync(gpu_backend, monkeypatch, vocab, temperature, checked):
    """Forward + backward (and inplace backward) under set_sync_debug_mode("error"), all tensors
    already on the GPU; with ENTROPY_OPS_CHECK=1 the value checks must stay device-side too."""
    if checked:
        monkeypatch.setenv("ENTROPY_OPS_CHECK", "1")
    x, y, t, mask, (a, b, c) = _sync_free_inputs(vocab, temperature)

    def run():
        xs = x.detach().clone().requires_grad_(True)
        logp, h = eo.logprobs_and_entropy(xs, y, t, mask=mask)
        h1 = eo.entropy(xs, t, mask=mask)
        torch.autograd.backward((logp, h, h1), (a, b, c))
        xi = x.detach().clone().requires_grad_(True)
        logp2, h2 = eo.logprobs_and_entropy(xi * 1.0, y, t, mask=mask, inplace_backward=True)
        torch.autograd.backward((logp2, h2), (a, b))
        return logp.detach(), h.detach(), h1, xs.grad, xi.grad

    expected = run()  # compiles the kernels outside the debug mode
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name, g_, e_ in zip(("logp", "entropy", "entropy op", "grad", "inplace grad"), got, expected):
        assert_same_bits(g_, e_, f"{name}: run under sync debug mode vs before")


def _warm_up(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)


def _graph_data(vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    data = {
        "x": (torch.randn(8, vocab, generator=gen) * (1 + seed)).bfloat16(),
        "y": torch.randint(vocab, (8,), generator=gen),
        "mask": torch.rand(8, generator=gen) < 0.8,
        "a": torch.randn(8, generator=gen),
        "b": torch.randn(8, generator=gen),
    }
    data["y"][seed % 8] = -100
    return {k: v.to(DEVICE) for k, v in data.items()}, 0.5 + float(torch.rand((), generator=gen))


@pytest.mark.parametrize("vocab", [1023, 151936])
def test_cuda_graph_forward(gpu_backend, vocab):
    """Capture both ops on static inputs; replay after changing the inputs (and the 0-d
    temperature) in place; the outputs equal an eager call bit for bit."""
    data, t0 = _graph_data(vocab, 0)
    static = {k: v.clone() for k, v in data.items()}
    static_t = torch.tensor(t0, device=DEVICE)

    def step():
        logp, h = eo.logprobs_and_entropy(static["x"], static["y"], static_t, mask=static["mask"])
        return logp, h, eo.entropy(static["x"], 0.7, mask=static["mask"])

    _warm_up(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for seed in (1, 2):
        data, t = _graph_data(vocab, seed)
        for k in static:
            static[k].copy_(data[k])
        static_t.fill_(t)
        graph.replay()
        expected = step()
        for name, got, want in zip(("logp", "entropy", "entropy (float T)"), outs, expected):
            assert_same_bits(got, want, f"replay {seed}: {name}")
        ref_logp, ref_h = logprobs_and_entropy_ref(data["x"], data["y"], static_t, mask=data["mask"])
        check(outs[1], ref_h, eager_entropy(data["x"], static_t, data["mask"]), what="replayed entropy")


def _fwd_bwd(x, y, t, mask, a, b, inplace):
    src = x * 1.0 if inplace else x
    logp, h = eo.logprobs_and_entropy(src, y, t, mask=mask, inplace_backward=inplace)
    h1 = eo.entropy(x, t, mask=mask)
    (a * logp + b * h + 0.25 * h1).sum().backward()
    return logp.detach(), h.detach(), h1.detach()


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace_backward"])
@pytest.mark.parametrize("vocab", [1023, 151936])
def test_cuda_graph_forward_backward(gpu_backend, vocab, inplace):
    """Whole-step capture (forward, backward into x.grad) replayed on new static inputs."""
    data, t0 = _graph_data(vocab, 0)
    static = {k: v.clone() for k, v in data.items()}
    static_t = torch.tensor(t0, device=DEVICE)
    x = static["x"].requires_grad_(True)

    def step():
        x.grad = None
        return _fwd_bwd(x, static["y"], static_t, static["mask"], static["a"], static["b"], inplace)

    _warm_up(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    static_grad = x.grad
    for seed in (1, 2):
        data, t = _graph_data(vocab, seed)
        with torch.no_grad():
            x.copy_(data["x"])
        for k in ("y", "mask", "a", "b"):
            static[k].copy_(data[k])
        static_t.fill_(t)
        graph.replay()
        xe = data["x"].clone().requires_grad_(True)
        te = torch.tensor(t, device=DEVICE)
        expected = _fwd_bwd(xe, data["y"], te, data["mask"], data["a"], data["b"], inplace)
        for name, got, want in zip(("logp", "entropy", "entropy op"), outs, expected):
            assert_same_bits(got, want, f"replay {seed}: {name}")
        assert_same_bits(static_grad, xe.grad, f"replay {seed}: grad")
        x0, y0, m0, ab = data["x"], data["y"], data["mask"], (data["a"], data["b"])
        quarter = (torch.full((8,), 0.25, device=DEVICE),)
        ref = (reference_grad(logprobs_and_entropy_ref, x0, y0, te, weights=ab, mask=m0)
               + reference_grad(entropy_ref, x0, te, weights=quarter, mask=m0))
        eager = (eager_grad(eager_logprobs_and_entropy, x0, y0, te, weights=ab, mask=m0).double()
                 + eager_grad(eager_entropy, x0, te, weights=quarter, mask=m0).double())
        check(static_grad, ref, eager, what=f"replay {seed}: grad vs reference")


@pytest.mark.parametrize("vocab", [1023, 151936])
def test_make_graphed_callables(gpu_backend, vocab):
    data, t0 = _graph_data(vocab, 0)
    y, mask, t = data["y"], data["mask"], torch.tensor(t0, device=DEVICE)

    def fn(x):
        return eo.logprobs_and_entropy(x, y, t, mask=mask)

    graphed = torch.cuda.make_graphed_callables(fn, (data["x"].clone().requires_grad_(True),))
    for seed in (1, 2):
        new, _ = _graph_data(vocab, seed)
        results = []
        for f in (graphed, fn):
            x = new["x"].clone().requires_grad_(True)
            logp, h = f(x)
            (new["a"] * logp + new["b"] * h).sum().backward()
            results.append((logp.detach().clone(), h.detach().clone(), x.grad.clone()))
        for name, got, want in zip(("logp", "entropy", "grad"), *results):
            assert_same_bits(got, want, f"graphed callable, input {seed}: {name}")


def _compiled_loss(x, y, temperature, mask):
    h = eo.entropy(x, temperature, mask=mask)
    logp, h2 = eo.logprobs_and_entropy(x, y, temperature, mask=mask)
    return (0.3 * h + logp - 0.5 * h2).sum(), h, logp


@pytest.mark.parametrize("temperature", ["tensor_0d", "float"])
@pytest.mark.parametrize("vocab", [1023, 20000])
def test_compile_fullgraph_matches_eager(gpu_backend, vocab, temperature):
    """torch.compile(fullgraph=True) (inductor) on CUDA bf16 logits: forward bits equal to eager on
    the same backend, gradient equal up to the bf16 rounding of the sum of the two ops' gradients."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(101)
    base = (torch.randn(2, 3, vocab, generator=gen) * 2).bfloat16().to(DEVICE)
    y = torch.randint(vocab, (2, 3), generator=gen)
    y[1, 1] = -100
    y = y.to(DEVICE)
    mask = torch.tensor([[True, True, False], [True, True, True]], device=DEVICE)
    t = torch.tensor(0.8, device=DEVICE) if temperature == "tensor_0d" else 0.8

    def run(fn):
        x = base.clone().requires_grad_(True)
        loss, h, logp = fn(x, y, t, mask)
        loss.backward()
        return h.detach(), logp.detach(), x.grad

    h_c, logp_c, g_c = run(torch.compile(_compiled_loss, fullgraph=True))
    h_e, logp_e, g_e = run(_compiled_loss)
    assert_same_bits(h_c, h_e, "compiled entropy vs eager")
    assert_same_bits(logp_c, logp_e, "compiled logp vs eager")
    assert g_c.dtype == torch.bfloat16
    torch.testing.assert_close(g_c, g_e, rtol=1.6e-2, atol=1e-6)
    ref_logp, ref_h = logprobs_and_entropy_ref(base, y, 0.8, mask=mask)
    eager_logp, eager_h = eager_logprobs_and_entropy(base, y, 0.8, mask=mask)
    check(h_c, ref_h, eager_h, what="compiled entropy")
    check(logp_c, ref_logp, eager_logp, what="compiled logp")


def test_compile_tensor_temperature_does_not_recompile(gpu_backend):
    torch._dynamo.reset()
    x = torch.randn(3, 2000, device=DEVICE)
    y = torch.randint(2000, (3,), device=DEVICE)
    counter = CompileCounterWithBackend("aot_eager")

    @torch.compile(fullgraph=True, backend=counter)
    def f(x, y, t):
        logp, h = eo.logprobs_and_entropy(x, y, t)
        return logp + h

    for value in (0.7, 1.9):
        t = torch.tensor(value, device=DEVICE)
        ref_logp, ref_h = logprobs_and_entropy_ref(x, y, t)
        eager_logp, eager_h = eager_logprobs_and_entropy(x, y, t)
        check(f(x, y, t), ref_logp + ref_h, eager_logp + eager_h, what="compiled logp + H")
    assert counter.frame_count == 1


def test_opcheck_on_cuda(gpu_backend):
    """torch.library.opcheck of the four ops with CUDA tensors and this backend's name."""
    ops = torch.ops.entropy_ops
    gen = torch.Generator().manual_seed(91)
    x = torch.randn(2, 3, 1000, generator=gen).bfloat16().to(DEVICE).requires_grad_(True)
    y = torch.randint(1000, (2, 3), generator=gen).to(DEVICE)
    t = (torch.rand(2, 3, generator=gen) + 0.5).to(DEVICE)
    mask = torch.tensor([[True, False, True], [True, True, True]], device=DEVICE)
    torch.library.opcheck(ops.entropy.default, (x, t, 1.0, mask, False, gpu_backend))
    torch.library.opcheck(ops.logprobs_and_entropy.default, (x, y.int(), None, 0.7, -100, mask, False, gpu_backend))
    xd = x.detach()
    lse = torch.logsumexp(xd.float() / t.unsqueeze(-1), -1)
    h, g_h, g_l = (torch.randn(2, 3, generator=gen).to(DEVICE) for _ in range(3))
    args = (xd, y, t, 1.0, -100, mask, lse, h, g_h, g_l, gpu_backend)
    torch.library.opcheck(ops.entropy_bwd.default, args)
    torch.library.opcheck(ops.entropy_bwd_.default, (xd.clone(),) + args[1:])


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
