"""``python -m entropy_ops bench``: arguments, then bandwidth, cases, table, CSV and summary."""
import argparse
import os
import time

import torch

from . import baselines, cases, machine, runner, summary, table, timing, tokens
from .._outputs import writable_directory, writable_file
from .._plotting import MissingMatplotlib
from .plots import write_plots
from . import linear as linear_bench

ALL_OPS = cases.OPS + tokens.OPS
ALL_OPS += linear_bench.OPS  # NxDxV shapes (--linear-shapes)
# Without --full (or --shapes/--quick) only these ops sweep the vocabulary sizes (the throughput
# plot's lines); the others run at the headline shape only, which keeps `make bench` to minutes on
# the 2-core CPU (torch.compile compiles once per case, the float64 reference is exact per case).
SWEEP_OPS = ("entropy", "logprobs_and_entropy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when a GPU is visible, else cpu")
    parser.add_argument("--quick", action="store_true",
                        help="one small case per op and direction, 3 repeats (CI smoke)")
    parser.add_argument("--ops", default=",".join(ALL_OPS),
                        help="comma list (default: all, in this order) of vocabulary-row ops (NxV shapes): "
                        + ", ".join(cases.OPS) + "; token-level ops (BxT shapes, fp32, each against the eager way "
                        "of the papers' / verl's code): " + ", ".join(tokens.OPS) + "; the fused linear op "
                        "(NxDxV shapes): " + ", ".join(linear_bench.OPS))
    parser.add_argument("--shapes",
                        help="vocabulary ops: comma list of NxV (default: the SPEC §4 shapes of the device)")
    parser.add_argument("--linear-shapes", help="linear_logprobs_and_entropy: comma list of NxDxV "
                        "(default cpu " + ",".join("x".join(map(str, s)) for s in linear_bench.DEFAULT_SHAPES["cpu"])
                        + ", cuda " + ",".join("x".join(map(str, s)) for s in linear_bench.DEFAULT_SHAPES["cuda"]) + ")")
    parser.add_argument("--token-shapes", help="token-level ops: comma list of BxT (default "
                        + "x".join(map(str, tokens.DEFAULT_SHAPE)) + ", --quick "
                        + "x".join(map(str, tokens.QUICK_SHAPE)) + ")")
    parser.add_argument("--directions", help="comma list of fwd, fwd+bwd, bwd (bwd: backward alone; "
                        "default: fwd everywhere, fwd+bwd (and on cuda bwd) of the first vocabulary op at the "
                        "first shape, and fwd+bwd of the differentiable token ops and the linear op; fwd rows "
                        "only: " + ", ".join(op for op in ALL_OPS if _directions_of(op) == ("fwd",))
                        + "; no bwd rows: the token-level and linear ops)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(cases.DTYPES),
                        help="dtype of the logits (vocabulary ops; token rows are fp32)")
    parser.add_argument("--impls", help="comma list of: " + ", ".join(baselines.known())
                        + " (default: all that apply to the device, optional baselines when installed;"
                        " one that cannot run gets a row saying why; token rows: eager and the backends"
                        " listed)")
    parser.add_argument("--repeats", type=_positive_int, help="timed runs per row, at most (default 10, "
                        "--quick 3); slow rows stop after 3 once 2 s are spent")
    parser.add_argument("--threads", type=_positive_int, help="torch.set_num_threads (default: torch's)")
    csv = parser.add_mutually_exclusive_group()
    csv.add_argument("--csv", help="append rows here (default benchmarks/results/bench_<device>.csv, under the "
                     "current directory)")
    csv.add_argument("--no-csv", action="store_true", help="print only")
    parser.add_argument("--full", action="store_true", help="every vocabulary op at every default shape "
                        "(default: " + ", ".join(SWEEP_OPS) + " at every vocabulary size, the others at the "
                        "headline shape only)")
    plots = parser.add_mutually_exclusive_group()
    plots.add_argument("--plots", metavar="DIR", help="write throughput_<device>.png and speedup_<device>.png "
                       "here (default: the CSV's directory; none with --no-csv; needs matplotlib)")
    plots.add_argument("--no-plots", action="store_true", help="no PNG plots")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _split(text, allowed, option):
    """The comma list ``text``, each item in ``allowed``, duplicates dropped (first one kept)."""
    items = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise SystemExit(f"{option}: unknown {', '.join(bad) or 'empty list'}; choose from {', '.join(allowed)}")
    return items


