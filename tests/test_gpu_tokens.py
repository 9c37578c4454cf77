"""The token-level ops and losses on CUDA tensors (`pytest -m gpu`, skipped without a GPU): the
same results as on CPU, no host synchronisation under ``torch.cuda.set_sync_debug_mode("error")``
(forward and backward), and ``torch.compile(fullgraph=True)`` (SPEC §3.2, issue 6)."""
import pytest
import torch

import entropy_ops as eo
from gpu_common import DEVICE, GPU_BACKENDS, needs_real_gpu, pytestmark, sync_debug_error  # noqa: F401 (pytestmark: the gpu marks)
from token_common import check_strided_layouts


@pytest.fixture(autouse=True)
def _emulated_cuda():
    """The tests below that call the public ops leave the backend to `auto`, which picks a GPU
    backend for CUDA tensors; on the emulator's CPU tensors the `cuda` backend must be asked for."""
    if DEVICE == "cpu":
        with eo.use_backend("cuda"):
            yield
    else:
        yield


def _batch(B=8, T=512, V=1000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=gen) * 2
    mask = torch.rand(B, T, generator=gen) < 0.7
    mask[3] = False  # a sequence without valid tokens
    logp = -torch.rand(B, T, generator=gen) * 3
    old = logp + 0.1 * torch.randn(B, T, generator=gen)
    adv = torch.randn(B, 1, generator=gen).expand(B, T).contiguous()
    keys = torch.randint(0, 2**62, (B, T), generator=gen)
    return logits, mask, logp, old, adv, keys


def _all_ops(logits, mask, logp, old, adv, keys):
    h = eo.entropy(logits, mask=mask)
    w = eo.window_entropy(h, mask)
    cu = torch.arange(0, mask.numel() + 1, mask.shape[1], device=mask.device)
    return (
        w,
        eo.window_entropy(h.reshape(-1), mask.reshape(-1), window=3, offset=0, cu_seqlens=cu),
        eo.masked_quantile(h, mask, 0.8),
        eo.masked_quantile(h, mask, torch.tensor([0.2, 0.5], device=h.device), per_sequence=False),
        eo.peak_entropy_mask(w, mask, 0.8),
        eo.token_covariance(logp, adv, mask),
        eo.clip_cov_policy_loss(logp, old, adv, mask, clip_cov_ratio=0.01, clip_cov_lb=0.0, random_keys=keys),
        eo.kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=0.01),
        eo.agg_loss(logp, mask, "seq-mean-token-mean"),
        # verl's global_batch_info: Python counts (a tensor made of one on the GPU would sync).
        eo.agg_loss(logp, mask, "token-mean", dp_size=2, batch_num_tokens=3000),
        eo.kl_cov_policy_loss(logp, old, adv, mask, loss_agg_mode="seq-mean-token-sum-norm", dp_size=2,
                              global_batch_size=16, loss_scale_factor=256),
        eo.selective_entropy_loss(logits, mask, 1.0),
    )


def _flat(out):
    for o in out:
        if isinstance(o, tuple):
            yield from o
        else:
            yield o


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_strided_masks_and_offsets_are_read_as_values(backend):
    """The GPU launchers hand the kernels raw pointers: views must arrive contiguous."""
    if not eo.available_backends()[backend][0]:
        pytest.skip(f"{backend}: {eo.available_backends()[backend][1]}")
    with eo.use_backend(backend):
        check_strided_layouts(DEVICE)


def test_cuda_matches_cpu():
    cpu = _batch()
    gpu = tuple(t.to(DEVICE) for t in cpu)
    with eo.use_backend("cpu"):
        expected = list(_flat(_all_ops(*cpu)))
    for a, b in zip(_flat(_all_ops(*gpu)), expected):
        if a.dtype == torch.bool:
            assert torch.equal(a.cpu(), b)
        else:
            torch.testing.assert_close(a.cpu().double(), b.double(), rtol=1e-5, atol=1e-5, equal_nan=True)


def test_no_host_sync_forward_and_backward():
    logits, mask, logp, old, adv, keys = (t.to(DEVICE) for t in _batch(seed=1))
    logits.requires_grad_(True)
    logp.requires_grad_(True)
    with sync_debug_error():
        out = list(_flat(_all_ops(logits, mask, logp, old, adv, keys)))
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        out.append(eo.clip_cov_policy_loss(logp, old, adv, mask, generator=gen).loss)
        threshold = eo.EntropyThreshold().to(DEVICE)
        out.append(threshold(eo.entropy(logits.detach(), mask=mask), mask))
        loss = sum(o.float().sum() for o in out if o.is_floating_point() and o.requires_grad)
        loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(logp.grad).all()


