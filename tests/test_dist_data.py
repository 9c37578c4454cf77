"""Data-parallel token statistics (SPEC §3.3, issue 9 item 2) on real gloo process groups of 2 and 4
CPU processes: ``token_covariance``, ``kl_cov_policy_loss``, ``clip_cov_policy_loss``,
``masked_quantile`` and ``peak_entropy_mask`` (``per_sequence=False``), ``EntropyThreshold`` and
``agg_loss`` with global counts, each rank's outputs and gradients against one process on the batch
concatenated in rank order. Uneven ranks (one with no row, one with no valid token), ties across
ranks, k = 1 and k beyond the candidates, every dtype, NaN and -inf padding. Loss inputs are
multiples of 1/16, so every sum is exact and the global means are bit-identical to the
single-process ones: selections then compare exactly. One world checks every case (a world costs
seconds to start)."""
import pytest
import torch
import torch.distributed as dist

import entropy_ops as eo
from dist_common import run_world
from entropy_ops.ops.agg_loss import MODES
from entropy_ops.parallel import data as dp

PER_TOKEN = ("cov", "selected", "grad", "peak")  # outputs compared as the concatenation over ranks


# ---- inputs: one dict of tensors per rank ------------------------------------------------------------

def _loss_inputs(rows, T, seed, dtype=torch.float32, no_valid_rank=None, ties=False):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for r, B in enumerate(rows):
        if ties:  # GRPO-like: one advantage per sequence, few log-prob levels -> few covariances
            adv = (torch.randint(0, 2, (B, 1), generator=gen) * 4 - 2).expand(B, T).double()
            logp = -torch.randint(1, 3, (B, T), generator=gen) / 2.0
        else:
            adv = torch.randint(-12, 13, (B, T), generator=gen) / 4.0
            logp = -torch.randint(0, 48, (B, T), generator=gen) / 16.0
        old = logp + torch.randint(-3, 4, (B, T), generator=gen) / 16.0
        mask = torch.rand(B, T, generator=gen) < 0.8
        if r == no_valid_rank:
            mask[:] = False
        out.append(dict(logp=logp.to(dtype), old=old.to(dtype), adv=adv.to(dtype), mask=mask,
                        weights=(torch.randint(1, 5, (B, T), generator=gen) / 4.0).to(dtype),
                        keys=torch.randint(0, 2**62 if not ties else 3, (B, T), generator=gen)))
    return out


def _padded_with_garbage(inputs):
    """Padding as trainers leave it: -inf and NaN old log-probs, NaN advantages and NaN weights at
    the masked tokens (each rank's, so the global means and the loss must never read them)."""
    out = []
    for t in inputs:
        pad = ~t["mask"]
        old = t["old"].masked_fill(pad, float("-inf"))
        old[:, ::2] = old[:, ::2].masked_fill(pad[:, ::2], float("nan"))
        out.append(dict(t, old=old, adv=t["adv"].masked_fill(pad, float("nan")),
                        weights=t["weights"].masked_fill(pad, float("nan"))))
    return out