def _device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return choice


def _directions(args):
    return _split(args.directions, cases.DIRECTIONS, "--directions") if args.directions else None


def _directions_of(op: str):
    """The directions ``op`` has rows for."""
    if op in cases.OPS:
        return cases.directions_of(op)
    if op in tokens.OPS:
        return tokens.directions_of(op)
    return linear_bench.DIRECTIONS


def _check_directions(args, ops) -> None:
    """Exit when no op selected has a direction asked for; name the ops left without rows."""
    wanted = _directions(args)
    if not wanted:
        return
    missing = [op for op in ops if not set(_directions_of(op)) & set(wanted)]
    if not missing:
        return
    has = "; ".join(f"{op}: {', '.join(_directions_of(op))}" for op in missing)
    if len(missing) == len(ops):
        raise SystemExit(f"nothing to measure: --directions {','.join(wanted)} matches no direction of the "
                         f"ops selected ({has})")
    print(f"no rows for --directions {','.join(wanted)} of: {has}")


def _cases(args, device, ops):
    try:
        shapes = cases.parse_shapes(args.shapes) if args.shapes else None
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if shapes is None:
        shapes = [cases.QUICK_SHAPE[device]] if args.quick else cases.default_shapes(device)
    return cases.build_cases(device, cases.DTYPES[args.dtype], ops, shapes, _directions(args))


def _token_cases(args, device, ops):
    try:
        shapes = tokens.parse_shapes(args.token_shapes) if args.token_shapes else None
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if shapes is None:
        shapes = [tokens.QUICK_SHAPE if args.quick else tokens.DEFAULT_SHAPE]
    return tokens.build_cases(device, ops, shapes, _directions(args))


def _measure(todo, measure, printer, impls, repeats, bandwidth):
    print(printer.head(), flush=True)
    rows = []
    for case in todo:
        case_rows = measure(case, impls, repeats, bandwidth)
        for r in case_rows:
            print(printer.line(r), flush=True)
        rows += case_rows
    if not rows:
        print("(no row: none of --impls applies to these ops)")
    if printer.notes:
        print(printer.footnotes())
    return rows


def run(args) -> int:
    start = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    ops = _split(args.ops, ALL_OPS, "--ops")
    _check_directions(args, ops)
    todo = _cases(args, device, [op for op in ops if op in cases.OPS])
    token_todo = _token_cases(args, device, [op for op in ops if op in tokens.OPS])
    if not (args.full or args.shapes or args.quick):
        todo = _headline_or_sweep(todo)
    linear_todo = _linear_cases(args, device, [op for op in ops if op in linear_bench.OPS])
    if args.impls:
        impls = _split(args.impls, baselines.known(), "--impls")
    else:
        impls, missing = baselines.default_impls(device)
        if missing and todo:
            print(f"optional baselines not installed (rows left out): {', '.join(missing)}")
    todo, token_todo, linear_todo = _applicable(impls, todo, token_todo, linear_todo)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)

    name, date = machine.device_name(device), machine.now()
    csv_path, plot_dir = _outputs(args, name, bool(todo))
    bandwidth = timing.copy_bandwidth_gbs(device, repeats=3 if args.quick else 5)
    print(machine.header(device, name, torch.get_num_threads(), bandwidth, date))
    rows, token_rows = [], []
    if todo:
        rows = _measure(todo, runner.measure_case, table.Printer(), impls, repeats, bandwidth)
        print("\nspeed-up = eager time / this time; bytes and exps per SPEC §4 (algorithmic minimum);"
              " errors: max abs vs the float64 reference; rel grad: ||grad - ref|| / ||ref||")
    if token_todo:
        print("\ntoken-level ops, fp32 [B, T] with ~30% padding at the row ends:")
        token_rows = _measure(token_todo, tokens.measure_case, table.Printer(table.TOKEN_COLUMNS), impls,
                              repeats, bandwidth)
        print("\nspeed-up = eager time / this time; bytes: the inputs read and outputs written (fp32 4 B, bool"
              " 1 B per token); err out: max abs vs the float64 reference (peak masks: tokens that differ;"
              " losses: vs the reference on the row's own selected set)")
    linear_rows = _measure_linear(args, linear_todo, repeats)
    all_rows = rows + token_rows
    all_rows += linear_rows

    if csv_path is not None:
        meta = {"device": name, "date": date, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "bandwidth_gb_s": f"{bandwidth:.2f}"}
        meta.update(machine.versions())
        table.append_csv(csv_path, all_rows, meta)
        print(f"appended {len(all_rows)} rows to {csv_path}")

    if plot_dir is not None:
        _plots(plot_dir, rows, name, date, bandwidth)

    if rows:
        print("\nSPEC §4 targets:")
        for line in (summary.gpu_summary(rows) if device == "cuda" else summary.cpu_summary(rows)):
            print("  " + line)
    if token_rows:
        print("\ntoken-level ops (for information: SPEC §4 sets no target; the point is no host sync):")
        for line in tokens.summary_lines(token_rows):
            print("  " + line)
    if linear_rows:
        print("\nlinear_logprobs_and_entropy (SPEC §4 on GPU: fwd <= 1.1x the cuBLAS product, fwd+bwd <= 1.1x the four GEMMs):")
        for line in linear_bench.summary_lines(linear_rows):
            print("  " + line)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


