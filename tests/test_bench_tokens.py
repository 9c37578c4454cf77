"""The token-level rows of ``python -m entropy_ops bench`` on tiny shapes: every op's eager way and
ours produce rows with times and small errors; the benchmark's vectorized float64 references equal
``entropy_ops.reference``'s loop versions; the CLI options (``--ops`` with token ops,
``--token-shapes``), the default op list, the CSV and the summary lines."""
import csv

import pytest
import torch

from entropy_ops import reference
from entropy_ops.bench import cases, cli, tokens
from entropy_ops.bench import linear as linear_bench
from entropy_ops.bench import token_eager as E
from entropy_ops.bench.table import Row

TINY = (16, 96)


@pytest.mark.parametrize("op", tokens.OPS)
def test_every_token_op_measures_with_small_errors(op):
    todo = tokens.build_cases("cpu", [op], [TINY])
    differentiable = op in ("window_entropy", "clip_cov_policy_loss", "kl_cov_policy_loss")
    assert [c.direction for c in todo] == (["fwd", "fwd+bwd"] if differentiable else ["fwd"])
    for case in todo:
        rows = tokens.measure_case(case, ["eager", "compile", "torch"], repeats=1, bandwidth_gbs=10.0)
        assert [r.impl for r in rows] == ["eager", "torch"]
        for r in rows:
            assert r.time_ms is not None and r.time_ms > 0, (r.impl, r.note)
            assert r.speedup is not None and r.gb_s is not None
            assert r.err_h is not None and r.err_h < 1e-5, (r.impl, r.err_h, r.note)
            if case.direction == "fwd+bwd":
                assert r.err_grad is not None and r.err_grad < 1e-6, (r.impl, r.err_grad)
            assert "INVALID" not in r.note and "differ" not in r.note, r.note


@pytest.mark.parametrize("which", ["kl", "clip"])
def test_loss_checks_flag_a_wrong_selection(which):
    """A loss that selects too few tokens (none: plain PG) is INVALID, though its loss and gradient
    equal the float64 loss of that selection; dropping one and adding another is named a difference."""
    op = {"kl": "kl_cov_policy_loss", "clip": "clip_cov_policy_loss"}[which]
    check = {"kl": tokens._check_kl, "clip": tokens._check_clip}[which]
    x = tokens.make_inputs(tokens.TokenCase(op, "fwd", 64, 1024, "cpu"))
    none = torch.zeros_like(x.mask)
    err, _, note = check(x, (tokens.loss_ref(which, x, none)[0].float(), none), None, {})
    assert err < 1e-6 and note.startswith("INVALID"), note
    if which == "kl":
        top_k = tokens.kl_top_k(x)
        assert check(x, (tokens.loss_ref("kl", x, top_k)[0].float(), top_k), None, {})[2] == "top-9 exact"
        swapped = top_k.clone().view(-1)
        swapped[top_k.view(-1).nonzero()[0]] = False
        swapped[(x.mask & ~top_k).view(-1).nonzero()[0]] = True
        swapped = swapped.view(x.mask.shape)
        note = check(x, (tokens.loss_ref("kl", x, swapped)[0].float(), swapped), None, {})[2]
        assert note == "1 of top-9 differ", note


def test_backend_without_a_kernel_is_a_row_saying_so(monkeypatch):
    monkeypatch.setattr(tokens, "_build", lambda name, case: _raise_no_kernel)
    case = tokens.TokenCase("masked_quantile", "fwd", 4, 8, "cpu")
    (row,) = tokens.measure_case(case, ["torch"], repeats=1, bandwidth_gbs=10.0)
    assert row.time_ms is None and row.note == "skipped: no kernel yet"


def _raise_no_kernel(x):
    import entropy_ops as eo
    raise eo.NoKernelError("cpu: no kernel")


def _inputs(b=6, t=40, seed=1):
    return tokens.make_inputs(tokens.TokenCase("window_entropy", "fwd", b, t, "cpu"), seed)


def test_inputs_look_like_an_rl_batch():
    x = tokens.make_inputs(tokens.TokenCase("window_entropy", "fwd", 64, 1000, "cpu"))
    assert x.mask.dtype == torch.bool and x.entropy.dtype == torch.float32
    assert 0.6 < x.mask.float().mean() < 0.8
    assert torch.equal(x.mask, x.mask.cummin(1).values)  # padding only at the row ends
    assert torch.equal(x.advantages, x.advantages[:, :1].expand_as(x.advantages))


def test_window_reference_equals_the_loop_reference():
    x = _inputs()
    mask = x.mask.clone()
    mask[0] = False
    mask[2, ::3] = False
    out, grad = tokens.window_ref(x.entropy, mask, x.upstream)
    leaf = x.entropy.double().requires_grad_(True)
    ref = reference.window_entropy_ref(leaf, mask, window=E.WINDOW, offset=E.OFFSET)
    (ref_grad,) = torch.autograd.grad(ref, leaf, x.upstream.double())
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_cov_reference_equals_the_loop_reference(seed):
    x = _inputs(seed=seed)
    keys = torch.randint(0, 2**62, x.logp.shape, generator=torch.Generator().manual_seed(seed))
    leaf = x.logp.double().requires_grad_(True)
    ref_loss, _, selected, _ = reference.clip_cov_policy_loss_ref(
        leaf, x.old_logp, x.advantages, x.mask, keys, clip_ratio=E.CLIP_RATIO, clip_cov_ratio=E.CLIP_COV_RATIO,
        clip_cov_lb=E.CLIP_COV_LB, clip_cov_ub=E.CLIP_COV_UB)
    (ref_grad,) = torch.autograd.grad(ref_loss, leaf)
    loss, grad = tokens.loss_ref("clip", x, selected)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    candidates = tokens.clip_candidates(x)
    assert not (selected & ~candidates).any()
    assert int(selected.sum()) == min(tokens._k(E.CLIP_COV_RATIO, int(x.mask.sum())), int(candidates.sum()))


