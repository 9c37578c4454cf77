"""Vocab-parallel row ops (SPEC §3.3) in real gloo process groups of 2 and 4 CPU processes.

Each rank holds a vocab shard of the same full logits (even Megatron shards, and uneven ones with
``vocab_start``) and runs every op with ``process_group``; the parent then checks that every rank
got the same result, that the result is as close to the float64 reference as the single-process
op on the full tensor (SPEC §2's bound: ``|ours - ref| <= 2 |single - ref| + 1e-5``) and that the
gradient shards, put side by side, equal the gradient of the full row. Cases: fp32 and bf16; rows
shifted by 1e4, ``-inf`` masks, a shard that is all ``-inf`` in a row, NaN rows; per-row
temperature; a row mask; ignored labels; labels that all sit in one shard (the other ranks own
none); the cpu and torch backends. A world costs seconds, so one world runs all cases.
"""
import os

import pytest
import torch

import entropy_ops as eo
from conftest import assert_same_bits
from dist_common import run_world
from dist_vocab_cases import (
    BACKENDS, N, V, _emulated_cuda_worker, _grad, _inputs, _linear_cases, _linear_grads, _linear_inputs,
    _nccl_worker, _row_cases, _sync_free, _temperature, _triton_worker, _worker, bad_row_grads, bad_row_inputs,
)
from entropy_ops import reference as R
from gpu_common import EMULATED
from selective_common import clear_of_min_p_cut, clear_of_top_p_cut, tied_rows, with_clear_cuts



@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def world(request):
    return request.param, run_world(_worker, request.param)


def _same_on_every_rank(per_rank, what):
    for r, value in enumerate(per_rank[1:], start=1):
        torch.testing.assert_close(value, per_rank[0], rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m: f"{what}: rank {r} differs from rank 0: {m}")


def _as_good(ours, single, ref, what, rows=None):
    """SPEC §2's bound with the single-process op as the yardstick; NaN/inf patterns as the reference."""
    if rows is not None:
        ours, single, ref = ours[rows], single[rows], ref[rows]
    ours, single, ref = ours.double(), single.double(), ref.double()
    assert torch.equal(torch.isnan(ours), torch.isnan(ref)), f"{what}: NaN pattern differs from the reference"
    inf = torch.isinf(ref)
    assert torch.equal(ours[inf], ref[inf]), f"{what}: infinities differ from the reference"
    finite = torch.isfinite(ref)
    err = (ours - ref)[finite].abs().max().item() if finite.any() else 0.0
    bound = 2 * ((single - ref)[finite].abs().max().item() if finite.any() else 0.0) + 1e-5
    assert err <= bound, f"{what}: error {err:.3e} vs the float64 reference > bound {bound:.3e}"


def _full_grad(per_rank):
    return torch.cat(per_rank, dim=-1)


def _ref_grad(fn, x, weights):
    x = x.detach().double().requires_grad_(True)
    out = fn(x)
    out = out if isinstance(out, tuple) else (out,)
    loss = sum((torch.where(torch.isneginf(o), 0, w.double()) * torch.where(torch.isneginf(o), 0, o)).sum()
               for w, o in zip(weights, out) if w is not None)
    return torch.autograd.grad(loss, x)[0]


