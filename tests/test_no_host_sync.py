"""No host synchronization (SPEC §3.2) in any op, forward and backward, checked without a GPU by
``host_sync.no_host_sync`` (the CPU tensors take the GPU's code paths; the profiler flags the aten
ops that would sync). The ``torch`` backend is the CUDA fallback and float64's CUDA path; the ``cpu``
backend shares the ops' Python with the GPU backends; the ``triton`` launchers run under the
interpreter (``-m triton_interp``), the ``cuda`` ones on the CUDA emulator (``-m gpu``, where
``gpu_common.sync_debug_error`` runs this detector too). On a GPU, the ``-m gpu`` tests check the
same with ``torch.cuda.set_sync_debug_mode("error")``."""
import os

import pytest
import torch
import torch.nn.functional as F

import entropy_ops as eo
from conftest import assert_same_bits, skip_unless_available
from entropy_ops import _value_checks
from entropy_ops.ops.agg_loss import MODES
from host_sync import no_host_sync

B, T, V = 3, 10, 300
# verl's global_batch_info: Python ints, as verl passes them (and a 0-d tensor for one of them).
GLOBAL_COUNTS = dict(dp_size=2, batch_num_tokens=50, global_batch_size=torch.tensor(7), loss_scale_factor=4)


def every_op(x, y, t, mask, logp, old, adv, hidden, weight):
    """Every public op once, forward and backward, on ``[B, T]`` batches; returns their outputs."""
    logp_v, h = eo.logprobs_and_entropy(x, y, t, mask=mask)
    h1 = eo.entropy(x, t, mask=mask)
    ht = eo.top_p_entropy(x, 0.8, t, mask=mask)
    lp_min = eo.min_p_logprobs(x, y, 0.05, t, mask=mask)
    xi = x.detach().clone().requires_grad_(True)
    logp_i, h_i = eo.logprobs_and_entropy(xi * 1.0, y, t, mask=mask, inplace_backward=True)
    lin_logp, lin_h = eo.linear_logprobs_and_entropy(hidden, weight, y, temperature=t, mask=mask)
    w = eo.window_entropy(h, mask)
    cu = torch.arange(0, B * T + 1, T)
    w_packed = eo.window_entropy(h1.reshape(-1), mask.reshape(-1), window=3, offset=0, cu_seqlens=cu)
    threshold = eo.EntropyThreshold()
    clip = eo.clip_cov_policy_loss(logp, old, adv, mask, clip_cov_ratio=0.1, clip_cov_lb=-1.0,
                                   generator=torch.Generator().manual_seed(0))
    clip_rng = eo.clip_cov_policy_loss(logp, old, adv, mask.float(), clip_cov_ratio=0.1, clip_cov_lb=-1.0,
                                       loss_agg_mode="seq-mean-token-sum")
    kl = eo.kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=0.1, weights=adv.abs(),
                               loss_agg_mode="seq-mean-token-mean", **GLOBAL_COUNTS)
    siren = eo.selective_entropy_loss(x, mask, torch.tensor(1.0))
    losses = (logp_v, h, h1, ht, torch.where(torch.isfinite(lp_min), lp_min, 0), logp_i, h_i, lin_logp, lin_h,
              w, w_packed, clip.loss, clip_rng.loss, kl.loss, siren)
    torch.autograd.backward([v.sum() for v in losses])
    return [*(v.detach() for v in losses), x.grad, xi.grad, hidden.grad, weight.grad, logp.grad,
            eo.top_p_mask(x.detach(), 0.8, t), *eo.token_stats(x.detach(), y, t, mask=mask),
            eo.masked_quantile(h.detach(), mask, 0.8),
            eo.masked_quantile(h.detach(), mask, torch.tensor([0.2, 0.9], dtype=torch.float64), per_sequence=False),
            eo.peak_entropy_mask(w.detach(), mask, 0.8), threshold(h.detach(), mask), threshold(h.detach(), mask),
            eo.token_covariance(logp, adv, mask), eo.agg_loss(logp.detach(), mask, "seq-mean-token-sum-norm"),
            *(eo.agg_loss(logp.detach(), mask, mode, **GLOBAL_COUNTS) for mode in MODES),
            clip.selected, kl.selected, clip.selected_frac, kl.ppo_kl]


