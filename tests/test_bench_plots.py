"""The benchmark's CSV metadata and plots: versions on every row, an older CSV upgraded in place,
a CSV without its final newline or with a ragged line appended to sanely, the speed-up series, the
PNGs next to the CSV, the message without matplotlib, and the default vocabulary sweep of
``python -m entropy_ops bench``."""
import csv
import sys

import pytest
import torch

from entropy_ops.__main__ import main
from entropy_ops._plotting import MissingMatplotlib
from entropy_ops.bench import cases, cli, machine, plots, table
from entropy_ops.bench.table import Row

PNG = b"\x89PNG\r\n\x1a\n"


def _row(op, impl, ms, shape="8x1000", direction="fwd", gb_s=1.0):
    return Row(op, direction, shape, "bf16", impl, time_ms=ms, gb_s=gb_s)


def test_versions_name_torch_triton_and_entropy_ops():
    v = machine.versions()
    assert v["torch"] == torch.__version__ and v["entropy_ops"] and set(v) == {"torch", "triton", "entropy_ops"}


def test_old_csv_is_upgraded_to_the_new_columns(tmp_path):
    path = tmp_path / "bench.csv"
    old_header = ["device", "date", "torch", "threads", "bandwidth_gb_s", "op", "impl", "time_ms", "legacy"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(old_header)
        w.writerow(["cpu0", "2026-01-01", "2.12", "2", "60", "entropy", "eager", "5.0", "x"])
    meta = {"device": "cpu1", "date": "2026-11-23", "threads": 2, "bandwidth_gb_s": "66", **machine.versions()}
    table.append_csv(str(path), [_row("entropy", "cpu", 0.5)], meta)
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    header = lines[0]
    assert header[:len(table.META)] == list(table.META) and header[-1] == "legacy"
    assert {len(line) for line in lines} == {len(header)}  # every line aligned with the header
    old, new = (dict(zip(header, line)) for line in lines[1:])
    assert (old["device"], old["time_ms"], old["legacy"], old["triton"]) == ("cpu0", "5.0", "x", "")
    assert (new["device"], new["entropy_ops"], new["impl"], new["time_ms"]) == ("cpu1", meta["entropy_ops"], "cpu", "0.5")
    table.append_csv(str(path), [_row("entropy", "cpu", 0.25)], meta)  # same header now: plain append
    with open(path, newline="") as f:
        assert len(list(csv.reader(f))) == 4


def _csv_names():
    return list(table.META) + list(Row.__dataclass_fields__)


def _meta():
    return {"device": "cpu1", "date": "2026-11-23", "threads": 2, "bandwidth_gb_s": "66", **machine.versions()}


def test_csv_without_a_final_newline_gets_its_own_line(tmp_path):
    path = tmp_path / "bench.csv"
    path.write_text(",".join(_csv_names()) + "\n" + ",".join(["v"] * len(_csv_names())))  # no final newline
    table.append_csv(str(path), [_row("entropy", "cpu", 0.5)], _meta())
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    assert [len(line) for line in lines] == [len(_csv_names())] * 3
    assert lines[1][0] == "v" and dict(zip(lines[0], lines[2]))["impl"] == "cpu"


@pytest.mark.parametrize("header", ["current", "older"])
def test_ragged_csv_row_does_not_stop_the_append(tmp_path, capsys, header):
    path = tmp_path / "bench.csv"
    names = _csv_names() if header == "current" else ["device", "op", "impl", "time_ms"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerow(["cpu0"] * len(names))
        w.writerow(["cpu0"] * (len(names) + 2))  # two fields too many
    table.append_csv(str(path), [_row("entropy", "cpu", 0.5)], _meta())
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    assert len(lines) == 4 and dict(zip(lines[0], lines[-1]))["impl"] == "cpu"
    if header == "older":  # rewritten under the new columns: the ragged line is cut to the header, and said so
        assert {len(line) for line in lines} == {len(lines[0])}
        assert "line(s) 3 had more fields than the header" in capsys.readouterr().err


def test_speedups_pair_backends_with_baselines_in_the_same_case():
    rows = [_row("entropy", "eager", 10.0), _row("entropy", "compile", 4.0), _row("entropy", "cpu", 0.5),
            _row("entropy", "torch", 2.0), _row("entropy", "eager", 30.0, shape="4x4000"),
            _row("entropy", "cpu", 1.0, shape="4x4000"), _row("entropy", "cpu", 0.1, direction="fwd+bwd"),
            _row("window_entropy", "cpu", 0.1, shape="8x1000")]
    assert plots.speedups(rows) == {"entropy": {"cpu vs eager": [(1000, 20.0), (4000, 30.0)],
                                                "cpu vs compile": [(1000, 8.0)]}}


def test_plots_are_written_next_to_the_csv(tmp_path):
    rows = [_row(op, impl, ms, shape=s) for op in ("entropy", "top_p_entropy") for s in ("8x1000", "4x4000")
            for impl, ms in (("eager", 10.0), ("cpu", 1.0))]
    written = plots.write_plots(rows, str(tmp_path), "dev", "dev, today", 50.0)
    assert [p.rsplit("/", 1)[1] for p in written] == ["throughput_dev.png", "speedup_dev.png"]
    for p in written:
        assert open(p, "rb").read(8) == PNG
    assert plots.write_plots([_row("window_entropy", "cpu", 1.0)], str(tmp_path), "x", "x", 1.0) == []


def test_missing_matplotlib_is_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingMatplotlib, match="pip install matplotlib"):
        plots.write_plots([_row("entropy", "cpu", 1.0)], str(tmp_path), "x", "x", 1.0)


def test_default_run_sweeps_vocabularies_for_the_plotted_ops_only():
    todo = cases.build_cases("cpu", torch.bfloat16, list(cases.OPS), cases.default_shapes("cpu"))
    kept = cli._headline_or_sweep(todo)
    headline = "x".join(map(str, cases.CPU_HEADLINE))
    assert {c.op for c in kept if c.shape == headline} == set(cases.OPS)
    assert {c.op for c in kept if c.shape != headline} == set(cli.SWEEP_OPS)
    assert {c.shape for c in kept} == {c.shape for c in todo}


def test_bench_cli_writes_versions_and_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli.timing, "copy_bandwidth_gbs", lambda *a, **k: 50.0)  # no 1 GiB copy in a test
    path = tmp_path / "out.csv"
    rc = main(["bench", "--ops", "entropy", "--shapes", "8x300,4x900", "--directions", "fwd", "--impls",
               "eager,cpu", "--repeats", "1", "--csv", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["entropy_ops"] and r["torch"] == torch.__version__ for r in rows)
    for name in ("throughput_", "speedup_"):
        png = [p for p in tmp_path.iterdir() if p.name.startswith(name)]
        assert len(png) == 1 and png[0].read_bytes()[:8] == PNG, out
    quiet = tmp_path / "quiet"
    assert main(["bench", "--ops", "entropy", "--shapes", "8x300", "--directions", "fwd", "--impls", "eager,cpu",
                 "--repeats", "1", "--csv", str(quiet / "b.csv"), "--no-plots"]) == 0
    assert sorted(p.name for p in quiet.iterdir()) == ["b.csv"]