def _check_entropy_family(results, world_size, backends=BACKENDS):
    for backend in backends:
        for seed, dtype, uneven, temp_kind in _row_cases():
            per_rank = [r[(backend, seed)] for r in results]
            inp = _inputs(dtype, seed)
            x, mask, bad, (w_h, w_l, w_mixed) = inp["x"], inp["mask"], inp["bad"], inp["weights"]
            t = _temperature(temp_kind, inp)
            name = f"{backend} {dtype} {'uneven' if uneven else 'even'} T={temp_kind} world={world_size}"
            good = ~bad & mask
            with eo.use_backend(backend):
                outs, grad = zip(*[r["entropy"] for r in per_rank])
                _same_on_every_rank([o[0] for o in outs], f"entropy {name}")
                single, single_grad = _grad(lambda v: eo.entropy(v, t, mask=mask), x, (w_h,))
                _as_good(outs[0][0], single[0], R.entropy_ref(x, t, mask=mask), f"entropy {name}")
                ref_grad = _ref_grad(lambda v: R.entropy_ref(v, t, mask=mask), x, (w_h,))
                _as_good(_full_grad(grad), single_grad, ref_grad, f"entropy grad {name}", good)
                for labels in ("y", "y_last"):
                    y = inp[labels]
                    for mode, weights in (("", (w_l, w_h)), ("_logp_only", (w_l, None)), ("_mixed", (w_l, w_mixed))):
                        key = f"lpe_{labels}{mode}"
                        outs, grad = zip(*[r[key] for r in per_rank])
                        for k in range(2):
                            _same_on_every_rank([o[k] for o in outs], f"{key} {name}")
                        fn = lambda v: eo.logprobs_and_entropy(v, y, t, mask=mask)  # noqa: E731
                        single, single_grad = _grad(fn, x, weights)
                        ref = R.logprobs_and_entropy_ref(x, y, t, mask=mask)
                        for k, what in enumerate(("logp", "entropy")):
                            _as_good(outs[0][k], single[k], ref[k], f"{key} {what} {name}")
                        ref_fn = lambda v: R.logprobs_and_entropy_ref(v, y, t, mask=mask)  # noqa: E731
                        _as_good(_full_grad(grad), single_grad, _ref_grad(ref_fn, x, weights),
                                 f"{key} grad {name}", good)
                    stats = [r[f"stats_{labels}"] for r in per_rank]
                    single = eo.token_stats(x, y, t, mask=mask)
                    ref = R.token_stats_ref(x, y, t, mask=mask)
                    # self_certainty's mean_j z_j of a shard mostly finfo.min-masked overflows
                    # float32 at T < 1 (README: known limits of the vocab-parallel token_stats).
                    finite_sc = torch.arange(len(x)) != inp["finfo_row"]
                    for k, field in enumerate(single._fields):
                        _same_on_every_rank([s[k] for s in stats], f"token_stats.{field} {name}")
                        rows = finite_sc if field == "self_certainty" else None
                        _as_good(stats[0][k], single[k], ref[k], f"token_stats.{field} {name}", rows)


