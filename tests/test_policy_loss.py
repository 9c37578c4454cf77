"""``token_covariance``, ``clip_cov_policy_loss`` and ``kl_cov_policy_loss`` (SPEC §3.2) vs float64
references written from the formulas: empty masks, a single valid token, ties in covariance, k = 1
and k beyond the candidates, importance weights, gradients, uniformity of Clip-Cov's random choice,
``torch.compile(fullgraph=True)`` and bad arguments (``agg_loss``: test_agg_loss.py)."""
import pytest
import torch

import entropy_ops as eo
from entropy_ops import reference as R
from entropy_ops.ops.agg_loss import MODES
from token_common import KEY_HIGH, assert_close64, policy_batch


# ---- token_covariance ------------------------------------------------------------------------------

def test_token_covariance_matches_reference():
    logp, _, adv, mask, _ = policy_batch(seed=2)
    cov = eo.token_covariance(logp.requires_grad_(True), adv, mask)
    assert not cov.requires_grad
    assert_close64(cov, R.token_covariance_ref(logp, adv, mask))
    assert (eo.token_covariance(logp, adv, torch.zeros_like(mask)) == 0).all()


# ---- Clip-Cov ----------------------------------------------------------------------------------------

def _clip_cov(logp, old, adv, mask, keys, **kw):
    x = logp.clone().requires_grad_(True)
    out = eo.clip_cov_policy_loss(x, old, adv, mask, random_keys=keys, **kw)
    xr = logp.double().requires_grad_(True)
    ref = R.clip_cov_policy_loss_ref(xr, old, adv, mask, keys, **kw)
    (g,) = torch.autograd.grad(out.loss, x)
    gr = torch.autograd.grad(ref[0], xr)[0] if ref[0].requires_grad else torch.zeros_like(xr)
    return out, ref, g, gr


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("clip_cov_ratio", [1e-4, 0.05, 0.5, 1.0])
def test_clip_cov_matches_reference(mode, clip_cov_ratio):
    logp, old, adv, mask, keys = policy_batch(seed=3)
    out, ref, g, gr = _clip_cov(logp, old, adv, mask, keys, clip_cov_ratio=clip_cov_ratio,
                                clip_cov_lb=0.1, clip_cov_ub=4.0, loss_agg_mode=mode)
    assert torch.equal(out.selected, ref[2])
    assert_close64(out.loss, ref[0])
    assert_close64(out.ppo_kl, ref[1])
    assert_close64(out.selected_frac, ref[3])
    assert_close64(g, gr)
    assert (g[out.selected] == 0).all(), "chosen tokens get no gradient"
    n_cand = ((R.token_covariance_ref(logp, adv, mask) > 0.1) & (R.token_covariance_ref(logp, adv, mask) < 4.0)).sum()
    k = max(int(clip_cov_ratio * int(mask.sum())), 1)
    assert 0 < out.selected.sum() <= min(k, int(n_cand))


def test_clip_cov_defaults_asymmetric_clip_and_weights():
    logp, old, adv, mask, keys = policy_batch(seed=4, T=400)
    w = torch.rand(logp.shape, generator=torch.Generator().manual_seed(9)) + 0.5
    for kw in ({}, {"clip_ratio_low": 0.1, "clip_ratio_high": 0.28}, {"weights": w}):
        out, ref, g, gr = _clip_cov(logp, old, adv, mask, keys, **kw)
        assert torch.equal(out.selected, ref[2])
        assert_close64(out.loss, ref[0])
        assert_close64(g, gr)


def test_clip_cov_single_valid_token_and_empty_mask():
    logp, old, adv, mask, keys = policy_batch(seed=5)
    one = torch.zeros_like(mask)
    one[1, 3] = True
    out, ref, g, gr = _clip_cov(logp, old, adv, one, keys)
    assert_close64(out.loss, ref[0])
    assert out.selected.sum() == 0  # its covariance is exactly 0: never inside (lb, ub) = (1, 5)
    out, _, g, _ = _clip_cov(logp, old, adv, torch.zeros_like(mask), keys)
    assert out.loss.item() == out.ppo_kl.item() == out.selected_frac.item() == 0
    assert (g == 0).all() and not out.selected.any()


