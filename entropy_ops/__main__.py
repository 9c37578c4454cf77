"""``python -m entropy_ops {info,bench}``."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entropy_ops")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, built modules, devices, backend per device")
    bench = sub.add_parser("bench", help="benchmark table with correctness columns")
    from .bench.cli import add_arguments
    add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import report
        print(report())
        return 0
    from .bench.cli import run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