def _token_inputs(shapes, seed, dtype=torch.float32, no_valid_rank=None):
    """Entropies on a 1/8 grid (ties), NaN at some valid positions (skipped like masked ones)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for r, shape in enumerate(shapes):
        x = torch.randint(0, 48, shape, generator=gen) / 8.0
        x = torch.where(torch.rand(shape, generator=gen) < 0.05, float("nan"), x)
        mask = torch.rand(shape, generator=gen) < 0.7
        if r == no_valid_rank:
            mask[:] = False
        out.append(dict(x=x.to(dtype), mask=mask))
    return out


def _attained_window(inputs):
    """``(lb, ub)``: two covariances that valid tokens of the concatenated batch take exactly (every
    rank computes the same bits: the means are exact), so a Clip-Cov window with these bounds
    checks that both are strict on the data-parallel path too."""
    cat = _concat(inputs)
    cov = eo.token_covariance(cat["logp"], cat["adv"], cat["mask"])[cat["mask"]].unique()
    return float(cov[len(cov) // 4]), float(cov[3 * len(cov) // 4])


def _cases(rows, T):
    """``(op, kwargs, per-rank tensors)`` for a world whose ranks hold ``rows[r]`` rows."""
    P = len(rows)
    quiet = P - 1  # a rank without any valid token
    base = _loss_inputs(rows, T, seed=P, no_valid_rank=quiet)
    ties = _loss_inputs(rows, T, seed=10 + P, ties=True)
    empty = [dict(t, mask=torch.zeros_like(t["mask"])) for t in base]
    cases = [("cov", {}, base), ("cov", {}, ties), ("cov", {}, empty)]
    for ratio in (2e-4, 0.05, 0.3, 1.0):  # k = 1, a cut inside the ties, all valid tokens
        cases += [("kl", dict(kl_cov_ratio=ratio), base), ("kl", dict(kl_cov_ratio=ratio), ties)]
        cases += [("clip", dict(clip_cov_ratio=ratio, clip_ratio=0.05), base),
                  ("clip", dict(clip_cov_ratio=ratio, clip_cov_lb=-1.0, clip_cov_ub=5.0), ties)]
    cases += [("kl", dict(kl_cov_ratio=0.1, loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=7), base),
              ("clip", dict(clip_cov_ratio=0.1, loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=7), base)]
    garbage = _padded_with_garbage(base)
    cases.append(("cov", {}, garbage))
    for mode in ("token-mean", "seq-mean-token-mean"):
        cases += [("kl", dict(kl_cov_ratio=0.3, loss_agg_mode=mode, weighted=True), garbage),
                  ("clip", dict(clip_cov_ratio=0.3, loss_agg_mode=mode, weighted=True), garbage)]
    lb, ub = _attained_window(base)
    cases.append(("clip", dict(clip_cov_ratio=1.0, clip_cov_lb=lb, clip_cov_ub=ub), base))
    for mode in MODES:
        cases += [("kl", dict(kl_cov_ratio=0.1, loss_agg_mode=mode, weighted=True), base),
                  ("clip", dict(clip_cov_ratio=0.1, loss_agg_mode=mode, weighted=True), base),
                  ("agg", dict(mode=mode), base)]
    for dtype in (torch.bfloat16, torch.float16, torch.float64):  # 2, 2 and 6 histogram rounds
        other = _loss_inputs(rows, T, seed=20 + P, dtype=dtype, no_valid_rank=0)
        cases += [("kl", dict(kl_cov_ratio=0.2), other), ("clip", dict(clip_cov_ratio=0.5), other)]
    cases += [("kl", {}, empty), ("clip", {}, empty),
              ("clip", dict(clip_cov_ratio=0.2, seed=7), base),   # keys drawn from a generator
              ("clip", dict(clip_cov_ratio=0.2, global_seed=8), base)]  # ... from the global RNG

    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        rows_in = _token_inputs([(b, T) for b in rows], seed=30 + P, dtype=dtype, no_valid_rank=quiet)
        for q in (0.0, 0.3, 0.5, 0.95, 1.0, torch.tensor([0.1, 0.5, 0.9])):
            cases.append(("quantile", dict(q=q), rows_in))
        cases.append(("peak", dict(q=0.8), rows_in))
    flat = _token_inputs([(3 * b + r,) for r, b in enumerate(rows)], seed=40 + P)  # packed [N_r]
    cases += [("quantile", dict(q=0.25), flat), ("peak", dict(q=0.5), flat),
              ("peak", dict(q=0.5, per_sequence=True), _token_inputs([(b, T) for b in rows], seed=1)),
              ("quantile", dict(q=0.5), [dict(t, mask=torch.zeros_like(t["mask"])) for t in flat])]
    steps = [_token_inputs([(b, T) for b in rows], seed=50 + s) for s in range(3)]
    steps.insert(1, [dict(t, mask=torch.zeros_like(t["mask"])) for t in steps[0]])  # no valid token
    cases.append(("threshold", {}, [dict(steps=[s[r] for s in steps]) for r in range(P)]))
    return cases


# ---- one call, the same code with and without a group ---------------------------------------------------

def _call(op, kw, t, group):
    """The outputs of one case on this rank's tensors ``t`` (the concatenation when ``group`` is None)."""
    kw = dict(kw)
    if op == "cov":
        return dict(cov=eo.token_covariance(t["logp"], t["adv"], t["mask"], process_group=group))
    if op in ("kl", "clip"):
        logp = t["logp"].clone().requires_grad_(True)
        weights = t["weights"] if kw.pop("weighted", False) else None
        if op == "kl":
            out = eo.kl_cov_policy_loss(logp, t["old"], t["adv"], t["mask"], weights=weights, process_group=group,
                                        **kw)
        else:
            if "seed" in kw:
                kw["generator"] = torch.Generator().manual_seed(kw.pop("seed"))
            elif "global_seed" in kw:
                torch.manual_seed(kw.pop("global_seed"))
            else:
                kw["random_keys"] = t["keys"]
            out = eo.clip_cov_policy_loss(logp, t["old"], t["adv"], t["mask"], weights=weights, process_group=group,
                                          **kw)
        (grad,) = torch.autograd.grad(out.loss, logp)
        return dict(loss=out.loss.detach(), ppo_kl=out.ppo_kl, selected=out.selected, frac=out.selected_frac,
                    grad=grad)
    if op == "agg":  # verl's DP aggregation: dp_size and the global counts
        x = (t["logp"] * 3 + t["adv"]).requires_grad_(True)
        extra = {}
        if group is not None:
            n_tokens, n_seqs = dp.global_token_counts(t["mask"], group)
            extra = dict(dp_size=dist.get_world_size(group), batch_num_tokens=n_tokens, global_batch_size=n_seqs)
        share = eo.agg_loss(x, t["mask"], kw["mode"], **extra)
        (grad,) = torch.autograd.grad(share, x)
        return dict(share=share.detach(), grad=grad)
    if op == "quantile":
        return dict(quantile=eo.masked_quantile(t["x"], t["mask"], kw["q"], per_sequence=False, process_group=group))
    if op == "peak":
        return dict(peak=eo.peak_entropy_mask(t["x"], t["mask"], kw["q"], per_sequence=kw.get("per_sequence", False),
                                              process_group=group))
    module = eo.EntropyThreshold(q=0.9, momentum=0.5, process_group=group)
    values = torch.stack([module(s["x"], s["mask"]) for s in t["steps"]])
    return dict(values=values, state=torch.stack([module.value, module.initialized.double()]))