def test_clip_cov_choice_is_uniform_among_candidates():
    # 12 candidates (all covariances inside the window), k = 3: each is chosen with p = 1/4.
    B, T = 1, 24
    adv = torch.tensor([[3.0, -3.0] * 12])
    logp = torch.tensor([[-1.0, -3.0] * 12])  # cov = (A)(logp + 2) = 3 for every token
    old = logp.clone()
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, :12] = True
    counts = torch.zeros(B, T)
    trials = 4000
    gen = torch.Generator().manual_seed(0)
    for _ in range(trials):
        out = eo.clip_cov_policy_loss(logp, old, adv, mask, clip_cov_ratio=0.25, clip_cov_lb=1.0,
                                      clip_cov_ub=5.0, generator=gen)
        counts += out.selected
    assert (counts[0, 12:] == 0).all()
    freq = counts[0, :12] / trials
    # Binomial(4000, 1/4): sd 0.0068; 5 sd bound per token, and the total is exactly 3 per trial.
    assert ((freq - 0.25).abs() < 0.035).all(), freq
    assert counts.sum() == 3 * trials


def test_clip_cov_generator_reproducible():
    logp, old, adv, mask, _ = policy_batch(seed=6, T=400)
    kw = dict(clip_cov_ratio=0.01, clip_cov_lb=0.0, clip_cov_ub=100.0)
    a = eo.clip_cov_policy_loss(logp, old, adv, mask, generator=torch.Generator().manual_seed(3), **kw)
    b = eo.clip_cov_policy_loss(logp, old, adv, mask, generator=torch.Generator().manual_seed(3), **kw)
    c = eo.clip_cov_policy_loss(logp, old, adv, mask, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a.selected, b.selected) and not torch.equal(a.selected, c.selected)


def test_clip_cov_generator_keys_are_the_documented_stream():
    # generator=g is random_keys = splitmix64(seed, flat index) >> 2, seed = randint(0, 2**62, (1,), g).
    logp, old, adv, mask, _ = policy_batch(seed=10, T=300)
    kw = dict(clip_cov_ratio=0.02, clip_cov_lb=0.0, clip_cov_ub=100.0)
    seed = int(torch.randint(0, KEY_HIGH, (1,), generator=torch.Generator().manual_seed(5)))
    keys = R.random_keys_ref(seed, 0, logp.numel()).view(logp.shape)
    for backend in ("torch", "cpu"):
        with eo.use_backend(backend):
            a = eo.clip_cov_policy_loss(logp, old, adv, mask, generator=torch.Generator().manual_seed(5), **kw)
        b = eo.clip_cov_policy_loss(logp, old, adv, mask, random_keys=keys, **kw)
        assert a.selected.sum() == max(int(0.02 * int(mask.sum())), 1)
        assert torch.equal(a.selected, b.selected) and torch.equal(a.loss, b.loss), backend