def _check_selective(results, world_size):
    for dtype in (torch.float32, torch.bfloat16):
        for uneven in (False, True):
            per_rank = [r[(dtype, uneven)] for r in results]
            inp = _inputs(dtype, seed=100)
            x = with_clear_cuts(inp["x"].float(), ["normal"] * N, seed=3).to(dtype)
            mask, w = inp["mask"], inp["weights"][:1]
            name = f"{dtype} {'uneven' if uneven else 'even'} world={world_size}"
            for top_p in (0.5, 0.8, 1.0):
                clear = clear_of_top_p_cut(x, top_p, 0.9) & mask
                assert clear.sum() >= N // 2, "too few rows clear of the cut to test"
                outs, grad = zip(*[r[f"top_p_{top_p}"] for r in per_rank])
                _same_on_every_rank([o[0] for o in outs], f"top_p_entropy {top_p} {name}")
                single, single_grad = _grad(lambda v: eo.top_p_entropy(v, top_p, 0.9, mask=mask), x, w)
                ref = R.top_p_entropy_ref(x, top_p, 0.9, mask=mask)
                _as_good(outs[0][0], single[0], ref, f"top_p_entropy {top_p} {name}", clear)
                ref_grad = _ref_grad(lambda v: R.top_p_entropy_ref(v, top_p, 0.9, mask=mask), x, w)
                _as_good(_full_grad(grad), single_grad, ref_grad, f"top_p grad {top_p} {name}", clear)
                for k, inclusive in enumerate((True, False)):
                    ours = _full_grad([r[f"mask_{top_p}"][k] for r in per_rank])
                    single = eo.top_p_mask(x, top_p, 0.9, inclusive, mask=mask)
                    assert torch.equal(ours[clear], single[clear]), f"top_p_mask {top_p} {inclusive} {name}"
                    assert torch.equal(ours[~mask], single[~mask])
            for min_p in (0.0, 0.05):
                clear = clear_of_min_p_cut(x, min_p, 0.9) & mask
                outs, grad = zip(*[r[f"min_p_{min_p}"] for r in per_rank])
                _same_on_every_rank([o[0] for o in outs], f"min_p {min_p} {name}")
                fn = lambda v: eo.min_p_logprobs(v, inp["y"], min_p, 0.9, mask=mask)  # noqa: E731
                single, single_grad = _grad(fn, x, w)
                ref_fn = lambda v: R.min_p_logprobs_ref(v, inp["y"], min_p, 0.9, mask=mask)  # noqa: E731
                _as_good(outs[0][0], single[0], ref_fn(x), f"min_p {min_p} {name}", clear)
                _as_good(_full_grad(grad), single_grad, _ref_grad(ref_fn, x, w), f"min_p grad {min_p} {name}", clear)
            tied, _ = tied_rows(V, dtype, seed=5)
            for k, inclusive in enumerate((True, False)):
                ours = _full_grad([r["tied"][k] for r in per_rank])
                assert torch.equal(ours, eo.top_p_mask(tied, 0.3, 1.0, inclusive)), f"tied top_p_mask {inclusive} {name}"
                assert torch.equal(ours, R.top_p_mask_ref(tied, 0.3, 1.0, inclusive))
            _same_on_every_rank([r["tied_h"] for r in per_rank], f"tied top_p_entropy {name}")
            _as_good(per_rank[0]["tied_h"], eo.top_p_entropy(tied, 0.3), R.top_p_entropy_ref(tied, 0.3),
                     f"tied top_p_entropy {name}")


def test_entropy_family_matches_single_process(world):
    world_size, results = world
    _check_entropy_family([r["entropy"] for r in results], world_size)


def test_selective_ops_match_single_process(world):
    world_size, results = world
    _check_selective([r["selective"] for r in results], world_size)


def test_group_of_one_rank(world):
    _, results = world
    _check_entropy_family([results[0]["solo"]["entropy"]], 1)
    _check_selective([results[0]["solo"]["selective"]], 1)


def test_shards_on_a_grid_are_read_in_place_with_the_same_bits(world):
    """A shard whose leading dims do not collapse (``logits[:, :-1]``, a transposed ``[T, B, V_r]``)
    is read where it lies, as by the single-process ops: the kernels of the entropy family and
    token_stats read the view's own memory (no copy of the shard, forward or backward), and every
    op gives the bits of the same rows packed, values and gradients."""
    _, results = world
    for rank, result in enumerate(results):
        for (backend, layout), (outs, storages, storage) in result["grid"].items():
            where = f"rank {rank}, {backend}, {layout} layout"
            assert {name for name, _ in storages} >= {"entropy", "top_p_entropy_bwd", "token_stats"}, where
            for name, ptr in storages:
                assert ptr == storage, f"{where}: the {name} kernel read a copy of the shard"
            base, _, _ = result["grid"][(backend, "contiguous")]
            for op, values in outs.items():
                for i, (a, b) in enumerate(zip(values, base[op])):
                    assert_same_bits(a, b, f"{where}: {op} output {i}")


def test_linear_matches_single_process(world):
    """linear_logprobs_and_entropy with the head sharded over the vocab: logp and H on every rank,
    the full grad_hidden on every rank, and the grad_weight / grad_bias shards side by side."""
    world_size, results = world
    _check_linear(results, world_size)