def _world(rank, world_size, cases):
    """Each case's outputs on this rank, and how many collectives it ran (every one of them goes
    through ``parallel.data._all_reduce``)."""
    calls = []
    all_reduce = dp._all_reduce
    dp._all_reduce = lambda *a: calls.append(1) or all_reduce(*a)
    out = []
    for op, kw, tensors in cases:
        calls.clear()
        out.append(dict(_call(op, kw, tensors[rank], dist.group.WORLD), collectives=len(calls)))
    return out


def _expected_collectives(op, kw, t):
    """The documented count: packed sums 1, selection rounds by key width, ties 1, loss 1, values 1."""
    rounds = {2: 2, 4: 3, 8: 6}
    if op in ("cov", "agg"):
        return 1
    if op == "kl":
        return 3 + rounds[t["logp"].element_size()]
    if op == "clip":
        return 3 + rounds[8]  # int64 random keys
    if op == "threshold":  # per training step: the median of float64 per-sequence quantiles
        return len(t["steps"]) * (1 + rounds[8])
    return 0 if kw.get("per_sequence") else 1 + rounds[t["x"].element_size()]


def _concat(tensors):
    if "steps" in tensors[0]:
        return dict(steps=[_concat([t["steps"][s] for t in tensors]) for s in range(len(tensors[0]["steps"]))])
    return {name: torch.cat([t[name] for t in tensors]) for name in tensors[0]}


