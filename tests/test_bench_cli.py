"""``python -m entropy_ops bench`` when things go wrong: an implementation that raises becomes a row
saying why (vocabulary, token-level and linear rows alike) and the run still writes its CSV, while
Ctrl-C still stops it; argument errors are argparse's one-line messages; ``--ops`` lists every op,
drops duplicates, and a direction no op has names the directions each op has."""
import argparse
import csv
import re

import pytest
import torch

from entropy_ops.__main__ import main
from entropy_ops.bench import baselines, cases, cli, runner, tokens
from entropy_ops.bench import linear as linear_bench

FAILURE = "failed: RuntimeError: simulated kernel failure ..."


def _raise(error):
    def fn(*args, **kwargs):
        raise error
    return fn


def _error(kind):
    return KeyboardInterrupt() if kind == "interrupt" else RuntimeError("simulated kernel failure\nat line 2")


@pytest.fixture
def fixed_bandwidth(monkeypatch):
    monkeypatch.setattr(cli.timing, "copy_bandwidth_gbs", lambda *a, **k: 10.0)  # no 1 GiB copy in a test


def _break_vocab_impl(monkeypatch, name, error):
    build = baselines.build
    monkeypatch.setattr(baselines, "build", lambda impl, case: _raise(error) if impl == name else build(impl, case))


def test_failing_implementation_is_a_row_and_the_csv_is_written(monkeypatch, fixed_bandwidth, tmp_path, capsys):
    _break_vocab_impl(monkeypatch, "torch", _error("failure"))
    path = tmp_path / "bench.csv"
    rc = main(["bench", "--ops", "entropy,logprobs_and_entropy", "--shapes", "4x64", "--directions", "fwd",
               "--impls", "eager,torch,cpu", "--repeats", "1", "--csv", str(path), "--no-plots"])
    out = capsys.readouterr().out
    assert rc == 0 and "[1] " + FAILURE in out, out
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["op"], r["impl"]) for r in rows] == [
        (op, impl) for op in ("entropy", "logprobs_and_entropy") for impl in ("eager", "torch", "cpu")]
    for r in rows:
        if r["impl"] == "torch":
            assert r["note"] == FAILURE and r["time_ms"] == "", r
        else:
            assert float(r["time_ms"]) > 0 and float(r["err_h"]) < 1e-4, r


def test_failure_while_timing_keeps_the_errors_of_the_checked_call(monkeypatch):
    calls = []

    def first_call_only(logits, labels=None):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("second call")
        return None, torch.zeros(logits.shape[0], dtype=torch.float64)
    monkeypatch.setattr(baselines, "build", lambda impl, case: first_call_only)
    case = cases.Case("entropy", "fwd", 4, 64, torch.float32, "cpu")
    (row,) = runner.measure_case(case, ["torch"], repeats=1, bandwidth_gbs=10.0)
    assert row.note == "failed: ValueError: second call" and row.time_ms is None and row.err_h > 0


def _measure_token_case(monkeypatch, error):
    build = tokens._build
    monkeypatch.setattr(tokens, "_build", lambda name, case: _raise(error) if name == "torch" else build(name, case))
    return tokens.measure_case(tokens.TokenCase("window_entropy", "fwd", 4, 16, "cpu"), ["eager", "torch"],
                               repeats=1, bandwidth_gbs=10.0)


def _measure_linear_case(monkeypatch, error):
    monkeypatch.setattr(linear_bench, "_backend", lambda name: _raise(error))
    case = linear_bench.LinearCase("fwd+bwd", 4, 8, 32, torch.float32, "cpu")
    return linear_bench.measure_case(case, ["eager", "torch"], repeats=1)


def _measure_vocab_case(monkeypatch, error):
    _break_vocab_impl(monkeypatch, "torch", error)
    case = cases.Case("entropy", "fwd+bwd", 4, 64, torch.float32, "cpu")
    return runner.measure_case(case, ["eager", "torch"], repeats=1, bandwidth_gbs=10.0)


MEASURES = {"vocab": _measure_vocab_case, "token": _measure_token_case, "linear": _measure_linear_case}


@pytest.mark.parametrize("kind", list(MEASURES))
def test_failing_implementation_costs_its_own_row_only(monkeypatch, kind):
    eager, torch_row = MEASURES[kind](monkeypatch, _error("failure"))
    assert (eager.impl, torch_row.impl) == ("eager", "torch")
    assert eager.time_ms is not None and eager.time_ms > 0, eager.note
    assert torch_row.note == FAILURE and torch_row.time_ms is None