def _check_linear(results, world_size):
    for case in _linear_cases():
        dtype, uneven, labels, scale, softcap = case
        inp = _linear_inputs(dtype)
        kw = dict(mask=inp["mask"], logit_scale=scale, softcap=softcap)
        name = f"linear {case} world={world_size}"
        per_rank = [r["linear"][case] for r in results]
        single = _linear_grads(lambda h, w, b: eo.linear_logprobs_and_entropy(
            h, w, inp[labels], b, inp["temperature"], **kw), inp["hidden"], inp["weight"], inp["bias"],
            inp["weights"][1::-1])
        ref = _linear_grads(lambda h, w, b: R.linear_logprobs_and_entropy_ref(
            h, w, inp[labels], b, inp["temperature"], **kw), *(inp[k].double() for k in ("hidden", "weight", "bias")),
            [w.double() for w in inp["weights"][1::-1]])
        for k, what in enumerate(("logp", "entropy", "grad_hidden")):
            _same_on_every_rank([r[k] for r in per_rank], f"{name} {what}")
            _as_good(per_rank[0][k], single[k], ref[k], f"{name} {what}")
        for k, what in ((3, "grad_weight"), (4, "grad_bias")):
            _as_good(torch.cat([r[k] for r in per_rank]), single[k], ref[k], f"{name} {what}")


def test_bad_rows_get_nan_gradients_on_every_shard(world):
    """SPEC §2 (tests/entropy_common.py::check_bad_rows_get_nan_gradients): a row that is bad on some
    ranks only (or all -inf) has a NaN gradient on every shard where its upstream gradient is
    nonzero, as the single-process op; the shards without mass in that row and the label entries
    used to get a silent 0 (and the label entry its one-hot 1 / T); min-p, a 0 when the label was
    not kept. A zero upstream, or an ignored label, still gives exactly 0."""
    world_size, results = world
    x, y, w_logp, w_h = bad_row_inputs(world_size)
    single = bad_row_grads(x, y, w_logp, w_h)
    for key, want in single.items():
        got = _full_grad([r["bad_rows"][key] for r in results])
        assert torch.isnan(want[:4]).all() and (want[[4, 6]] == 0).all(), key  # the single-process contract
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True,
                                   msg=lambda m: f"{key} world={world_size}: {m}")


def test_layout_changes_on_some_ranks_only(world):
    """A rank whose own shard did not change still joins the layout check of the others (it used
    to skip it from a cache, and the group hung): the new uneven layout gives the full row's
    entropy; an invalid one raises on every rank."""
    _, results = world
    full = results[0]["layout"]["full_b"]
    for rank, r in enumerate(results):
        torch.testing.assert_close(r["layout"]["h_b"], eo.entropy(full), rtol=1e-6, atol=1e-6)
        assert r["layout"]["error"] is not None and "uneven" in r["layout"]["error"], (rank, r["layout"]["error"])


def test_empty_batches_run_forward_and_backward(world):
    _, results = world
    for rank, r in enumerate(results):
        assert len(r["empty"]) == 2 * 2 * 6
        for (backend, lead, name), got in r["empty"].items():
            assert not isinstance(got, str), f"rank {rank} {backend} {lead} {name}: {got}"
            shapes, grads = got
            k = (2,) if name == "linear_k" else ()
            expected = {"logprobs_and_entropy": [lead, lead], "linear": [lead, lead],
                        "linear_k": [lead + k, lead]}.get(name, [lead])
            assert shapes == expected, (rank, backend, lead, name, shapes)
            leaves = [lead + (4,), (5, 4)] if name.startswith("linear") else [lead + (5,)]
            assert grads == leaves, (rank, backend, lead, name, grads)


def test_bad_layouts_and_arguments_raise_on_every_rank(world):
    world_size, results = world
    expected = {
        "uneven_without_start": "vocab_start: the vocab shards are uneven",
        "not_a_tiling": "do not tile [0, V)",
        "inplace": "inplace_backward: not supported with process_group",
        "label_out_of_range": f"labels: every label must be in [0, {4 * world_size})",
    }
    for rank, r in enumerate(results):
        for name, phrase in expected.items():
            assert r["errors"][name] is not None, f"rank {rank}: {name} did not raise"
            assert phrase in r["errors"][name], f"rank {rank}: {name}: {r['errors'][name]}"