def inputs(temperature, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(B, T, V, generator=g) * 2).to(dtype).requires_grad_(True)
    y = torch.randint(V, (B, T), generator=g)
    y[0, 1] = -100
    mask = torch.rand(B, T, generator=g) < 0.8
    t = {"float": 0.7, "tensor_0d": torch.tensor(0.9), "per_row": torch.rand(B, T, generator=g) + 0.5}[temperature]
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(B, T, generator=g)
    old = torch.where(mask, old, float("-inf"))  # trainers' padding
    adv = torch.randn(B, 1, generator=g).expand(B, T).contiguous()
    hidden = torch.randn(B, T, 16, generator=g, dtype=dtype).requires_grad_(True)
    weight = (torch.randn(V, 16, generator=g, dtype=dtype) * 0.3).requires_grad_(True)
    return x, y, t, mask, logp, old, adv, hidden, weight


def run_every_op(backend, temperature, dtype=torch.float32):
    with eo.use_backend(backend):
        torch.manual_seed(0)  # Clip-Cov without a generator draws from the global RNG
        expected = every_op(*inputs(temperature, dtype))
        args = inputs(temperature, dtype)
        torch.manual_seed(0)
        with no_host_sync():
            got = every_op(*args)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_same_bits(a, b, f"output {k} under the detector vs outside")