def _same(got, want, what, exact):
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got, want, equal_nan=True, **tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("rows", [[3, 2], [2, 0, 4, 1]], ids=["2ranks", "4ranks"])
def test_each_rank_equals_one_process_on_the_concatenated_batch(rows):
    P = len(rows)
    cases = _cases(rows, T=24)
    per_rank = run_world(_world, P, cases)
    for i, (op, kw, tensors) in enumerate(cases):
        want = _call(op, kw, _concat(tensors), None)
        if op in ("cov", "kl", "clip"):  # valid tokens are finite: NaN on both sides would compare equal
            assert all(w.isfinite().all() for w in want.values() if w.is_floating_point()), f"case {i} {op} {kw}"
        expected = _expected_collectives(op, kw, tensors[0])
        assert [per_rank[r][i]["collectives"] for r in range(P)] == [expected] * P, f"case {i} {op} {kw}"
        for name, w in want.items():
            what = f"case {i} {op} {kw} {name}"
            got = [per_rank[r][i][name] for r in range(P)]
            if name in PER_TOKEN:
                # The loss gradient of a rank is world_size x that of its share (DDP / FSDP average it).
                _same(torch.cat(got), w * P if name == "grad" else w, what, exact=op != "agg")
            elif name == "share":  # agg_loss with dp_size: the ranks' values average to the loss
                _same(sum(got) / P, w, what, exact=False)
            else:
                for r in range(P):
                    _same(got[r], w, f"{what} rank {r}", exact=name not in ("loss", "ppo_kl"))
        if op in ("kl", "clip") and kw.get("clip_cov_ratio", kw.get("kl_cov_ratio")) == 1.0:
            assert want["selected"].any()  # k beyond the candidates: all of them, a real selection


def _compiled_world(rank, world_size, tensors):
    group = dist.group.WORLD
    t = tensors[rank]
    kl = torch.compile(lambda *a: eo.kl_cov_policy_loss(*a, kl_cov_ratio=0.2, process_group=group), fullgraph=True)
    clip_kw = dict(clip_cov_ratio=0.3, clip_cov_lb=-1.0)  # every unclipped valid token a candidate
    clip = torch.compile(lambda *a, **k: eo.clip_cov_policy_loss(*a, **clip_kw, process_group=group, **k),
                         fullgraph=True)
    quantile = torch.compile(lambda x, m: eo.masked_quantile(x, m, 0.7, per_sequence=False, process_group=group),
                             fullgraph=True)
    args = (t["logp"], t["old"], t["adv"], t["mask"])
    # Keys from the global RNG: a seed drawn in the graph, the offset summed on the device. Inductor
    # draws random numbers its own way unless told to call torch's, which the eager run uses.
    with torch._inductor.config.patch(fallback_random=True):
        torch.manual_seed(11)
        clip_rng = clip(*args).selected
    return dict(kl=kl(*args).selected, kl_eager=_call("kl", dict(kl_cov_ratio=0.2), t, group)["selected"],
                clip=clip(*args, random_keys=t["keys"]).selected,
                clip_eager=_call("clip", clip_kw, t, group)["selected"],
                clip_rng=clip_rng, clip_rng_eager=_call("clip", dict(clip_kw, global_seed=11), t, group)["selected"],
                quantile=quantile(t["logp"], t["mask"]),
                quantile_eager=eo.masked_quantile(t["logp"], t["mask"], 0.7, per_sequence=False, process_group=group))


@pytest.mark.slow
def test_data_parallel_paths_compile_fullgraph():
    out = run_world(_compiled_world, 2, _loss_inputs([3, 2], 16, seed=5, ties=True))
    for rank in out:
        for name in ("kl", "clip", "clip_rng", "quantile"):
            assert torch.equal(rank[name], rank[f"{name}_eager"]), name
    for name in ("kl", "clip", "clip_rng"):
        assert any(rank[name].any() for rank in out), name  # a real choice, not an empty one