def test_a_hung_world_fails_instead_of_stalling():
    from dist_vocab_cases import _sleeper
    with pytest.raises(TimeoutError, match="did not finish"):
        run_world(_sleeper, 2, timeout=5)


def test_bad_arguments_without_a_group():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="vocab_start: only meaningful with process_group"):
        eo.entropy(x, vocab_start=0)
    with pytest.raises(TypeError, match="process_group: expected a torch.distributed ProcessGroup"):
        eo.token_stats(x, process_group="tp")
    with pytest.raises(TypeError, match="vocab_start: expected an int"):
        eo.top_p_entropy(x, process_group=object(), vocab_start=1.5)
    with pytest.raises(ValueError, match="vocab_start: must be >= 0"):
        eo.min_p_logprobs(x, torch.zeros(2, dtype=torch.long), process_group=object(), vocab_start=-1)


def test_vocab_parallel_paths_are_free_of_host_syncs():
    """Every vocab-parallel op, forward and backward, on the cpu and torch backends in a gloo world
    of 2 (uneven shards), after its first call: no host sync (host_sync.py), same bits."""
    run_world(_sync_free, 2)


@pytest.mark.triton_interp
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 at start-up")
def test_triton_backend_under_the_interpreter():
    """The Triton row kernels (entropy forward, top_p_entropy backward with the merged state) in a
    world of 2; the children inherit TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    _check_entropy_family(run_world(_triton_worker, 2), 2, ("triton",))


@pytest.mark.gpu
@pytest.mark.skipif(not EMULATED, reason="runs on the CUDA emulator (on a GPU: test_nccl_group_of_one_on_gpu)")
def test_cuda_backend_on_the_emulator():
    """The cuda row kernels with the merged state of a world of 2 (entropy family, top-p, min-p,
    the fused linear head), compiled for the CPU by the CUDA emulator: `make test` runs this in its
    `-m gpu` stage."""
    results = run_world(_emulated_cuda_worker, 2)
    _check_entropy_family([r["entropy"] for r in results], 2, ("cuda",))
    _check_selective([r["selective"] for r in results], 2)
    _check_linear(results, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_nccl_group_of_one_on_gpu():
    """SPEC §3.3 on a lent GPU: the vocab-parallel path (merged state into the GPU row kernels) on a
    one-rank NCCL group equals the single-process op within the single-process op's own bound."""
    (results,) = run_world(_nccl_worker, 1)
    assert results, "no GPU backend available"
    for (backend, seed), res in results.items():
        _, dtype, _, temp_kind = _row_cases()[seed]
        inp = _inputs(dtype, seed)
        t = _temperature(temp_kind, inp)
        ref = R.logprobs_and_entropy_ref(inp["x"], inp["y"], t, mask=inp["mask"])
        ref_grad = _ref_grad(lambda v: R.logprobs_and_entropy_ref(v, inp["y"], t, mask=inp["mask"]), inp["x"],
                             inp["weights"][1::-1])
        ref_stats = R.token_stats_ref(inp["x"], inp["y"], t, mask=inp["mask"])
        good = ~inp["bad"] & inp["mask"]
        name = f"{backend} {dtype} T={temp_kind}"
        for k, what in enumerate(("logp", "entropy")):
            _as_good(res["group"][k], res["single"][k], ref[k], f"nccl {what} {name}")
        _as_good(res["group"][2], res["single"][2], ref_grad, f"nccl grad {name}", good)
        for k, field in enumerate(ref_stats._fields):
            _as_good(res["group"][3 + k], res["single"][3 + k], ref_stats[k], f"nccl token_stats.{field} {name}")
