"""Vocab-parallel row ops (SPEC §3.3) when the ranks disagree or an input is unusual, in a real gloo
group of 2 CPU processes: arguments that differ between ranks (N, dtype, temperature, top_p, the
op, mask presence, the linear head's D) and an empty shard raise the same error on every rank,
where they used to hang the group, abort gloo or give a wrong value; double backward raises; a
frozen LM head computes no weight gradient; token_stats of float64 rows with a finfo.min-masked
shard; top_p_entropy's gradient under torch.compile equals the eager one."""
import pytest
import torch

import entropy_ops as eo
from dist_common import run_world
from dist_guard_cases import V, _full, _guard_worker

WORLD = 2


@pytest.fixture(scope="module")
def results():
    return run_world(_guard_worker, WORLD)


@pytest.mark.parametrize("name, phrase", [
    ("rows", "disagree on the number of rows N"),
    ("dtype", "disagree on the dtype"),
    ("temperature", "disagree on the scalar temperature"),
    ("top_p", "disagree on the op's scalar arguments"),
    ("op", "disagree on the op"),
    ("mask", "disagree on whether a row mask is passed"),
    ("hidden_size", "disagree on the op's scalar arguments (top_p, min_p, ignore_index; the linear head's D"),
    ("empty_shard", "rank 1's vocab shard is empty"),
    ("empty_shard_linear", "rank 1's vocab shard is empty"),
])
def test_disagreeing_ranks_raise_on_every_rank(results, name, phrase):
    for rank, r in enumerate(results):
        message = r["disagree"][name]
        assert message is not None and phrase in message, f"rank {rank}: {name}: {message}"
    single = eo.entropy(_full())
    for r in results:  # the group still works after the errors
        torch.testing.assert_close(r["disagree"]["after"], single, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["entropy", "logprobs_and_entropy", "top_p_entropy", "min_p_logprobs", "linear"])
def test_double_backward_raises(results, op):
    for rank, r in enumerate(results):
        message = r["double"][op]
        assert message is not None and "entropy_ops: double backward through" in message, \
            f"rank {rank}: {op}: {message}"


def test_frozen_head_computes_no_weight_gradient(results):
    for rank, r in enumerate(results):
        h_grad, w_grad, b_grad, products = r["frozen"][False]
        h_frozen, w_frozen, b_frozen, products_frozen = r["frozen"][True]
        assert w_grad is not None and b_grad is not None and products == 1, (rank, products)
        assert w_frozen is None and b_frozen is None and products_frozen == 0, (rank, products_frozen)
        assert torch.equal(h_frozen, h_grad), f"rank {rank}: grad_hidden changed with a frozen head"


def test_token_stats_of_float64_rows_with_a_finfo_masked_shard(results):
    x = _full(5, dtype=torch.float64)
    x[:2, : V // WORLD] = torch.finfo(torch.float64).min
    single = eo.token_stats(x, _full(6).argmax(-1), 0.5)
    for rank, r in enumerate(results):
        for field in ("entropy", "varentropy", "entropy_drift", "collision", "logp", "lse", "max_logp"):
            ours, want = getattr(r["finfo_stats"], field), getattr(single, field)
            assert not ours.isnan().any(), f"rank {rank}: token_stats.{field} is NaN: {ours}"
            torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12, msg=lambda m: f"{field}: {m}")


def test_compiled_top_p_gradient_equals_eager(results):
    for rank, r in enumerate(results):
        grads = r["compiled_top_p"]
        assert torch.equal(grads["compiled"], grads["eager"]), (
            f"rank {rank}: max diff {(grads['compiled'] - grads['eager']).abs().max().item():.3e}")