def _headline_or_sweep(todo):
    """The default run: every case at the headline (first) shape; at the other shapes only the
    SWEEP_OPS cases."""
    if not todo:
        return todo
    first = todo[0].shape
    return [c for c in todo if c.shape == first or c.op in SWEEP_OPS]


def _outputs(args, name, plotted):
    """``(CSV path or None, plot directory or None)``, absolute, checked writable before any run.
    Plots need vocabulary rows; ``--no-csv`` alone writes no file."""
    csv_path = None
    if not args.no_csv:
        csv_path = writable_file("--csv", args.csv or os.path.join("benchmarks", "results",
                                                                   f"bench_{machine.slug(name)}.csv"))
    plot_dir = None
    if plotted and not args.no_plots and (args.plots or csv_path):
        plot_dir = writable_directory("--plots", args.plots or os.path.dirname(csv_path))
    return csv_path, plot_dir


def _applicable(impls, todo, token_todo, linear_todo):
    """Drop the token-level or linear cases none of ``impls`` applies to, saying so; exit when no
    case is left. (Vocabulary ops take most implementations; a table left empty says so.)"""
    token_impls = [i for i in impls if i == "eager" or i in tokens.BACKENDS]
    linear_impls = [i for i in impls if i in ("eager",) + linear_bench.BACKENDS]
    for kind, cases_, usable, takes in (
            ("token-level ops", token_todo, token_impls, ("eager",) + tokens.BACKENDS),
            ("linear_logprobs_and_entropy", linear_todo, linear_impls, ("eager",) + linear_bench.BACKENDS)):
        if cases_ and not usable:
            print(f"no rows for {kind}: --impls {','.join(impls)} has none of what they take "
                  f"({', '.join(takes)})")
    token_todo = token_todo if token_impls else []
    linear_todo = linear_todo if linear_impls else []
    if not (todo or token_todo or linear_todo):
        raise SystemExit(f"nothing to measure: --impls {','.join(impls)} applies to none of the ops selected")
    return todo, token_todo, linear_todo


def _plots(directory, rows, name, date, bandwidth):
    try:
        written = write_plots(rows, directory, machine.slug(name), f"{name}, {date[:10]}", bandwidth)
    except MissingMatplotlib as e:
        print(e)
        return
    for path in written:
        print(f"plot: {path}")


def _linear_cases(args, device, ops):
    if not ops:
        return []
    try:
        shapes = linear_bench.parse_shapes(args.linear_shapes) if args.linear_shapes else None
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if shapes is None:
        shapes = (linear_bench.QUICK_SHAPES if args.quick else linear_bench.DEFAULT_SHAPES)[device]
    return linear_bench.build_cases(device, cases.DTYPES[args.dtype], shapes, _directions(args))


def _measure_linear(args, todo, repeats):
    if not todo:
        return []
    # cuBLAS alone is SPEC's yardstick on a GPU: always measured beside the impls asked for.
    impls = (tuple(_split(args.impls, baselines.known(), "--impls")) if args.impls else
             ("eager",) + linear_bench.BACKENDS) + ("cublas",)
    print("\nlinear_logprobs_and_entropy: errors on the first 64 rows vs float64 (err grad: grad_hidden)")
    printer = table.Printer(linear_bench.COLUMNS)
    print(printer.head(), flush=True)
    rows = []
    for case in todo:
        for r in linear_bench.measure_case(case, impls, repeats):
            print(printer.line(r), flush=True)
            rows.append(r)
    if printer.notes:
        print(printer.footnotes())
    return rows
