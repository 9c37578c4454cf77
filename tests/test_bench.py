"""The benchmark runner (``python -m entropy_ops bench``) on tiny shapes: every op, the eager
baselines and the CPU backends produce rows with times and small errors vs the float64 reference;
forward-only ops get no backward rows; the SPEC §4 summary lines; argument errors."""
import pytest
import torch

from entropy_ops.bench import baselines, cases, runner, summary, table
from entropy_ops.bench.table import Row


@pytest.mark.parametrize("op", cases.OPS)
def test_every_op_measures_with_small_errors(op):
    directions = ("fwd",) if op in cases.FORWARD_ONLY else ("fwd", "fwd+bwd")
    todo = cases.build_cases("cpu", torch.float32, [op], [(6, 300)], directions)
    assert [c.direction for c in todo] == list(directions)
    for case in todo:
        rows = runner.measure_case(case, ["eager", "chunked", "torch", "cpu"], repeats=1, bandwidth_gbs=10.0)
        assert [r.impl for r in rows] == ["eager", "chunked", "torch", "cpu"]
        for r in rows:
            assert r.time_ms is not None and r.time_ms > 0, (r.impl, r.note)
            errors = [e for e in (r.err_h, r.err_logp) if e is not None]
            assert errors and max(errors) < 1e-4, (r.impl, r.err_h, r.err_logp)
            if op == "token_stats":  # the six other statistics are checked too
                assert r.note.startswith("6 other stats: err ") and float(r.note.split()[-1]) < 1e-4, r.note
            if case.direction != "fwd":
                assert r.err_grad is not None and r.err_grad < 1e-4, (r.impl, r.err_grad)
                assert r.rel_grad is not None and r.rel_grad < 1e-5, (r.impl, r.rel_grad)
            else:
                assert r.rel_grad is None


def test_token_stats_rows_check_every_statistic(monkeypatch):
    """A backend whose varentropy is wrong shows it in the row's note."""
    ours = baselines._OURS["token_stats"]
    monkeypatch.setitem(baselines._OURS, "token_stats",
                        lambda x, y: (lambda out: (*out[:5], out[5] + 0.01, *out[6:]))(ours(x, y)))
    case = cases.Case("token_stats", "fwd", 6, 300, torch.float32, "cpu")
    eager, cpu = runner.measure_case(case, ["eager", "cpu"], repeats=1, bandwidth_gbs=10.0)
    assert float(eager.note.split()[-1]) < 1e-4 and float(cpu.note.split()[-1]) > 9e-3, (eager.note, cpu.note)


def test_forward_only_ops_get_no_backward_rows():
    todo = cases.build_cases("cpu", torch.bfloat16, ["token_stats", "entropy"], [(8, 64)], ("fwd", "fwd+bwd"))
    assert [(c.op, c.direction) for c in todo] == [
        ("token_stats", "fwd"), ("entropy", "fwd"), ("entropy", "fwd+bwd")]


def test_sirens_top_k_baseline_is_exact_while_the_nucleus_fits():
    """The ``topk`` baseline (SIREN's top-k + sort) runs for top_p_entropy only; it equals the
    reference while the nucleus holds fewer than TOP_K tokens, and is off when it holds more."""
    from entropy_ops import reference as R
    from entropy_ops.bench import eager

    with pytest.raises(baselines.NotApplicable):
        baselines.build("topk", cases.Case("entropy", "fwd", 4, 16, torch.float32, "cpu"))
    fn = baselines.build("topk", cases.Case("top_p_entropy", "fwd", 4, 16, torch.float32, "cpu"))
    peaked = torch.randn(3, 20000, generator=torch.Generator().manual_seed(0)) * 8
    torch.testing.assert_close(fn(peaked)[1].double(), R.top_p_entropy_ref(peaked, eager.TOP_P), rtol=1e-4, atol=1e-4)
    flat = torch.zeros(1, 20000)  # a nucleus of 16000 tokens: the shortcut keeps 10000
    assert abs(fn(flat)[1].item() - R.top_p_entropy_ref(flat, eager.TOP_P).item()) > 0.1


def test_log_prob_only_baselines_are_not_applicable_to_other_ops():
    case = cases.Case("top_p_entropy", "fwd", 4, 16, torch.float32, "cpu")
    for name in ("trl", "liger", "flash_attn"):
        with pytest.raises((baselines.NotApplicable, baselines.Skip)):
            baselines.build(name, case)


def _row(op, impl, ms, direction="fwd", shape="512x151936"):
    return Row(op, direction, shape, "bf16", impl, time_ms=ms)