@pytest.mark.parametrize("kind", list(MEASURES))
def test_keyboard_interrupt_still_stops_the_run(monkeypatch, kind):
    with pytest.raises(KeyboardInterrupt):
        MEASURES[kind](monkeypatch, _error("interrupt"))


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["--threads", "-1"], "argument --threads: must be >= 1, got -1"),
    (["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    (["--repeats", "two"], "argument --repeats: invalid int value: 'two'"),
])
def test_counts_below_one_are_argument_errors(argv, message, capsys, fixed_bandwidth):
    tiny = ["--ops", "entropy", "--shapes", "2x8", "--impls", "torch", "--directions", "fwd", "--no-csv"]
    with pytest.raises(SystemExit) as exit_info:  # (were the count ignored, a tiny run, not the default one)
        main(["bench", *argv, *tiny])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith(message) and "Traceback" not in err, err


def test_ops_help_lists_every_op(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    ops_help = text[text.rindex("--ops OPS"):text.rindex("--shapes SHAPES")]  # the option, not the usage line
    for op in cli.ALL_OPS:
        assert op in ops_help, op
    assert linear_bench.OPS[0] in ops_help


def test_duplicate_ops_are_measured_once_in_order():
    assert cli._split("entropy, token_stats,entropy,,token_stats", cli.ALL_OPS, "--ops") == ["entropy", "token_stats"]


@pytest.mark.parametrize("ops, directions, has", [
    ("token_stats", "fwd+bwd", "(token_stats: fwd)"),
    ("linear_logprobs_and_entropy", "bwd", "(linear_logprobs_and_entropy: fwd, fwd+bwd)"),
    ("masked_quantile,window_entropy", "bwd", "(masked_quantile: fwd; window_entropy: fwd, fwd+bwd)"),
])
def test_no_matching_direction_names_what_each_op_has(ops, directions, has, fixed_bandwidth):
    args = _args("--device", "cpu", "--ops", ops, "--directions", directions, "--no-csv")
    expected = "^" + re.escape(f"nothing to measure: --directions {directions} ") + ".*" + re.escape(has) + "$"
    with pytest.raises(SystemExit, match=expected) as exit_info:
        cli.run(args)
    assert "token ops" not in str(exit_info.value)


def test_ops_without_the_direction_asked_are_named(fixed_bandwidth, capsys):
    assert cli.run(_args("--device", "cpu", "--ops", "entropy,token_stats", "--shapes", "4x64", "--directions",
                         "fwd+bwd", "--impls", "torch", "--repeats", "1", "--no-csv")) == 0
    out = capsys.readouterr().out
    assert "no rows for --directions fwd+bwd of: token_stats: fwd" in out
    assert "entropy              fwd+bwd" in out and "token_stats          fwd" not in out


def _args(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_bare_csv_name_gets_its_plots_beside_it(fixed_bandwidth, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--ops", "entropy", "--shapes", "4x64", "--directions", "fwd", "--impls", "eager,cpu",
                 "--repeats", "1", "--csv", "out.csv"]) == 0
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["out.csv", "speedup_" + _slug() + ".png", "throughput_" + _slug() + ".png"], files


def _slug():
    from entropy_ops.bench import machine
    return machine.slug(machine.device_name("cpu"))


@pytest.mark.parametrize("where, message", [("dir", "is a directory"), ("under_a_file", "is a file, not a directory"),
                                            ("deep_under_a_file", "cannot create the directory")])
def test_unwritable_csv_fails_before_any_measurement(where, message, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.timing, "copy_bandwidth_gbs", _raise(AssertionError("measured before the path check")))
    (tmp_path / "f").write_text("")
    path = {"dir": tmp_path, "under_a_file": tmp_path / "f" / "x.csv",
            "deep_under_a_file": tmp_path / "f" / "d" / "x.csv"}[where]
    with pytest.raises(SystemExit, match=f"--csv: .*{message}"):
        main(["bench", "--ops", "entropy", "--shapes", "4x64", "--impls", "cpu", "--csv", str(path)])
    with pytest.raises(SystemExit, match="--plots: .* is a file"):
        main(["bench", "--ops", "entropy", "--shapes", "4x64", "--impls", "cpu", "--no-csv",
              "--plots", str(tmp_path / "f")])


@pytest.mark.parametrize("pair", [("--csv", "x.csv", "--no-csv"), ("--plots", "d", "--no-plots")])
def test_contradictory_output_flags_are_refused(pair, capsys):
    with pytest.raises(SystemExit):
        main(["bench", *pair])
    assert "not allowed with argument" in capsys.readouterr().err


def test_impls_that_apply_to_no_selected_op_are_named(fixed_bandwidth, capsys):
    with pytest.raises(SystemExit, match="nothing to measure: --impls compile,chunked applies to none"):
        main(["bench", "--ops", "masked_quantile,linear_logprobs_and_entropy", "--token-shapes", "4x16",
              "--linear-shapes", "4x8x16", "--impls", "compile,chunked", "--no-csv"])
    out = capsys.readouterr().out
    assert "no rows for token-level ops: --impls compile,chunked has none" in out
    assert "no rows for linear_logprobs_and_entropy" in out
    assert main(["bench", "--ops", "entropy", "--shapes", "4x64", "--impls", "topk", "--no-csv"]) == 0
    assert "(no row: none of --impls applies to these ops)" in capsys.readouterr().out
