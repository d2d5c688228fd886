"""Issue 5 targets: the default backend (none given) on four kinds of work.

n_jobs=2, no backend: cyjob measures and picks threads, processes or inline.
Prints a table of ratios measured in this run; exits 1 if a target is missed.
"""

import sys

import numpy as np

import cyjob
from cyjob.bench import (Report, calibrate_gil_work, gil_work, interleaved, numpy_sequential,
                         numpy_tasks, plain_loop, process_ceiling, tiny_tasks)

N_JOBS = 2


def main(rounds=5):
    try:
        import joblib
    except ImportError:
        joblib = None
    report = Report(f"cyjob default backend (none given), n_jobs={N_JOBS}")

    n = 200_000
    contenders = {"cyjob": tiny_tasks(cyjob.Parallel, cyjob.delayed, n, n_jobs=N_JOBS),
                  "loop": plain_loop(cyjob.delayed, n)}
    if joblib:
        contenders["joblib"] = tiny_tasks(joblib.Parallel, joblib.delayed, n, n_jobs=N_JOBS)
    t = interleaved(contenders, rounds=rounds)
    report.add(f"{n:,} tiny tasks: cyjob / plain loop", t["cyjob"] / t["loop"], 1.5)
    if joblib:
        report.add(f"{n:,} tiny tasks: cyjob / joblib default", t["cyjob"] / t["joblib"], 0.1)

    work = calibrate_gil_work(0.002)
    contenders = {
        "cyjob": lambda: cyjob.Parallel(n_jobs=N_JOBS)(cyjob.delayed(gil_work)(work) for _ in range(240)),
        "sequential": lambda: [gil_work(work) for _ in range(240)],
    }
    if joblib:
        contenders["joblib"] = lambda: joblib.Parallel(n_jobs=N_JOBS)(
            joblib.delayed(gil_work)(work) for _ in range(240))
    with process_ceiling(work, 240, N_JOBS) as ceiling:
        contenders["ceiling"] = ceiling
        t = interleaved(contenders, rounds=rounds)
    report.add("240 GIL-bound tasks of ~2 ms: cyjob / (sequential / 2)",
               t["cyjob"] / (t["sequential"] / N_JOBS), 1.15)
    if joblib:
        report.add("240 GIL-bound tasks of ~2 ms: joblib / (sequential / 2)",
                   t["joblib"] / (t["sequential"] / N_JOBS))
    report.add("  machine ceiling: 2 long tasks on mp.Pool / (sequential / 2)",
               t["ceiling"] / (t["sequential"] / N_JOBS))

    rng = np.random.default_rng(0)
    for size, count, limits in ((1_000_000, 16, (1.2, 0.5)), (100, 64, (None, None))):
        arrays = [rng.random(size) for _ in range(count)]
        contenders = {"cyjob": numpy_tasks(cyjob.Parallel, cyjob.delayed, arrays, n_jobs=N_JOBS),
                      "sequential": numpy_sequential(arrays)}
        if joblib and limits[1] is not None:
            # Only where a target compares with it: joblib's ~10 ms call leaves
            # its worker processes busy, which a 0.3 ms contender run next feels.
            contenders["joblib"] = numpy_tasks(joblib.Parallel, joblib.delayed, arrays, n_jobs=N_JOBS)
        if size >= 1_000_000:
            t = interleaved(contenders, rounds=rounds)
        else:
            # A call of 64 x 100 floats lasts ~0.3 ms, and this machine's
            # speed wanders by 20-30% within seconds: time 20 calls in a row
            # per round, over 3x the rounds (~1 s in all).
            t = interleaved(contenders, rounds=3 * rounds, repeat=20)
        label = f"{count} x np.sin({size:,} floats).sum()"
        if size >= 1_000_000:
            report.add(f"{label}: cyjob / (sequential / 2)", t["cyjob"] / (t["sequential"] / N_JOBS), limits[0])
            if joblib:
                report.add(f"{label}: cyjob / joblib default", t["cyjob"] / t["joblib"], limits[1])
        else:
            report.add(f"{label}: cyjob / sequential", t["cyjob"] / t["sequential"], 1.3)
    report.print()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
