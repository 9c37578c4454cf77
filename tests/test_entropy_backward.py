"""Backward of ``entropy`` / ``logprobs_and_entropy`` vs autograd through the float64 reference;
"zero means zero" rules (SPEC §2); gradcheck; ``inplace_backward``; no double backward."""
import pytest
import torch

import entropy_ops as eo
from conftest import (
    assert_neginf_grad_is_zero,
    FINITE_KINDS,
    assert_within_eager_bound,
    eager_entropy,
    eager_grad,
    eager_logprobs_and_entropy,
    make_labels,
    make_rows,
    ours_grad,
    reference_grad,
)
from entropy_common import (
    check_bad_rows_get_nan_gradients,
    check_inplace_backward_on_a_grid,
    check_low_temperature_grads,
)
from entropy_ops.reference import entropy_ref, logprobs_and_entropy_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
MODES = ["entropy", "logp", "both"]
# Rows shifted by +-1e4 have their own test below (one clearly named failure if they regress).
UNSHIFTED_KINDS = tuple(k for k in FINITE_KINDS if not k.startswith("shift"))


def _fns(mode):
    """(ours, reference, eager) callables and whether the op takes labels."""
    if mode == "entropy":
        return eo.entropy, entropy_ref, eager_entropy, False
    return eo.logprobs_and_entropy, logprobs_and_entropy_ref, eager_logprobs_and_entropy, True