@pytest.mark.parametrize("checked", [False, True], ids=["unchecked", "ENTROPY_OPS_CHECK"])
@pytest.mark.parametrize("temperature", ["float", "tensor_0d", "per_row"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_every_op_is_free_of_host_syncs(backend, temperature, checked, monkeypatch):
    skip_unless_available(backend)
    monkeypatch.setenv("ENTROPY_OPS_CHECK", "1" if checked else "0")
    run_every_op(backend, temperature)


@pytest.mark.triton_interp
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 at start-up")
def test_every_op_on_triton_is_free_of_host_syncs(monkeypatch):
    """One temperature kind (per-row, the one with a tensor argument): the interpreter is slow."""
    pytest.importorskip("triton")
    skip_unless_available("triton")
    monkeypatch.setenv("ENTROPY_OPS_CHECK", "1")
    run_every_op("triton", "per_row")


@pytest.mark.gpu
@pytest.mark.skipif(not os.environ.get("ENTROPY_OPS_CUDA_EMULATOR") or torch.cuda.is_available(),
                    reason="the CUDA emulator's check; on a GPU the -m gpu tests use the sync debug mode")
@pytest.mark.parametrize("temperature", ["float", "per_row"])
def test_every_op_on_the_cuda_emulator_is_free_of_host_syncs(temperature, monkeypatch):
    skip_unless_available("cuda")
    monkeypatch.setenv("ENTROPY_OPS_CHECK", "1")
    run_every_op("cuda", temperature)


def test_float64_on_the_torch_backend_is_free_of_host_syncs():
    """float64 logits on CUDA always run the torch backend (SPEC §2)."""
    run_every_op("torch", "per_row", torch.float64)


# ---- the detector itself: it fails on each kind of sync, and only on those -----------------------

x = torch.arange(6.0)
m = x > 2
SYNCS = {
    "item": lambda: x.sum().item(),
    "bool": lambda: bool(x.sum() > 0),
    "int": lambda: int(x.max()),
    "nonzero": lambda: torch.nonzero(m),
    "boolean index": lambda: x[m],
    "boolean index_put": lambda: x.clone().index_put_((m,), torch.tensor(0.0)),
    "masked_select": lambda: torch.masked_select(x, m),
    "unique": lambda: torch.unique(x),
    "bincount": lambda: torch.bincount(x.long()),
    "histc": lambda: torch.histc(x, bins=4),
    "repeat_interleave of a tensor": lambda: torch.repeat_interleave(x, x.long()),
    "one_hot without num_classes": lambda: F.one_hot(x.long()),
    "equal": lambda: torch.equal(x, x),
}
SYNC_FREE = {
    "elementwise and reductions": lambda: torch.where(m, x * 2, 0).sum(-1).cumsum(0),
    "assert_async": lambda: torch._assert_async(x.sum() > 0, "checked on the device"),
    "one_hot with num_classes": lambda: F.one_hot(x.long(), 6),
    "topk and sort": lambda: (torch.topk(x, 2), torch.sort(x), torch.searchsorted(x, x)),
    "repeat_interleave of an int": lambda: torch.repeat_interleave(x, 2),
    "repeat_interleave with output_size": lambda: torch.repeat_interleave(x, x.long(), output_size=15),
    "a host copy outside the package": lambda: (x.tolist(), x.numpy(), x.cpu()),
}


@pytest.mark.parametrize("name", SYNCS)
def test_detector_flags_each_kind_of_sync(name):
    with pytest.raises(AssertionError, match="host synchronization"):
        with no_host_sync():
            SYNCS[name]()


@pytest.mark.parametrize("factory", ["tensor", "as_tensor"])
def test_detector_flags_host_data_put_on_the_device_by_the_package(factory):
    in_package = eval(f"lambda: torch.{factory}(3, device='cpu')", {"__name__": "entropy_ops.ops.probe", "torch": torch})
    with pytest.raises(AssertionError, match=f"torch.{factory} of host data with device="):
        with no_host_sync():
            in_package()
    already_there = eval(f"lambda t: torch.{factory}(t, device=t.device)", {"__name__": "entropy_ops.ops.probe",
                                                                           "torch": torch})
    with no_host_sync():
        already_there(x)
        torch.tensor(3, device="cpu")  # outside the package: the test's own inputs


@pytest.mark.parametrize("method", ["tolist", "numpy", "cpu"])
def test_detector_flags_host_copies_in_the_package(method):
    """A host copy called from the package's code (here, a function whose module is entropy_ops')."""
    in_package = eval(f"lambda t: t.{method}()", {"__name__": "entropy_ops.ops.probe"})
    original = getattr(torch.Tensor, method)
    with pytest.raises(AssertionError, match=f"Tensor.{method} \\(in entropy_ops.ops.probe\\)"):
        with no_host_sync():
            in_package(x)
    assert getattr(torch.Tensor, method) is original, "the method is restored after the block"


@pytest.mark.parametrize("name", SYNC_FREE)
def test_detector_passes_what_stays_on_the_device(name):
    with no_host_sync():
        SYNC_FREE[name]()


def test_inside_the_detector_value_checks_take_the_device_path(monkeypatch):
    """On CPU a bad label raises ValueError from a host read; inside the detector, as on a GPU, it is
    not checked, or under ENTROPY_OPS_CHECK=1 checked by a device assert (a RuntimeError at once on
    CPU); the host may read CPU tensors again after the block."""
    logits, labels = torch.randn(2, 5), torch.tensor([1, 7])
    with eo.use_backend("torch"):
        with pytest.raises(ValueError, match="labels"):
            eo.logprobs_and_entropy(logits, labels)
        monkeypatch.setenv("ENTROPY_OPS_CHECK", "0")
        with no_host_sync():
            logp, _ = eo.logprobs_and_entropy(logits, labels)
        assert torch.isfinite(logp[0]) and not torch.isfinite(logp[1]), "an unchecked bad label: NaN in its row only"
        monkeypatch.setenv("ENTROPY_OPS_CHECK", "1")
        with pytest.raises(RuntimeError, match="labels"):
            with no_host_sync():
                eo.logprobs_and_entropy(logits, labels)
    assert _value_checks.host_reads(torch.device("cpu"))
