"""GPU tests: no host sync, CUDA graphs, torch.compile, opcheck (the subprocess ones, ENTROPY_OPS_CHECK,
dispatch and a second device, are in test_gpu_dispatch.py)."""
import entropy_ops as eo
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from conftest import eager_entropy, eager_grad, eager_logprobs_and_entropy, reference_grad
from entropy_ops.reference import entropy_ref, logprobs_and_entropy_ref
from gpu_common import (  # noqa: F401, F811 (pytestmark applies the gpu marks; gpu_backend is a fixture)
    DEVICE,
    TEMPERATURES,
    assert_same_bits,
    check,
    gpu_backend,
    needs_real_gpu,
    pytestmark,
    sync_debug_error,
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
    with sync_debug_error():
        got = run()
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


@needs_real_gpu
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


@needs_real_gpu
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


@needs_real_gpu
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
    row_max = xd.float().amax(-1)
    log_norm = torch.logsumexp((xd.float() - row_max.unsqueeze(-1)) / t.unsqueeze(-1), -1)
    h, g_h, g_l = (torch.randn(2, 3, generator=gen).to(DEVICE) for _ in range(3))
    args = (xd, y, t, 1.0, -100, mask, row_max, log_norm, h, g_h, g_l, gpu_backend)
    torch.library.opcheck(ops.entropy_bwd.default, args)
    torch.library.opcheck(ops.entropy_bwd_.default, (xd.clone(),) + args[1:])


@needs_real_gpu
def test_cuda_graph_of_the_linear_head(gpu_backend):
    """The fused LM head captured whole (forward, backward into hidden, weight and bias grads) and
    replayed on new hidden states: the same bits as eager on them (SPEC §4: CUDA-graph capturable)."""
    gen = torch.Generator().manual_seed(5)
    n, d, vocab = 64, 128, 4099
    hidden = (torch.randn(n, d, generator=gen) * 0.5).to(DEVICE).requires_grad_(True)
    weight = (torch.randn(vocab, d, generator=gen) * 0.1).to(DEVICE).bfloat16().requires_grad_(True)
    bias = torch.randn(vocab, generator=gen).to(DEVICE).bfloat16().requires_grad_(True)
    labels = torch.randint(0, vocab, (n,), generator=gen).to(DEVICE)

    def step(h, w, b):
        for t in (h, w, b):
            t.grad = None
        logp, ent = eo.linear_logprobs_and_entropy(h.bfloat16(), w, labels, b, temperature=0.7, softcap=30.0)
        (logp.sum() - 0.1 * ent.sum()).backward()
        return logp.detach(), ent.detach(), h.grad, w.grad, b.grad

    _warm_up(lambda: step(hidden, weight, bias))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step(hidden, weight, bias)
    for seed in (1, 2):
        new = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).to(DEVICE) * 0.5
        with torch.no_grad():
            hidden.copy_(new)
        graph.replay()
        leaves = [new.clone().requires_grad_(True), weight.detach().clone().requires_grad_(True),
                  bias.detach().clone().requires_grad_(True)]
        for name, got, want in zip(("logp", "entropy", "grad hidden", "grad weight", "grad bias"), outs,
                                   step(*leaves)):
            assert_same_bits(got, want, f"replay {seed}: {name}")