def _weights(mode, n, kinds, seed):
    """Per-row upstream weights (a for logp, b for H) with exact zeros, among them whole rows
    holding ``-inf`` entries."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    zero_rows = torch.tensor([k in ("neginf_mask", "onehot_neginf") for k in kinds])
    if n > 2:
        zero_rows[n // 2] = True
    a[zero_rows], b[zero_rows] = 0.0, 0.0
    if n > 3:
        a[1], b[2] = 0.0, 0.0
    weights = {"entropy": (b,), "logp": (a, None), "both": (a, b)}[mode]
    return weights, zero_rows


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("vocab", [1, 2, 111, 1024, 32000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_matches_reference(backend, dtype, vocab, mode):
    n = 7 if vocab >= 32000 else 9
    x, kinds = make_rows(n, vocab, dtype, kinds=UNSHIFTED_KINDS, seed=vocab + 3)
    fn, ref_fn, eager_fn, takes_labels = _fns(mode)
    args = (make_labels(n, vocab, seed=vocab),) if takes_labels else ()
    weights, zero_rows = _weights(mode, n, kinds, seed=vocab)
    grad = ours_grad(fn, x, *args, weights=weights)
    assert grad.dtype == dtype and grad.shape == x.shape
    ref = reference_grad(ref_fn, x, *args, weights=weights)
    eager = eager_grad(eager_fn, x, *args, weights=weights)
    assert_within_eager_bound(grad, ref, eager, kinds, what=f"grad ({mode})")
    assert_neginf_grad_is_zero(grad, x, args[0] if takes_labels else None)
    assert (grad[zero_rows] == 0).all(), "rows with zero upstream gradient must get an exact 0 gradient"
    if mode == "logp":
        ignored = args[0] == -100
        assert (grad[ignored] == 0).all(), "ignored labels must give no logp gradient"


@pytest.mark.parametrize("vocab", [111, 1024, 32000])
@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_grad_of_shifted_rows(backend, shift, vocab):
    """fp32 rows shifted by +-1e4 (six random batches): the gradient stays within SPEC §2's bound.
    p_j = exp(z_j - lse) with lse ~ 1e4 rounded to fp32 (ulp ~1e-3) is not accurate enough; p_j
    needs the row max and log(sum_exp) separately, as the saved row state has them."""
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(4, vocab, generator=gen) * 2 + shift
        y = torch.randint(vocab, (4,), generator=gen)
        weights = (torch.randn(4, generator=gen), torch.randn(4, generator=gen))
        grad = ours_grad(eo.logprobs_and_entropy, x, y, weights=weights)
        ref = reference_grad(logprobs_and_entropy_ref, x, y, weights=weights)
        eager = eager_grad(eager_logprobs_and_entropy, x, y, weights=weights)
        assert_within_eager_bound(grad, ref, eager, what=f"grad of shifted rows (seed {seed})")


def test_grad_at_low_temperatures(backend):
    """T in {0.01, 0.1}, rows with lse in [8, 64): the gradient's log p comes from the saved row max
    and log-sum, never from a float32 lse, whose rounding 1/T would magnify (1.5e-4 at T = 0.01)."""
    check_low_temperature_grads()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_grad_with_temperature_mask_and_ignore(backend, dtype):
    x, kinds = make_rows(15, 333, dtype, kinds=UNSHIFTED_KINDS, seed=51)
    x = x.reshape(3, 5, 333)
    y = make_labels(15, 333, ignore_index=-1, n_ignored=3, seed=52).reshape(3, 5)
    t = torch.rand(3, 5, generator=torch.Generator().manual_seed(53)) + 0.4
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(54)) < 0.7
    kw = dict(temperature=t, ignore_index=-1, mask=mask)
    gen = torch.Generator().manual_seed(55)
    weights = (torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen))
    grad = ours_grad(eo.logprobs_and_entropy, x, y, weights=weights, **kw)
    ref = reference_grad(logprobs_and_entropy_ref, x, y, weights=weights, **kw)
    eager = eager_grad(eager_logprobs_and_entropy, x, y, weights=weights, **kw)
    assert_within_eager_bound(grad.reshape(15, 333), ref.reshape(15, 333), eager.reshape(15, 333), kinds)
    assert (grad[~mask] == 0).all()
    # An ignored row keeps its entropy gradient only.
    ignored = (y == -1) & mask
    assert ignored.any()
    h_only = ours_grad(eo.entropy, x, weights=(weights[1],), temperature=t, mask=mask)
    assert torch.equal(grad[ignored], h_only[ignored])


def test_grad_of_non_contiguous_rows(backend):
    wide = torch.randn(6, 140)
    x = wide[:, :128]
    y = torch.randint(128, (6,))
    weights = (torch.randn(6), torch.randn(6))
    grad = ours_grad(eo.logprobs_and_entropy, x, y, weights=weights)
    ref = reference_grad(logprobs_and_entropy_ref, x, y, weights=weights)
    eager = eager_grad(eager_logprobs_and_entropy, x, y, weights=weights)
    assert_within_eager_bound(grad, ref, eager)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_masked_nan_row_gets_zero_grad(backend, dtype):
    x = torch.randn(4, 200).to(dtype)
    x[1] = float("nan")
    x[3] = float("-inf")
    mask = torch.tensor([True, False, True, False])
    y = torch.tensor([1, 2, 3, 4])
    weights = (torch.randn(4), torch.randn(4))
    grad = ours_grad(eo.logprobs_and_entropy, x, y, weights=weights, mask=mask)
    assert (grad[~mask] == 0).all()
    ref = reference_grad(logprobs_and_entropy_ref, x[mask], y[mask], weights=[w[mask] for w in weights])
    eager = eager_grad(eager_logprobs_and_entropy, x[mask], y[mask], weights=[w[mask] for w in weights])
    assert_within_eager_bound(grad[mask], ref, eager)


def test_bad_rows_get_nan_gradients(backend):
    check_bad_rows_get_nan_gradients()


def test_zero_upstream_grad_on_nan_row_is_zero(backend):
    """Zero means zero (SPEC §2): a zero upstream gradient selects 0, even on a row whose own
    values are NaN; the other rows are untouched."""
    x = torch.randn(3, 64)
    x[1, 7] = float("nan")
    weights = (torch.tensor([0.5, 0.0, -1.0]),)
    grad = ours_grad(eo.entropy, x, weights=weights)
    assert (grad[1] == 0).all()
    ref = reference_grad(entropy_ref, x[[0, 2]], weights=(weights[0][[0, 2]],))
    eager = eager_grad(eager_entropy, x[[0, 2]], weights=(weights[0][[0, 2]],))
    assert_within_eager_bound(grad[[0, 2]], ref, eager)


@pytest.mark.parametrize("temperature", ["float", "tensor_0d", "per_row"])
def test_gradcheck_float64(backend, temperature):
    gen = torch.Generator().manual_seed(61)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=gen)
    x[0, 1, 2] = float("-inf")
    y = torch.tensor([[0, 1, -100], [4, 3, 2]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    t = {"float": 0.8, "tensor_0d": torch.tensor(1.4, dtype=torch.float64),
         "per_row": torch.rand(2, 3, dtype=torch.float64, generator=gen) + 0.5}[temperature]
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: eo.entropy(z, t, mask=mask), (x,))
    assert torch.autograd.gradcheck(lambda z: eo.logprobs_and_entropy(z, y, t, mask=mask), (x,))


@pytest.mark.parametrize("shape", [(4, 300), (2, 3, 300)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_inplace_backward(backend, dtype, shape):
    gen = torch.Generator().manual_seed(71)
    base = torch.randn(shape, generator=gen).to(dtype)
    y = torch.randint(300, shape[:-1], generator=gen)
    a, b = torch.randn(shape[:-1], generator=gen), torch.randn(shape[:-1], generator=gen)

    def run(inplace):
        x = base.clone().requires_grad_(True)
        w = x * 1.0  # an intermediate: its buffer may be overwritten by the gradient
        seen = []
        w.register_hook(lambda g: seen.append(g))
        logp, h = eo.logprobs_and_entropy(w, y, 0.9, inplace_backward=inplace)
        (a * logp + b * h).sum().backward()
        return x.grad, seen[0], w

    grad_out, _, _ = run(False)
    grad_in, seen, w = run(True)
    assert torch.equal(grad_in, grad_out)
    assert seen.data_ptr() == w.data_ptr(), "inplace_backward must write the gradient into the logits' buffer"
    ref = reference_grad(logprobs_and_entropy_ref, base, y, 0.9, weights=(a, b))
    eager = eager_grad(eager_logprobs_and_entropy, base, y, 0.9, weights=(a, b))
    assert_within_eager_bound(grad_in.reshape(-1, 300), ref.reshape(-1, 300), eager.reshape(-1, 300))


def test_inplace_backward_entropy_non_collapsible(backend):
    """Leading dims that cannot be viewed as rows: the gradient still lands in the logits."""
    base = torch.randn(3, 4, 50)
    x = base.clone().requires_grad_(True)
    w = (x * 1.0).transpose(0, 1)
    eo.entropy(w, inplace_backward=True).sum().backward()
    ref = reference_grad(entropy_ref, base, weights=(torch.ones(3, 4),))
    eager = eager_grad(eager_entropy, base, weights=(torch.ones(3, 4),))
    assert_within_eager_bound(x.grad.reshape(12, 50), ref.reshape(12, 50), eager.reshape(12, 50))


@pytest.mark.parametrize("layout", ["expand", "unfold", "expand_non_collapsible"])
def test_inplace_backward_of_rows_sharing_memory(backend, layout):
    """Rows that share memory cannot hold one gradient each: the gradient is written out of place,
    and equals the out-of-place one (it used to be silently wrong by O(1))."""
    gen = torch.Generator().manual_seed(72)
    make, base = {
        "expand": (lambda t: t.expand(2, 3, 6), torch.randn(1, 1, 6, generator=gen)),
        "unfold": (lambda t: t.unfold(0, 8, 2), torch.randn(20, generator=gen)),
        "expand_non_collapsible": (lambda t: t.expand(2, 3, 6), torch.randn(2, 1, 6, generator=gen)),
    }[layout]
    grads = []
    for inplace in (False, True):
        leaf = base.clone().requires_grad_(True)
        w = make(leaf * 1.0)
        logp, h = eo.logprobs_and_entropy(w, torch.zeros(w.shape[:-1], dtype=torch.long), inplace_backward=inplace)
        grads.append(torch.autograd.grad((logp + h).sum(), leaf)[0])
    assert torch.equal(grads[1], grads[0])
    leaf = base.double().requires_grad_(True)
    w = make(leaf)
    logp, h = logprobs_and_entropy_ref(w, torch.zeros(w.shape[:-1], dtype=torch.long))
    torch.testing.assert_close(grads[0].double(), torch.autograd.grad((logp + h).sum(), leaf)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("inplace", [False, True])
def test_double_backward_raises(backend, inplace):
    x = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(eo.entropy(x * 1, inplace_backward=inplace).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()
    logp = eo.logprobs_and_entropy(x * 1, torch.tensor([1, 2, 3]), inplace_backward=inplace)[0]
    (g,) = torch.autograd.grad(logp.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("per_row", [False, True])
def test_temperature_requiring_grad_gets_none(backend, per_row):
    x = torch.randn(4, 33, requires_grad=True)
    t = (torch.rand(4) + 0.5 if per_row else torch.tensor(0.7)).requires_grad_(True)
    y = torch.randint(33, (4,))
    logp, h = eo.logprobs_and_entropy(x, y, t)
    (logp + h).sum().backward()
    assert t.grad is None
    ref = reference_grad(logprobs_and_entropy_ref, x, y, t.detach(), weights=(torch.ones(4), torch.ones(4)))
    eager = eager_grad(eager_logprobs_and_entropy, x.detach(), y, t.detach(), weights=(torch.ones(4), torch.ones(4)))
    assert_within_eager_bound(x.grad, ref, eager)
    h_only = eo.entropy(x.detach(), t)
    assert not h_only.requires_grad
    assert_within_eager_bound(h_only, entropy_ref(x, t.detach()), eager_entropy(x.detach(), t.detach()))


def test_inplace_backward_on_a_grid(backend):
    """``logits[:, :-1]`` and a transpose are read in place on a grid (``ops/_rows.py``); their
    in-place gradient goes into the view's own rows, never into the rows between."""
    check_inplace_backward_on_a_grid()


