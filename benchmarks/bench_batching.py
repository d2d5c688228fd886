"""Issue 3 targets: the auto batch size on skewed work (n_jobs=2, threads).

Tasks sleep, so they release the GIL like I/O or nogil numeric code.  The bound
is max(sequential time / 2, longest task), with the sequential time measured
in the same run.  Prints a table; exits 1 if a target is missed.
"""

import sys
import time

import cyjob
from cyjob.bench import Report, interleaved, plain_loop, tiny_tasks

N_JOBS = 2


def nap(seconds):
    time.sleep(seconds)
    return seconds


def heavy_tail():
    return [0.020 if i % 100 == 99 else 0.0002 for i in range(2000)]


def fast_then_slow():
    return [0.00001] * 20_000 + [0.020] * 40


def measure(report, name, durations, target, rounds):
    def sequential():
        for d in durations:
            nap(d)

    def run_cyjob():
        cyjob.Parallel(n_jobs=N_JOBS)(cyjob.delayed(nap)(d) for d in durations)

    contenders = {"cyjob": run_cyjob, "sequential": sequential}
    try:
        import joblib

        contenders["joblib threading"] = lambda: joblib.Parallel(
            n_jobs=N_JOBS, backend="threading")(joblib.delayed(nap)(d) for d in durations)
    except ImportError:
        pass
    t = interleaved(contenders, rounds=rounds, warmup=0)
    # The longest task, as it really sleeps here (sleep overshoots a little).
    t0 = time.perf_counter()
    nap(max(durations))
    longest = time.perf_counter() - t0
    limit = max(t["sequential"] / N_JOBS, longest)
    report.add(f"{name}: cyjob makespan / bound", t["cyjob"] / limit, target)
    if "joblib threading" in t:
        report.add(f"{name}: joblib threading / bound", t["joblib threading"] / limit)


def main(rounds=3):
    report = Report(f"cyjob auto batching, n_jobs={N_JOBS}, threads, sleeping tasks")
    measure(report, "heavy tail (2000 x 0.2 ms, 1% 20 ms)", heavy_tail(), 1.10, rounds)
    measure(report, "fast then slow (20k x 10 us, 40 x 20 ms)", fast_then_slow(), 1.15, rounds)
    n = 200_000
    t = interleaved({"cyjob": tiny_tasks(cyjob.Parallel, cyjob.delayed, n, n_jobs=N_JOBS),
                     "loop": plain_loop(cyjob.delayed, n)}, rounds=5)
    report.add(f"{n:,} tiny tasks: cyjob / plain loop", t["cyjob"] / t["loop"], 1.5)
    report.print()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
