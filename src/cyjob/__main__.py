"""``python -m cyjob bench``: a short demo of cyjob against sequential and joblib."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cyjob")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="measure cyjob against a plain loop and joblib")
    bench.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "bench":
        from cyjob.bench import overhead_report

        report = overhead_report(rounds=args.rounds)
        report.print()
        return 1 if report.failed else 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