def test_inplace_backward_on_a_grid_allocates_no_nv_buffer():
    """On the ``cpu`` backend the in-place backward of a grid view allocates no ``[N, V]`` buffer: it
    writes over the grid and saves only the rows between (one per sequence)."""
    from torch.profiler import ProfilerActivity, profile

    with eo.use_backend("cpu"):
        for logits, y, (a, b) in check_inplace_backward_on_a_grid():
            logp, h = eo.logprobs_and_entropy(logits, y, 0.7, inplace_backward=True)
            n, vocab = logits.shape[:-1].numel(), logits.shape[-1]
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                torch.autograd.grad((a * logp + b * h).sum(), logits)
            ops = {e.name for e in prof.events()}
            assert "entropy_ops::entropy_bwd_" in ops and "entropy_ops::entropy_bwd" not in ops, ops
            inside = [e for e in prof.events() if _under(e, "entropy_ops::entropy_bwd_")]
            biggest = max((e.cpu_memory_usage for e in inside), default=0)
            assert biggest < n * vocab * logits.element_size() // 2, (tuple(logits.shape), biggest)


def _under(event, name):
    while event is not None:
        if event.name == name:
            return True
        event = event.cpu_parent
    return False


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_inplace_backward_of_a_non_collapsible_view_compiles(backend, compiler, tmp_path, monkeypatch):
    """Under tracing, ``view`` of a non-collapsible tensor raises ValueError (not RuntimeError): the
    layout is decided from the strides, so the shifted and transposed views compile, with static
    and then (after a new shape) symbolic sizes."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))

    def loss(x):
        return (eo.entropy((x * 1.0)[:, :-1], inplace_backward=True).sum()
                + eo.entropy((x * 2.0).transpose(0, 1), inplace_backward=True).sum())
    compiled = torch.compile(loss, backend=compiler, fullgraph=True)
    for shape in ((2, 4, 33), (3, 6, 33), (2, 5, 33)):  # the second shape recompiles with dynamic sizes
        base = torch.randn(shape, generator=torch.Generator().manual_seed(5))
        grads = []
        for fn in (loss, compiled):
            leaf = base.clone().requires_grad_(True)
            grads.append(torch.autograd.grad(fn(leaf), leaf)[0])
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-7)
