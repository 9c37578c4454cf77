"""``python -m entropy_ops {info,bench,demo}``."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entropy_ops")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, built modules, devices, backend per device")
    bench = sub.add_parser("bench", help="benchmark table with correctness columns")
    from .bench.cli import add_arguments
    add_arguments(bench)
    demo = sub.add_parser("demo", help="entropy collapse on a toy RL run; Clip-Cov, KL-Cov, SIREN; the law fit")
    from .demo.cli import add_arguments as add_demo_arguments
    add_demo_arguments(demo)
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import report
        print(report())
        return 0
    if args.command == "demo":
        from .demo.cli import run as run_demo
        return run_demo(args)
    from .bench.cli import run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