def test_compile_fullgraph_on_cuda():
    torch._dynamo.reset()
    args = tuple(t.to(DEVICE) for t in _batch(B=4, T=64, V=128, seed=2))
    compiled = torch.compile(_all_ops, fullgraph=True)
    for a, b in zip(_flat(compiled(*args)), _flat(_all_ops(*args))):
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, equal_nan=True)


# ---- the triton and cuda token kernels (window entropy, masked quantile, top-k) vs the references ----

GPU_TOKEN_BACKENDS = GPU_BACKENDS


def _token_case(dtype, seed=0):
    """``(x [N], mask [N], cu)`` on the GPU: packed sequences (empty, single-token, longer than one
    block), masked entries NaN, ties and signed zeros."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [700, 0, 1, 17, 0, 3000, 9, 2, 1100]
    n = sum(lengths)
    x = (torch.randint(0, 400, (n,), generator=gen) * 0.015625 - 2).double()
    x[::13] = -0.0
    mask = torch.rand(n, generator=gen) < 0.8
    x = torch.where(mask, x, float("nan"))
    cu = torch.tensor([0] + lengths).cumsum(0)
    return x.to(dtype).to(DEVICE), mask.to(DEVICE), cu.to(DEVICE)


@pytest.mark.parametrize("backend", GPU_TOKEN_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_token_kernels_match_references(backend, dtype):
    from entropy_ops import _backends
    from entropy_ops import reference as R
    from entropy_ops.backends.torch_select import top_k as top_k_torch

    ok, reason = _backends.available_backends()[backend]
    assert ok, f"{backend} is not available on this GPU machine: {reason}"
    x, mask, cu = _token_case(dtype)
    window = _backends.get_kernel(backend, "window_entropy")
    quantile = _backends.get_kernel(backend, "masked_quantile")
    top_k = _backends.get_kernel(backend, "top_k")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    g = torch.randn(x.shape[0], dtype=acc, device=DEVICE)
    for w, o in ((4, 1), (1, 0), (50, 3), (3, 5000)):
        ref_in = x.cpu().to(torch.float64, copy=True).requires_grad_(True)  # a copy: float64 x is not cloned by .double()
        ref = R.window_entropy_ref(ref_in, mask.cpu(), w, o, cu.cpu())
        ref.backward(g.cpu().double())
        out = window.fwd(x, mask, cu, w, o)
        assert out.dtype == acc
        torch.testing.assert_close(out.cpu().double(), ref.detach(), rtol=tol, atol=tol)
        torch.testing.assert_close(window.bwd(g, mask, cu, w, o).cpu().double(), ref_in.grad, rtol=tol, atol=tol)
    q = torch.tensor([0.0, 0.1, 0.5, 0.95, 1.0], dtype=torch.float64, device=DEVICE)
    ref = R.masked_quantile_ref(x.cpu(), mask.cpu(), q.cpu(), cu_seqlens=cu.cpu())
    assert torch.equal(quantile(x, mask, cu, q).cpu().nan_to_num(7.5), ref.nan_to_num(7.5))
    ref_all = R.masked_quantile_ref(x.cpu(), mask.cpu(), q.cpu(), per_sequence=False)
    assert torch.equal(quantile(x, mask, None, q)[:, 0].cpu(), ref_all)
    scores = torch.nan_to_num(x, nan=0.0)
    for k in (0, 1, 5, 1000, x.shape[0] + 1):
        k_t = torch.tensor([k], device=DEVICE)
        assert torch.equal(top_k(scores, mask, k_t).cpu(), top_k_torch(scores.cpu(), mask.cpu(), k_t.cpu())), k
    keys = torch.randint(-2**62, 2**62, (x.shape[0],), device=DEVICE) // 2**50  # int64 with ties
    k_t = torch.tensor([333], device=DEVICE)
    assert torch.equal(top_k(keys, mask, k_t).cpu(), top_k_torch(keys.cpu(), mask.cpu(), k_t.cpu()))


@pytest.mark.parametrize("backend", GPU_TOKEN_BACKENDS)
def test_token_kernels_batch_invariant_and_sync_free(backend):
    from entropy_ops import _backends

    x, mask, cu = _token_case(torch.float32, seed=3)
    quantile = _backends.get_kernel(backend, "masked_quantile")
    top_k = _backends.get_kernel(backend, "top_k")
    q = torch.tensor([0.25, 0.8], dtype=torch.float64, device=DEVICE)
    perm = torch.randperm(x.shape[0], device=DEVICE)
    cu_one, k_t = torch.tensor([0, 3000], device=DEVICE), torch.tensor([100], device=DEVICE)
    with sync_debug_error():
        full = quantile(x, mask, cu, q)
        alone = quantile(x[718:3718].contiguous(), mask[718:3718].contiguous(), cu_one, q)
        over_all = quantile(x, mask, None, q)
        shuffled = quantile(x[perm].contiguous(), mask[perm].contiguous(), None, q)
        w = _backends.get_kernel(backend, "window_entropy").fwd(x, mask, cu, 4, 1)
        w_alone = _backends.get_kernel(backend, "window_entropy").fwd(
            x[718:3718].contiguous(), mask[718:3718].contiguous(), cu_one, 4, 1)
        picked = top_k(torch.nan_to_num(x), mask, k_t)
    assert torch.equal(full[:, 5], alone[:, 0]), "a sequence's quantile does not depend on the batch"
    assert torch.equal(over_all, shuffled), "integer histograms: the order of the tokens does not matter"
    assert torch.equal(w[718:3718], w_alone)
    assert int(picked.sum()) == 100


@pytest.mark.parametrize("backend", GPU_TOKEN_BACKENDS)
def test_token_ops_compile_fullgraph_per_backend(backend):
    torch._dynamo.reset()
    x, mask, cu = _token_case(torch.float32, seed=5)
    x = torch.nan_to_num(x).requires_grad_(True)

    def ops(x, mask, cu):
        w = eo.window_entropy(x, mask, window=4, offset=1, cu_seqlens=cu)
        return (w, eo.masked_quantile(x.detach(), mask, 0.8, cu_seqlens=cu),
                eo.masked_quantile(x.detach(), mask, 0.5, per_sequence=False))

    with eo.use_backend(backend):
        eager = ops(x, mask, cu)
        compiled = torch.compile(ops, fullgraph=True)(x, mask, cu)
        (grad_e,) = torch.autograd.grad(eager[0].sum(), x)
        (grad_c,) = torch.autograd.grad(compiled[0].sum(), x)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grad_c, grad_e, rtol=0, atol=0)


# ---- random keys (Clip-Cov's uniform choice) on both GPU backends ---------------------------------

# (seed, first) as int64 bit patterns: negative seeds are the upper half of the uint64 seeds, and
# the last offsets make first + i and j + 1 wrap modulo 2^64.
KEY_CASES = [(0, 0), (2**62 - 1, 5), (-2**63 + 5, 2**40), (-1, 2**63 - 3), (123456789, -2)]


def _keys_ref(seed, first, n):
    from entropy_ops import reference as R

    return R.random_keys_ref(seed % 2**64, first % 2**64, n)


def _keys_kernel(backend):
    from entropy_ops import _backends

    ok, reason = _backends.available_backends()[backend]
    assert ok, f"{backend} is not available on this GPU machine: {reason}"
    return _backends.get_kernel(backend, "random_keys")


@pytest.mark.parametrize("backend", GPU_TOKEN_BACKENDS)
def test_random_keys_match_reference_sync_free(backend):
    kernel = _keys_kernel(backend)
    sizes = (0, 1, 1000, 70_001)  # 70_001: many blocks / programs and a partial last one
    args = [(torch.tensor([s], device=DEVICE), torch.tensor([f], device=DEVICE)) for s, f in KEY_CASES]
    with sync_debug_error():
        outs = [kernel(seed, first, n) for seed, first in args for n in sizes]
        tails = [kernel(seed, first + 777, 70_001 - 777) for seed, first in args]
    outs = iter(outs)
    for (s, f), tail in zip(KEY_CASES, tails):
        for n in sizes:
            out = next(outs)
            assert out.dtype == torch.int64 and out.shape == (n,) and out.device.type == DEVICE
            assert torch.equal(out.cpu(), _keys_ref(s, f, n)), (backend, s, f, n)
        # Counter-based: keys [first + 777, first + 70_001) are the tail of those of [first, ...).
        assert torch.equal(tail.cpu(), _keys_ref(s, f, 70_001)[777:]), (backend, s, f)


@needs_real_gpu
@pytest.mark.parametrize("backend", GPU_TOKEN_BACKENDS)
def test_random_keys_read_seed_and_first_on_the_device(backend):
    # Captured in a CUDA graph, then the seed and offset changed in place: the replay computes the
    # keys of the new values, so neither was read on the host at capture.
    kernel = _keys_kernel(backend)
    seed, first = torch.tensor([11], device=DEVICE), torch.tensor([0], device=DEVICE)
    kernel(seed, first, 4096)  # warm-up: compiles / loads the kernel outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel(seed, first, 4096)
    seed.fill_(-2**63 + 99)
    first.fill_(2**40 + 3)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), _keys_ref(-2**63 + 99, 2**40 + 3, 4096))


@needs_real_gpu
@pytest.mark.bigmem
@pytest.mark.parametrize("backend", GPU_TOKEN_BACKENDS)
def test_random_keys_past_2_31(backend):
    # 2^31 + 4099 keys (16 GiB): the index math is 64-bit (Triton's program offsets, CUDA's
    # grid-stride loop), checked around element 2^31 and at the end.
    kernel = _keys_kernel(backend)
    n, seed, first = 2**31 + 4099, -2**63 + 7, 2**33
    out = kernel(torch.tensor([seed], device=DEVICE), torch.tensor([first], device=DEVICE), n)
    try:
        for a in (0, 2**31 - 40, n - 50):
            assert torch.equal(out[a:a + 80].cpu(), _keys_ref(seed, first + a, min(80, n - a))), a
    finally:
        del out
        torch.cuda.empty_cache()


# ---- CUDA-graph capture of the token ops and losses -------------------------------------------------

def _captured_step(B=8, T=512):
    """Static inputs and a step that runs every token op and both losses (forward, and backward into
    ``logp.grad``) with no host sync: what a trainer captures in a CUDA graph."""
    logits, mask, logp, old, adv, keys = (t.to(DEVICE) for t in _batch(B, T, V=16))
    h = torch.rand(B, T, device=DEVICE)
    cu = torch.arange(0, B * T + 1, T, device=DEVICE)
    logp.requires_grad_(True)
    threshold = eo.EntropyThreshold(q=0.9, momentum=0.5).to(DEVICE)

    def step():
        logp.grad = None
        clip = eo.clip_cov_policy_loss(logp, old, adv, mask, clip_cov_ratio=0.01, clip_cov_lb=0.0, random_keys=keys)
        kl = eo.kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=0.01, loss_agg_mode="seq-mean-token-mean")
        (clip.loss + kl.loss).backward()
        return (eo.window_entropy(h, mask), eo.window_entropy(h.reshape(-1), mask.reshape(-1), 3, 0, cu),
                eo.masked_quantile(h, mask, 0.8), eo.masked_quantile(h, mask, 0.5, per_sequence=False),
                eo.peak_entropy_mask(h, mask, 0.8), threshold(h, mask), eo.token_covariance(logp, adv, mask),
                clip.loss, clip.selected, kl.loss, kl.selected, logp.grad)

    return {"h": h, "mask": mask, "logp": logp, "old": old, "adv": adv, "keys": keys}, step, threshold


@needs_real_gpu
@pytest.mark.parametrize("backend", GPU_TOKEN_BACKENDS)
def test_token_ops_and_losses_replay_in_a_cuda_graph(backend):
    """Captured once, replayed on new values written into the static inputs: the same bits as the
    ops run eagerly on those values (a value read on the host at capture would be frozen in)."""
    with eo.use_backend(backend):
        static, step, threshold = _captured_step()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: kernels compiled and loaded outside the capture
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        threshold.value.fill_(float("nan"))
        threshold.initialized.fill_(False)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = step()
        fresh, eager_step, eager_threshold = _captured_step()
        for seed in (1, 2):
            _, mask, logp, old, adv, keys = (t.to(DEVICE) for t in _batch(seed=seed, V=16))
            new = {"h": torch.rand(8, 512, device=DEVICE), "mask": mask, "old": old, "adv": adv, "keys": keys}
            with torch.no_grad():
                static["logp"].copy_(logp)
                fresh["logp"].copy_(logp)
            for name, value in new.items():
                static[name].copy_(value)
                fresh[name].copy_(value)
            graph.replay()
            expected = eager_step()
            for i, (got, want) in enumerate(zip(outs, expected)):
                torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True,
                                           msg=lambda m: f"{backend}, replay {seed}: output {i}: {m}")
            assert torch.equal(threshold.value, eager_threshold.value), f"{backend}, replay {seed}: threshold"
