"""linear_logprobs_and_entropy on the CPU backends: bad input, opcheck, torch.compile (also with
transposed views of the head or of hidden), gradients only for the inputs that need them (a frozen
head skips its product), rows without a gradient that hold NaN, peak memory, the bench rows."""
import pytest
import torch

import entropy_ops as eo
from entropy_ops.ops import linear as linear_ops

from conftest import skip_unless_available
from test_linear import make_inputs


BAD = [
    (lambda h, w, b, y: dict(hidden=h, weight=w.t().contiguous(), labels=y), ValueError, "weight"),
    (lambda h, w, b, y: dict(hidden=h, weight=w[None], labels=y), ValueError, "weight"),
    (lambda h, w, b, y: dict(hidden=h, weight=w.double(), labels=y), TypeError, "weight"),
    (lambda h, w, b, y: dict(hidden=h.int(), weight=w, labels=y), TypeError, "hidden"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, bias=b[:-1]), ValueError, "bias"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, bias=b.double()), TypeError, "bias"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y[:-1]), ValueError, "labels"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y[:, None, None]), ValueError, "labels"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y.float()), TypeError, "labels"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, softcap=0.0), ValueError, "softcap"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, softcap=-1.0), ValueError, "softcap"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, logit_scale=0.0), ValueError, "logit_scale"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, chunk_size=0), ValueError, "chunk_size"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, chunk_size=2.0), TypeError, "chunk_size"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, temperature=0.0), ValueError, "temperature"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, temperature=torch.ones(3)), ValueError, "temperature"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, mask=torch.ones(h.shape[0])), TypeError, "mask"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, mask=torch.ones(2, dtype=torch.bool)), ValueError, "mask"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, ignore_index=1.5), TypeError, "ignore_index"),
    (lambda h, w, b, y: dict(hidden=h, weight=w[:0], labels=y), ValueError, "weight"),
    (lambda h, w, b, y: dict(hidden=h.numpy(), weight=w, labels=y), TypeError, "hidden"),
    # outside float32's normal range: inf or 0 in the kernels, and NaN rows or gradients
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, softcap=1e39), ValueError, "softcap"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, softcap=1e-300), ValueError, "softcap"),
    (lambda h, w, b, y: dict(hidden=h, weight=w, labels=y, logit_scale=1e39), ValueError, "logit_scale"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_raises_named_error(case):
    make, exc, name = BAD[case]
    h, w, b, y = make_inputs(n=4, vocab=11)
    with pytest.raises(exc, match=name):
        eo.linear_logprobs_and_entropy(**make(h, w, b, y))


def test_opcheck(backend):
    h, w, b, y = make_inputs(n=9, d=6, vocab=40, k=2)
    h, w, b = (x.requires_grad_(True) for x in (h, w, b))
    t = torch.rand(9) + 0.5
    mask = torch.ones(9, dtype=torch.bool)
    mask[1] = False
    args = (h, w, y, b, t, 1.0, -100, mask, 0.8, 3.0, 4, backend)
    torch.library.opcheck(linear_ops._linear_op, args)
    logp, ent, state = linear_ops._linear_op(*[x.detach() if isinstance(x, torch.Tensor) else x for x in args])
    for need_hidden, need_weight in ((True, True), (False, True), (True, False)):
        bwd_args = (h.detach(), w.detach(), y, b.detach(), t, 1.0, -100, mask, 0.8, 3.0, 4, state, ent,
                    torch.randn(9, 2), torch.randn(9), need_hidden, need_weight, backend)
        torch.library.opcheck(linear_ops._linear_bwd_op, bwd_args)
    # Transposed (column-major) hidden and head: the fake's strides are the real ones (contiguous).
    bwd_args = (h.detach().t().contiguous().t(), w.detach().t().contiguous().t(), y, b.detach(), t, 1.0, -100,
                mask, 0.8, 3.0, 4, state, ent, torch.randn(9, 2), torch.randn(9), True, True, backend)
    torch.library.opcheck(linear_ops._linear_bwd_op, bwd_args)


def test_compile_fullgraph(backend):
    h, w, b, y = make_inputs(n=16, d=8, vocab=64)
    t = torch.tensor(0.9)

    def step(hh, ww, bb):
        logp, ent = eo.linear_logprobs_and_entropy(hh, ww, y, bb, temperature=t, softcap=4.0)
        return logp.sum() + 0.1 * ent.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    leaves = [x.clone().requires_grad_(True) for x in (h, w, b)]
    loss = compiled(*leaves)
    loss.backward()
    eager_leaves = [x.clone().requires_grad_(True) for x in (h, w, b)]
    eager_loss = step(*eager_leaves)
    eager_loss.backward()
    torch.testing.assert_close(loss, eager_loss, rtol=0, atol=0)
    for a, c in zip(leaves, eager_leaves):
        torch.testing.assert_close(a.grad, c.grad, rtol=0, atol=0)


def test_compile_with_a_transposed_head_or_hidden(backend):
    """A head stored ``[D, V]`` and passed as ``W.t()`` (or hidden as a transposed view) compiles
    with fullgraph, forward and backward, and equals eager."""
    h, w, b, y = make_inputs(n=16, d=8, vocab=64)

    def step(hh, ww):
        logp, ent = eo.linear_logprobs_and_entropy(hh.t(), ww.t(), y, b, softcap=4.0)
        return logp.sum() + 0.1 * ent.sum()

    results = []
    torch._dynamo.reset()
    for fn in (step, torch.compile(step, fullgraph=True)):  # inductor: it asserts the fake's strides
        leaves = [h.t().contiguous().requires_grad_(True), w.t().contiguous().requires_grad_(True)]
        loss = fn(*leaves)
        loss.backward()
        results.append((loss, *(x.grad for x in leaves)))
    for a, c in zip(*results):  # inductor may sum the loss in another order
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_only_the_gradients_asked_for_are_computed(backend, frozen, monkeypatch):
    """A frozen LM head (LoRA) skips grad_weight's product and its [V, D] accumulator; frozen hidden
    states skip grad_hidden's. The gradients that are asked for keep their bits."""
    from entropy_ops.backends import torch_linear

    h, w, b, y = make_inputs(n=20, d=8, vocab=64)
    calls = {"add_mm": 0, "_mm_acc": 0}
    for name in ("add_mm", "_mm_acc"):
        real = getattr(torch_linear, name)
        monkeypatch.setattr(torch_linear, name, lambda *a, _n=name, _f=real: (calls.__setitem__(_n, calls[_n] + 1), _f(*a))[1])

    def backward(need_hidden, need_weight):
        hh, ww = h.clone().requires_grad_(need_hidden), w.clone().requires_grad_(need_weight)
        logp, _ = eo.linear_logprobs_and_entropy(hh, ww, y, b)
        calls.update(add_mm=0, _mm_acc=0)
        logp.sum().backward()
        return (hh.grad, ww.grad), dict(calls)

    (gh, gw), both = backward(True, True)
    (oh, ow), counts = backward(frozen != "hidden", frozen != "weight")
    if frozen == "weight":
        assert ow is None and torch.equal(oh, gh)
        assert counts == dict(both, add_mm=0)
    else:
        assert oh is None and torch.equal(ow, gw)
        assert counts["add_mm"] == both["add_mm"] and counts["_mm_acc"] < both["_mm_acc"]


def test_rows_without_a_gradient_do_not_poison_the_head(backend):
    """SPEC §2: an ignored row, or one whose upstream gradient is 0, contributes exactly 0; a NaN
    hidden state there (a fully masked attention row) must not turn grad_weight / grad_bias NaN."""
    h, w, b, y = make_inputs(n=12, d=8, vocab=40)
    clean = []
    for poison in (False, True):
        hh = h.clone()
        if poison:
            hh[2] = float("nan")  # ignored label, entropy not used
            hh[5] = float("inf")  # a row the upstream gradient weights 0
        hh.requires_grad_(True)
        ww, bb = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        yy = y.clone()
        yy[2] = -100
        logp, ent = eo.linear_logprobs_and_entropy(hh, ww, yy, bb)
        weights = torch.ones(12)
        weights[5] = 0
        (logp * weights).sum().backward()
        clean.append((ww.grad, bb.grad, hh.grad[[0, 1, 3, 4, 6]]))
    for a, c in zip(*clean):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def peak_extra_bytes(fn):
    """Peak of the bytes allocated through torch's CPU allocator while ``fn()`` runs (from the
    profiler's allocation events, in time order), minus the bytes of the tensors ``fn`` returns."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        kept = fn()
    sizes = []

    def walk(node):
        if type(node.extra_fields).__name__ == "_ExtraFields_Allocation":
            sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    current = peak = 0
    for _, size in sorted(sizes):
        current += size
        peak = max(peak, current)
    assert len(sizes) > 10, "the profiler recorded no allocations: the measurement is broken"
    return peak - sum(t.numel() * t.element_size() for t in kept), peak


@pytest.mark.slow
def test_peak_memory_stays_far_below_one_nv_tensor():
    """N=4096, D=256, V=32000 fp32, forward + backward: the extra memory beyond inputs, outputs and
    gradients must be far below one [N, V] fp32 tensor (524 MB); measured 17.2 MB (one 16 MB chunk)."""
    skip_unless_available("cpu")
    n, d, vocab = 4096, 256, 32000
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(n, d, generator=g) * 0.1).requires_grad_(True)
    w = (torch.randn(vocab, d, generator=g) * 0.1).requires_grad_(True)
    y = torch.randint(vocab, (n,), generator=g)

    def fwd_bwd():
        with eo.use_backend("cpu"):
            logp, ent = eo.linear_logprobs_and_entropy(h, w, y)
            return (logp, ent, *torch.autograd.grad(logp.sum() + ent.sum(), (h, w)))

    extra, peak = peak_extra_bytes(fwd_bwd)
    one_nv = n * vocab * 4
    print(f"\npeak allocated {peak / 1e6:.1f} MB, beyond outputs and gradients {extra / 1e6:.1f} MB "
          f"(one [N, V] fp32 tensor: {one_nv / 1e6:.0f} MB)")
    assert extra < one_nv / 8


def test_bench_rows_are_measured_with_small_errors():
    from entropy_ops.bench import linear as bench

    skip_unless_available("cpu")
    for case in bench.build_cases("cpu", torch.float32, [(20, 8, 64)]):
        rows = bench.measure_case(case, ("eager", "torch", "cpu", "cublas"), repeats=1)
        assert [r.impl for r in rows] == ["eager", "torch", "cpu"]  # no cuBLAS row on CPU
        for r in rows:
            assert r.time_ms is not None and r.err_h < 1e-5 and r.err_logp < 1e-5, r
            assert (r.err_grad is None) == (r.rel_grad is None) == (case.direction == "fwd")
            assert r.rel_grad is None or r.rel_grad < 1e-5, r
    assert any("cpu" in line for line in bench.summary_lines(rows))
