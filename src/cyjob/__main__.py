"""``python -m cyjob``: the demo (``bench``), ``--help`` and ``--version``."""

import argparse
import sys


def main(argv=None):
    import cyjob

    parser = argparse.ArgumentParser(
        prog="python -m cyjob",
        description="cyjob: run Python tasks in parallel, fast (a drop-in for joblib's "
                    "Parallel/delayed).")
    parser.add_argument("--version", action="version", version=f"cyjob {cyjob.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench", help="show cyjob against a plain loop and joblib on this machine",
        description="Time three kinds of work as a plain loop, with cyjob and with joblib, "
                    "printing each figure as it is measured.  Exits 0 unless results "
                    "disagree or something fails; targets are checked by benchmarks/.")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, one run each")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from cyjob.demo import main as demo

        return demo(quick=args.quick)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
