"""``python -m entropy_ops bench``: arguments, then bandwidth, cases, table, CSV and summary."""
import argparse
import os
import time

import torch

from . import baselines, cases, machine, runner, summary, table, timing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when a GPU is visible, else cpu")
    parser.add_argument("--quick", action="store_true",
                        help="one small case per op and direction, 3 repeats (CI smoke)")
    parser.add_argument("--ops", default=",".join(cases.OPS), help="comma list of: " + ", ".join(cases.OPS))
    parser.add_argument("--shapes", help="comma list of NxV (default: the SPEC §4 shapes of the device)")
    parser.add_argument("--directions", help="comma list of fwd, fwd+bwd, bwd (bwd: backward alone; "
                        "default: fwd everywhere, fwd+bwd (and on cuda bwd) of the first op at the first shape)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(cases.DTYPES))
    parser.add_argument("--impls", help="comma list of: " + ", ".join(baselines.known())
                        + " (default: all that apply to the device, optional baselines when installed;"
                        " one that cannot run gets a row saying why)")
    parser.add_argument("--repeats", type=int, help="timed runs per row, at most (default 10, --quick 3); "
                        "slow rows stop after 3 once 2 s are spent")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--csv", help="append rows here (default benchmarks/results/bench_<device>.csv)")
    parser.add_argument("--no-csv", action="store_true", help="print only")


def _split(text, allowed, option):
    items = [s.strip() for s in text.split(",") if s.strip()]
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


def _cases(args, device):
    ops = _split(args.ops, cases.OPS, "--ops")
    directions = _split(args.directions, cases.DIRECTIONS, "--directions") if args.directions else None
    try:
        shapes = cases.parse_shapes(args.shapes) if args.shapes else None
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if shapes is None:
        shapes = [cases.QUICK_SHAPE[device]] if args.quick else cases.default_shapes(device)
    return cases.build_cases(device, cases.DTYPES[args.dtype], ops, shapes, directions)


def run(args) -> int:
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    if args.impls:
        impls = _split(args.impls, baselines.known(), "--impls")
    else:
        impls, missing = baselines.default_impls(device)
        if missing:
            print(f"optional baselines not installed (rows left out): {', '.join(missing)}")
    todo = _cases(args, device)
    repeats = args.repeats or (3 if args.quick else 10)

    name, date = machine.device_name(device), machine.now()
    bandwidth = timing.copy_bandwidth_gbs(device, repeats=3 if args.quick else 5)
    print(machine.header(device, name, torch.get_num_threads(), bandwidth, date))
    printer = table.Printer()
    print(printer.head(), flush=True)
    rows = []
    for case in todo:
        case_rows = runner.measure_case(case, impls, repeats, bandwidth)
        for r in case_rows:
            print(printer.line(r), flush=True)
        rows += case_rows
    if printer.notes:
        print(printer.footnotes())
    print("\nspeed-up = eager time / this time; bytes and exps per SPEC §4 (algorithmic minimum);"
          " errors: max abs vs the float64 reference")

    if not args.no_csv:
        path = args.csv or os.path.join("benchmarks", "results", f"bench_{machine.slug(name)}.csv")
        meta = {"device": name, "date": date, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "bandwidth_gb_s": f"{bandwidth:.2f}"}
        table.append_csv(path, rows, meta)
        print(f"appended {len(rows)} rows to {path}")

    print("\nSPEC §4 targets:")
    for line in (summary.gpu_summary(rows) if device == "cuda" else summary.cpu_summary(rows)):
        print("  " + line)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0