def test_process_group_must_be_a_group():
    logp = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="^process_group:"):
        eo.kl_cov_policy_loss(logp, logp, logp, mask, process_group="world")
    for per_sequence in (False, True):
        with pytest.raises(TypeError, match="^process_group:"):
            eo.peak_entropy_mask(logp, mask, 0.5, per_sequence=per_sequence, process_group=0)
    with pytest.raises(TypeError, match="^process_group:"):
        eo.EntropyThreshold(process_group=object())


def _sync_free_calls(t, x):
    return {"kl": lambda g: _call("kl", dict(kl_cov_ratio=0.2, loss_agg_mode="seq-mean-token-mean"), t, g),
            "clip": lambda g: _call("clip", dict(clip_cov_ratio=0.3, clip_cov_lb=-1.0, weighted=True), t, g),
            "clip, global RNG": lambda g: _call("clip", dict(clip_cov_ratio=0.3, clip_cov_lb=-1.0, global_seed=8), t, g),
            "clip, generator": lambda g: _call("clip", dict(clip_cov_ratio=0.3, clip_cov_lb=-1.0, seed=7), t, g),
            "cov": lambda g: _call("cov", {}, t, g),
            "agg": lambda g: _call("agg", dict(mode="seq-mean-token-sum"), t, g),
            "quantile": lambda g: _call("quantile", dict(q=torch.tensor([0.2, 0.9], device=x["x"].device)), x, g),
            "peak": lambda g: _call("peak", dict(q=0.8), x, g)}


def _sync_free_world(rank, world_size, inputs, tokens):
    from host_sync import gpu_code_paths, no_host_sync

    group = dist.group.WORLD
    for name, call in _sync_free_calls(inputs[rank], tokens[rank]).items():
        with gpu_code_paths():
            want = call(group)
        with no_host_sync():
            got = call(group)
        for key in want:
            _same(got[key], want[key], f"{name}: {key} under the host-sync detector", exact=True)


def test_data_parallel_paths_are_free_of_host_syncs():
    """Every op with a group (gloo, 2 ranks, CPU tensors down the GPU's code paths: host_sync.py)
    makes no host sync, and gives the same values as outside the detector."""
    run_world(_sync_free_world, 2, _loss_inputs([3, 2], 16, seed=3, ties=True),
              _token_inputs([(3, 16), (2, 16)], seed=4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_world_of_one_on_nccl_is_sync_free():
    """The CUDA path of every op with a group, under sync-debug mode "error", equals the call
    without a group (a world of one holds the whole batch)."""
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        t = {k: v.cuda() for k, v in _loss_inputs([4], 32, seed=3, ties=True)[0].items()}
        x = _token_inputs([(4, 32)], seed=4)[0]
        x = {k: v.cuda() for k, v in x.items()}
        calls = [lambda g: _call("kl", dict(kl_cov_ratio=0.2), t, g),
                 lambda g: _call("clip", dict(clip_cov_ratio=0.3, clip_cov_lb=-1.0), t, g),
                 lambda g: _call("clip", dict(clip_cov_ratio=0.3, clip_cov_lb=-1.0, global_seed=8), t, g),  # RNG keys
                 lambda g: _call("cov", {}, t, g),
                 lambda g: _call("quantile", dict(q=torch.tensor([0.2, 0.9], device="cuda")), x, g),
                 lambda g: _call("peak", dict(q=0.8), x, g)]
        for call in calls:
            call(dist.group.WORLD)  # warm-up: NCCL creates its communicator on the first collective
            torch.cuda.set_sync_debug_mode("error")
            try:
                got = call(dist.group.WORLD)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            for name, want in call(None).items():
                _same(got[name].cpu(), want.cpu(), name, exact=name not in ("loss", "ppo_kl"))
    finally:
        dist.destroy_process_group()