def test_kl_cov_reference_equals_the_loop_reference():
    x = _inputs()
    leaf = x.logp.double().requires_grad_(True)
    ref_loss, _, selected, _ = reference.kl_cov_policy_loss_ref(
        leaf, x.old_logp, x.advantages, x.mask, kl_cov_ratio=E.KL_COV_RATIO, kl_coef=E.KL_COEF)
    (ref_grad,) = torch.autograd.grad(ref_loss, leaf)
    assert torch.equal(tokens.kl_top_k(x), selected)
    loss, grad = tokens.loss_ref("kl", x, selected)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


def test_eager_clip_cov_zeroes_k_candidates():
    x = _inputs(b=64, t=400)
    loss, selected = E.eager_clip_cov(x.logp, x.old_logp, x.advantages, x.mask, torch.Generator().manual_seed(0))
    candidates = tokens.clip_candidates(x)
    k = tokens._k(E.CLIP_COV_RATIO, int(x.mask.sum()))
    assert k > 1 and int(selected.sum()) == min(k, int(candidates.sum()))
    assert not (selected & ~candidates).any()
    torch.testing.assert_close(loss.double(), tokens.loss_ref("clip", x, selected)[0], rtol=1e-6, atol=1e-7)


def _args(*argv):
    import argparse
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_default_ops_are_the_vocabulary_then_token_then_linear_ops():
    args = _args()
    assert args.ops.split(",") == list(cases.OPS) + list(tokens.OPS) + list(linear_bench.OPS)
    assert [(c.op, c.shape) for c in cli._token_cases(args, "cpu", tokens.OPS)][:2] == [
        ("window_entropy", "512x8192"), ("window_entropy", "512x8192")]
    quick = cli._token_cases(_args("--quick"), "cpu", ["masked_quantile"])
    assert [(c.op, c.direction, c.shape) for c in quick] == [("masked_quantile", "fwd", "64x1024")]


def test_token_shapes_and_directions_options():
    args = _args("--token-shapes", "8x64,4x32", "--directions", "fwd+bwd")
    todo = cli._token_cases(args, "cpu", ["window_entropy", "peak_entropy_mask"])
    assert [(c.op, c.direction, c.shape) for c in todo] == [
        ("window_entropy", "fwd+bwd", "8x64"), ("window_entropy", "fwd+bwd", "4x32")]
    with pytest.raises(SystemExit, match="--token-shapes"):
        cli._token_cases(_args("--token-shapes", "8by64"), "cpu", ["window_entropy"])


@pytest.fixture
def fixed_bandwidth(monkeypatch):
    # The 1 GiB copy is not what these tests check.
    monkeypatch.setattr(cli.timing, "copy_bandwidth_gbs", lambda device, repeats=5: 10.0)


def test_cli_runs_token_ops_alone(fixed_bandwidth, capsys, tmp_path):
    path = tmp_path / "bench.csv"
    args = _args("--device", "cpu", "--quick", "--csv", str(path), "--repeats", "1",
                 "--ops", "window_entropy,kl_cov_policy_loss", "--token-shapes", "8x64")
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "shape (BxT)" in out and "err out" in out and "SPEC §4 targets" not in out
    assert "window_entropy fwd+bwd 8x64: torch" in out and "kl_cov_policy_loss fwd 8x64: torch" in out
    assert "syncs: nonzero" in out
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert {r["op"] for r in rows} == {"window_entropy", "kl_cov_policy_loss"}
    assert all(r["device"] and r["shape"] == "8x64" for r in rows)


def test_cli_rejects_unknown_ops_and_empty_selections(fixed_bandwidth):
    with pytest.raises(SystemExit, match="--ops: unknown window"):
        cli.run(_args("--ops", "window", "--no-csv"))
    with pytest.raises(SystemExit, match="nothing to measure"):
        cli.run(_args("--device", "cpu", "--ops", "masked_quantile", "--directions", "bwd", "--no-csv"))


def test_summary_lines_say_how_the_eager_way_syncs():
    rows = [Row("masked_quantile", "fwd", "512x8192", "fp32", "eager", time_ms=100.0),
            Row("masked_quantile", "fwd", "512x8192", "fp32", "torch", time_ms=20.0, speedup=5.0),
            Row("masked_quantile", "fwd", "512x8192", "fp32", "cpu", note="skipped: no kernel yet")]
    assert tokens.summary_lines(rows) == [
        "masked_quantile fwd 512x8192: torch 5.00x vs eager, sync-free; "
        "the eager way syncs 512 times (boolean indexing per row)"]
    assert tokens.summary_lines([]) == ["no token-level row was measured"]
