"""``torch.compile(fullgraph=True)`` traces through both ops (fake kernels, autograd), forward and
backward equal to eager, with a 0-d tensor temperature and with a Python float one."""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import entropy_ops as eo
from conftest import assert_within_eager_bound, eager_logprobs_and_entropy
from entropy_ops.reference import logprobs_and_entropy_ref


def _loss_and_outputs(x, y, temperature, mask):
    h = eo.entropy(x, temperature, mask=mask)
    logp, h2 = eo.logprobs_and_entropy(x, y, temperature, mask=mask)
    return (0.3 * h + logp - 0.5 * h2).sum(), h, logp


@pytest.mark.parametrize("temperature", ["tensor_0d", "float"])
def test_compile_fullgraph_matches_eager(backend, temperature):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(101)
    base = torch.randn(2, 3, 40, generator=gen)
    y = torch.randint(40, (2, 3), generator=gen)
    y[1, 1] = -100
    mask = torch.tensor([[True, True, False], [True, True, True]])
    t = torch.tensor(0.8) if temperature == "tensor_0d" else 0.8

    def run(fn):
        x = base.clone().requires_grad_(True)
        loss, h, logp = fn(x, y, t, mask)
        loss.backward()
        return h.detach(), logp.detach(), x.grad

    compiled = torch.compile(_loss_and_outputs, fullgraph=True)
    h_c, logp_c, g_c = run(compiled)
    h_e, logp_e, g_e = run(_loss_and_outputs)
    assert torch.equal(h_c, h_e) and torch.equal(logp_c, logp_e)
    torch.testing.assert_close(g_c, g_e, rtol=1e-6, atol=1e-7)
    ref_logp, ref_h = logprobs_and_entropy_ref(base, y, 0.8, mask=mask)
    eager_logp, eager_h = eager_logprobs_and_entropy(base, y, 0.8, mask=mask)
    assert_within_eager_bound(h_c, ref_h, eager_h, what="compiled entropy")
    assert_within_eager_bound(logp_c, ref_logp, eager_logp, what="compiled logp")


def test_compile_tensor_temperature_does_not_recompile(backend):
    """A new 0-d temperature value reuses the compiled graph (a Python float would not)."""
    torch._dynamo.reset()
    x = torch.randn(3, 24)
    y = torch.randint(24, (3,))
    counter = CompileCounterWithBackend("aot_eager")

    @torch.compile(fullgraph=True, backend=counter)
    def f(x, y, t):
        logp, h = eo.logprobs_and_entropy(x, y, t)
        return logp + h

    for value in (0.7, 1.9):
        t = torch.tensor(value)
        ref_logp, ref_h = logprobs_and_entropy_ref(x, y, t)
        eager_logp, eager_h = eager_logprobs_and_entropy(x, y, t)
        assert_within_eager_bound(f(x, y, t), ref_logp + ref_h, eager_logp + eager_h, what="compiled logp + H")
    assert counter.frame_count == 1


def test_compile_inplace_backward_matches_eager(backend):
    torch._dynamo.reset()
    base = torch.randn(3, 20)
    y = torch.randint(20, (3,))

    def loss(x):
        w = x * 1.0
        logp, h = eo.logprobs_and_entropy(w, y, torch.tensor(0.9), inplace_backward=True)
        return (logp - 0.5 * h).sum()

    grads = []
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        x = base.clone().requires_grad_(True)
        fn(x).backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])
