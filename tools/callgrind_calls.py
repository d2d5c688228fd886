"""Instructions per call, counted by valgrind's callgrind (not part of CI).

    PYTHONPATH=src python tools/callgrind_calls.py [--case threads|default|tiny] [--calls 300]

Wall-clock figures on a shared machine are noise; instruction counts are
not.  The driver runs warm-up calls, then N calls, under callgrind, twice
(N = 0 and N = --calls), and prints (I(N) - I(0)) / N: the instructions of
one call, its worker threads included.  Cases:

* ``threads``: ``Parallel(n_jobs=2, backend="threading")`` on 10 tiny tasks
  (bench_overhead.py's "300 calls x 10 tiny tasks");
* ``default``: the same with the default backend (its choice is timed, so a
  loaded machine can move it: compare runs that chose the same place);
* ``tiny``: one call of 200,000 tiny tasks on threads.

Compare two trees by running it with each on PYTHONPATH.
"""

import argparse
import os
import subprocess
import sys
import tempfile


def inc(x):
    return x + 1


def _one_call(case):
    from cyjob import Parallel, delayed

    if case == "threads":
        Parallel(n_jobs=2, backend="threading")(delayed(inc)(i) for i in range(10))
    elif case == "default":
        Parallel(n_jobs=2)(delayed(inc)(i) for i in range(10))
    else:
        Parallel(n_jobs=2, backend="threading")(delayed(inc)(i) for i in range(200_000))


def _drive(case, n_calls):
    for _ in range(1 if case == "tiny" else 20):  # warm pools, caches, memo
        _one_call(case)
    for _ in range(n_calls):
        _one_call(case)


def _count(case, n_calls):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             __file__, "--drive", case, str(n_calls)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600)
        with open(out) as f:
            for line in f:
                if line.startswith(("totals:", "summary:")):
                    return int(line.split()[1])
    raise RuntimeError("no totals in callgrind's output")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=("threads", "default", "tiny"), default="threads")
    parser.add_argument("--calls", type=int, default=None,
                        help="calls measured (default: 300, 2 for tiny)")
    parser.add_argument("--drive", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        _drive(args.drive[0], int(args.drive[1]))
        return
    n = args.calls or (2 if args.case == "tiny" else 300)
    base, total = _count(args.case, 0), _count(args.case, n)
    print(f"{args.case}: {(total - base) / n:,.0f} instructions per call "
          f"({n} calls; {base:,} for start-up and warm-up)")


if __name__ == "__main__":
    main()