# ---- KL-Cov ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kl_cov_ratio", [1e-4, 0.05, 1.0])
def test_kl_cov_matches_reference(mode, kl_cov_ratio):
    logp, old, adv, mask, _ = policy_batch(seed=7)
    w = torch.rand(logp.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    for weights in (None, w):
        x = logp.clone().requires_grad_(True)
        out = eo.kl_cov_policy_loss(x, old, adv, mask, kl_cov_ratio=kl_cov_ratio, kl_coef=0.7,
                                    loss_agg_mode=mode, weights=weights)
        xr = logp.double().requires_grad_(True)
        ref = R.kl_cov_policy_loss_ref(xr, old, adv, mask, kl_cov_ratio, 0.7, mode, weights)
        assert torch.equal(out.selected, ref[2])
        assert out.selected.sum() == max(int(kl_cov_ratio * int(mask.sum())), 1)
        assert_close64(out.loss, ref[0])
        assert_close64(out.ppo_kl, ref[1])
        assert_close64(out.selected_frac, ref[3])
        assert_close64(torch.autograd.grad(out.loss, x)[0], torch.autograd.grad(ref[0], xr)[0])


def test_kl_cov_ties_go_to_the_lowest_index():
    # Equal (A, logp) everywhere: every covariance is 0, so the k = 3 chosen are the first 3 valid
    # flat indices.
    logp = torch.full((2, 4), -1.5)
    adv = torch.full((2, 4), 0.5)
    mask = torch.tensor([[False, True, True, True], [True, True, True, True]])
    out = eo.kl_cov_policy_loss(logp, logp - 0.1, adv, mask, kl_cov_ratio=3 / 7)
    assert out.selected.tolist() == [[False, True, True, True], [False, False, False, False]]


def test_kl_cov_empty_mask():
    logp, old, adv, _, _ = policy_batch(seed=8)
    x = logp.clone().requires_grad_(True)
    out = eo.kl_cov_policy_loss(x, old, adv, torch.zeros(logp.shape, dtype=torch.bool))
    assert out.loss.item() == out.ppo_kl.item() == out.selected_frac.item() == 0
    assert not out.selected.any() and (torch.autograd.grad(out.loss, x)[0] == 0).all()


# ---- verl's global batch counts -----------------------------------------------------------------------

GLOBAL_INFO = dict(dp_size=2, batch_num_tokens=400, global_batch_size=12, loss_scale_factor=64)


@pytest.mark.parametrize("mode", MODES)
def test_losses_take_verls_global_batch_counts(mode):
    # verl aggregates each rank's loss matrix with the counts of the global batch (global_batch_info).
    logp, old, adv, mask, keys = policy_batch(seed=12)
    w = torch.rand(logp.shape, generator=torch.Generator().manual_seed(2)) + 0.5
    for name in ("clip", "kl"):
        x = logp.clone().requires_grad_(True)
        xr = logp.double().requires_grad_(True)
        if name == "clip":
            kw = dict(clip_cov_ratio=0.05, clip_cov_lb=0.1, loss_agg_mode=mode, weights=w)
            out = eo.clip_cov_policy_loss(x, old, adv, mask, random_keys=keys, **kw, **GLOBAL_INFO)
            ref = R.clip_cov_policy_loss_ref(xr, old, adv, mask, keys, **kw, **GLOBAL_INFO)
        else:
            kw = dict(kl_cov_ratio=0.05, kl_coef=0.7, loss_agg_mode=mode, weights=w)
            out = eo.kl_cov_policy_loss(x, old, adv, mask, **kw, **GLOBAL_INFO)
            ref = R.kl_cov_policy_loss_ref(xr, old, adv, mask, **kw, **GLOBAL_INFO)
        assert torch.equal(out.selected, ref[2]) and out.selected.any()
        assert_close64(out.loss, ref[0])
        assert_close64(torch.autograd.grad(out.loss, x)[0], torch.autograd.grad(ref[0], xr)[0])
        local = (R.clip_cov_policy_loss_ref(xr, old, adv, mask, keys, **kw) if name == "clip"
                 else R.kl_cov_policy_loss_ref(xr, old, adv, mask, **kw))[0]
        assert not torch.isclose(ref[0], local)  # the counts change the loss: the case has teeth


def test_global_batch_counts_errors():
    logp, old, adv, mask, _ = policy_batch(seed=13)
    with pytest.raises(ValueError, match="^batch_num_tokens:"):
        eo.kl_cov_policy_loss(logp, old, adv, mask, dp_size=2)
    with pytest.raises(ValueError, match="^global_batch_size:"):
        eo.clip_cov_policy_loss(logp, old, adv, mask, dp_size=2, loss_agg_mode="seq-mean-token-mean")
    with pytest.raises(ValueError, match="^dp_size:"):
        eo.kl_cov_policy_loss(logp, old, adv, mask, dp_size=0)
    with pytest.raises(ValueError, match="^dp_size: with process_group"):
        eo.clip_cov_policy_loss(logp, old, adv, mask, dp_size=2, batch_num_tokens=10, process_group=object())


# ---- compile, dtypes, errors -------------------------------------------------------------------------

def test_losses_compile_fullgraph():
    torch._dynamo.reset()
    logp, old, adv, mask, keys = policy_batch(seed=9)

    def fn(logp, old, adv, mask, keys):
        a = eo.clip_cov_policy_loss(logp, old, adv, mask, clip_cov_ratio=0.05, clip_cov_lb=0.1, random_keys=keys)
        b = eo.kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=0.05, loss_agg_mode="seq-mean-token-mean")
        c = eo.agg_loss(logp, mask, "seq-mean-token-sum-norm")
        return a.loss, a.selected, b.loss, b.selected, c, eo.token_covariance(logp, adv, mask)

    compiled = torch.compile(fn, fullgraph=True)
    for m in (mask, mask.float()):  # a 0/1 float mask's check is a device assert inside the graph
        for x, y in zip(compiled(logp, old, adv, m, keys), fn(logp, old, adv, m, keys)):
            torch.testing.assert_close(x, y)
    with pytest.raises(RuntimeError, match="mask: a floating point mask must hold only 0 and 1"):
        compiled(logp, old, adv, mask.float() * 0.5, keys)
    # The global RNG (no generator, no keys) compiles too.
    torch.compile(lambda *a: eo.clip_cov_policy_loss(*a).loss, fullgraph=True)(logp, old, adv, mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_other_dtypes(dtype):
    logp, old, adv, mask, keys = policy_batch(seed=10, dtype=dtype)
    out = eo.kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=0.05)
    ref = R.kl_cov_policy_loss_ref(logp, old, adv, mask, 0.05)
    assert out.loss.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-2
    torch.testing.assert_close(out.loss.double(), ref[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("call, error, name", [
    (lambda l, o, a, m: eo.clip_cov_policy_loss(l, o, a, m[:, :3]), ValueError, "mask"),
    (lambda l, o, a, m: eo.clip_cov_policy_loss(l, o, a, m.long()), TypeError, "mask"),
    (lambda l, o, a, m: eo.clip_cov_policy_loss(l, o[:2], a, m), ValueError, "old_logp"),
    (lambda l, o, a, m: eo.clip_cov_policy_loss(l, o, a.long(), m), TypeError, "advantages"),
    (lambda l, o, a, m: eo.clip_cov_policy_loss(l, o, a, m, clip_cov_ratio=0.0), ValueError, "clip_cov_ratio"),
    (lambda l, o, a, m: eo.clip_cov_policy_loss(l, o, a, m, loss_agg_mode="mean"), ValueError, "loss_agg_mode"),
    (lambda l, o, a, m: eo.clip_cov_policy_loss(l, o, a, m, generator=3), TypeError, "generator"),
    (lambda l, o, a, m: eo.clip_cov_policy_loss(l, o, a, m, random_keys=torch.zeros(2)), TypeError, "random_keys"),
    (lambda l, o, a, m: eo.clip_cov_policy_loss(l, o, a, m, weights=torch.ones(3)), ValueError, "weights"),
    (lambda l, o, a, m: eo.kl_cov_policy_loss(l, o, a, m, kl_cov_ratio=1.5), ValueError, "kl_cov_ratio"),
    (lambda l, o, a, m: eo.kl_cov_policy_loss(l[0], o[0], a[0], m[0]), ValueError, "logp"),
    (lambda l, o, a, m: eo.agg_loss(l, m, "token-mean", dp_size=0), ValueError, "dp_size"),
])
def test_bad_arguments_name_themselves(call, error, name):
    logp, old, adv, mask, _ = policy_batch(B=3, T=6)
    with pytest.raises(error, match=f"^{name}:"):
        call(logp, old, adv, mask)


# ---- the losses on every CPU backend ----------------------------------------------------------------

TOP_K_BACKENDS = ["torch", "cpu"]


@pytest.mark.parametrize("backend", TOP_K_BACKENDS)
def test_losses_on_every_backend(backend):
    # The same selection and loss whichever backend selects, eager and compiled (fullgraph).
    logp, old, adv, mask, keys = policy_batch(B=8, T=300, seed=11)

    def fn(logp, old, adv, mask, keys):
        a = eo.clip_cov_policy_loss(logp, old, adv, mask, clip_cov_ratio=0.05, clip_cov_lb=0.1, random_keys=keys)
        b = eo.kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=0.05)
        return a.loss, a.selected, b.loss, b.selected

    with eo.use_backend("torch"):
        expected = fn(logp, old, adv, mask, keys)
    torch._dynamo.reset()
    with eo.use_backend(backend):
        eager, compiled = fn(logp, old, adv, mask, keys), torch.compile(fn, fullgraph=True)(logp, old, adv, mask, keys)
    assert expected[1].any() and expected[3].any()
    for got, tol in ((eager, 0), (compiled, 1e-6)):  # inductor may sum the loss in another order
        for x, y in zip(got, expected):
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", TOP_K_BACKENDS)
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("padding", ["old_logp", "advantages", "weights", "logp"])
def test_non_finite_padding_gives_zero_gradient(backend, mode, padding):
    """NaN / inf at masked tokens (an inference engine's padding) never reaches the loss or the
    gradient (SPEC §2: masked entries contribute exactly 0), in both losses."""
    logp, old, adv, mask, keys = policy_batch(seed=12)
    weights = torch.rand(logp.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    clean = dict(logp=logp, old_logp=old, advantages=adv, weights=weights)
    dirty = dict(clean, **{padding: torch.where(mask, clean[padding], torch.tensor([float("nan"), float("inf"),
                                                                                    -float("inf")]).repeat(14)[:40])})
    kw = dict(loss_agg_mode=mode)
    with eo.use_backend(backend):
        for loss, extra in ((eo.clip_cov_policy_loss, dict(clip_cov_ratio=0.05, clip_cov_lb=0.1, random_keys=keys)),
                            (eo.kl_cov_policy_loss, dict(kl_cov_ratio=0.05))):
            results = []
            for inputs in (clean, dirty):
                x = inputs["logp"].clone().requires_grad_(True)
                out = loss(x, inputs["old_logp"], inputs["advantages"], mask, weights=inputs["weights"], **kw, **extra)
                results.append((out, torch.autograd.grad(out.loss, x)[0]))
            (out, grad), (dirty_out, dirty_grad) = results
            assert (grad[~mask] == 0).all() and torch.equal(dirty_grad, grad), loss.__name__
            for a, b in zip(out, dirty_out):
                assert torch.equal(a, b), loss.__name__


@pytest.mark.parametrize("backend", TOP_K_BACKENDS)
def test_losses_on_an_empty_batch(backend):
    """A ``[0, T]`` batch (e.g. a data-parallel rank with no sequences) gives the empty-mask
    results: loss, ppo_kl and selected_frac 0, nothing selected."""
    empty = torch.zeros(0, 6)
    mask = torch.zeros(0, 6, dtype=torch.bool)
    with eo.use_backend(backend):
        for loss in (eo.clip_cov_policy_loss, eo.kl_cov_policy_loss):
            out = loss(empty, empty, empty, mask)
            assert out.loss.item() == 0 and out.ppo_kl.item() == 0 and out.selected_frac.item() == 0
            assert out.selected.shape == (0, 6)