def test_top_p_summary_lines():
    rows = [_row("entropy", "cpu", 10.0), _row("top_p_entropy", "cpu", 30.0), _row("top_p_entropy", "eager", 900.0),
            _row("top_p_entropy", "topk", 240.0)]
    lines = summary.top_p_lines(rows, "512x151936", ("cpu",))
    assert lines == [
        "top_p_entropy fwd 512x151936 bf16: cpu costs 3.00x its entropy: MET (3.00x <= 4x)",
        "top_p_entropy fwd 512x151936 bf16: cpu vs SIREN's top-k + sort MISSED (8.00x < 10x)",
        "top_p_entropy fwd 512x151936 bf16: cpu vs a full sort (eager): 30.0x",
    ]
    rows[1].time_ms = 50.0
    assert "MISSED (5.00x > 4x)" in summary.top_p_lines(rows, "512x151936", ("cpu",))[0]


def test_cpu_targets_judge_bf16_forward_entropy_only():
    rows = [_row("entropy", "cpu", 10.0), _row("entropy", "eager", 50.0), _row("entropy", "compile", 30.0),
            _row("entropy", "cpu", 10.0, "fwd+bwd"), _row("entropy", "eager", 200.0, "fwd+bwd"),
            _row("entropy", "compile", 25.0, "fwd+bwd"),
            _row("token_stats", "cpu", 10.0), _row("token_stats", "eager", 500.0), _row("token_stats", "compile", 8.0)]
    lines = summary.cpu_summary(rows)
    assert "entropy fwd 512x151936 bf16: cpu vs eager   MISSED (5.00x < 10x)" in lines
    assert ("entropy fwd+bwd 512x151936 bf16: cpu vs compile 2.50x (no target: SPEC sets it for bf16 forward "
            "entropy)") in lines
    judged = [l for l in lines if "MET" in l or "MISSED" in l]
    assert len(judged) == 2 and all(l.startswith("entropy fwd ") for l in judged), lines
    for r in rows:
        r.dtype = "fp32"
    assert not any("MET" in l or "MISSED" in l for l in summary.cpu_summary(rows))


def test_gpu_targets_judge_bf16_entropy_and_logprobs_only():
    rows = [Row(op, d, "8192x151936", "bf16", "cuda", time_ms=1.0, pct_bw=80.0)
            for op in ("entropy", "logprobs_and_entropy", "min_p_logprobs", "token_stats") for d in ("fwd", "bwd")]
    lines = summary.gpu_summary(rows)
    judged = [l for l in lines if "MET" in l or "MISSED" in l]
    assert sorted(l.split(":")[0] for l in judged) == [
        f"{op} {d} 8192x151936 bf16" for op in ("entropy", "logprobs_and_entropy") for d in ("bwd", "fwd")]
    assert "min_p_logprobs fwd 8192x151936 bf16: cuda % of copy bandwidth 80.00% (no target: SPEC sets it for " \
        "bf16 fwd and bwd of entropy and logprobs_and_entropy)" in lines
    for r in rows:
        r.dtype = "fp16"
    assert not any("MET" in l or "MISSED" in l for l in summary.gpu_summary(rows))


def test_relative_gradient_error_sees_what_max_abs_error_hides():
    """A bf16 gradient whose small entries are all zeroed keeps its max abs error (the rounding of
    the largest entries) but not its relative L2 error."""
    torch.manual_seed(0)
    ref = torch.softmax(torch.randn(64, 4096, dtype=torch.float64) * 3, -1) - 1 / 4096
    good = ref.bfloat16()
    broken = torch.where(good.abs() < 1e-3, torch.zeros_like(good), good)
    assert (broken == 0).double().mean() > 0.9
    assert table.max_err(broken, ref) < 2 * table.max_err(good, ref)
    assert table.rel_err(good, ref) < 2e-3 and table.rel_err(broken, ref) > 10 * table.rel_err(good, ref)
    assert table.rel_err(torch.zeros(3), torch.zeros(3, dtype=torch.float64)) == 0


def test_infinite_reference_values_are_no_error():
    inf = float("inf")
    assert table.max_err(torch.tensor([-inf, 1.0]), torch.tensor([-inf, 1.0], dtype=torch.float64)) == 0
    assert table.max_err(torch.tensor([0.0]), torch.tensor([-inf], dtype=torch.float64)) == inf


@pytest.mark.parametrize("impl", ["eager", "chunked"])
def test_fp64_baselines_compute_in_fp64(impl):
    case = cases.Case("entropy", "fwd", 4, 300, torch.float64, "cpu")
    (row,) = runner.measure_case(case, [impl], repeats=1, bandwidth_gbs=10.0)
    assert row.err_h < 1e-12, row  # an fp32 downcast gives ~1e-7
