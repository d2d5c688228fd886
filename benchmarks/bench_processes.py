"""Issue 4 targets: the process pool against joblib's loky, n_jobs=2.

Timings are interleaved in this run with warm pools (cyjob.bench.interleaved);
peak memory and cold start are measured in fresh interpreters, alternating
cyjob and joblib.  Prints a table of ratios; exits 1 if a target is missed.

    PYTHONPATH=src python benchmarks/bench_processes.py [--rounds 5] [--quick]
"""

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np

import cyjob
from cyjob.bench import Report, interleaved, process_ceiling
from cyjob.bench import calibrate_gil_work as calibrate
from cyjob.bench import gil_work as spin  # pure Python: holds the GIL throughout

try:
    import joblib
except ImportError:  # the targets are ratios to joblib: nothing to compare
    sys.exit("bench_processes needs joblib==1.6.0 (pip install cyjob[bench])")

N_JOBS = 2
SRC = os.path.dirname(os.path.dirname(os.path.abspath(cyjob.__file__)))


def inc(x):
    return x + 1


def total(a):
    return float(a.sum())


def gil_bound(report, rounds):
    n = calibrate()
    tasks = [n] * 240

    def seq():
        return [spin(k) for k in tasks]

    def cy():
        return cyjob.Parallel(n_jobs=N_JOBS, backend="processes")(
            cyjob.delayed(spin)(k) for k in tasks)

    def jl():
        return joblib.Parallel(n_jobs=N_JOBS, backend="loky")(
            joblib.delayed(spin)(k) for k in tasks)

    with process_ceiling(n, len(tasks), N_JOBS) as ceiling:
        assert cy() == jl() == seq()
        t = interleaved({"cyjob": cy, "joblib": jl, "sequential": seq, "ceiling": ceiling},
                        rounds=rounds)
    report.add("240 x 2 ms GIL-bound: cyjob / (sequential / 2)",
               t["cyjob"] / (t["sequential"] / N_JOBS), 1.15)
    report.add("240 x 2 ms GIL-bound: cyjob / joblib loky", t["cyjob"] / t["joblib"], 1.0)
    report.add("240 x 2 ms GIL-bound: joblib / (sequential / 2)",
               t["joblib"] / (t["sequential"] / N_JOBS))
    report.add("  machine ceiling: 2 long tasks on mp.Pool / (sequential / 2)",
               t["ceiling"] / (t["sequential"] / N_JOBS))


def tiny(report, rounds, n_tasks=200_000):
    def cy():
        return cyjob.Parallel(n_jobs=N_JOBS, backend="processes")(
            cyjob.delayed(inc)(x) for x in range(n_tasks))

    def jl():
        return joblib.Parallel(n_jobs=N_JOBS, backend="loky")(
            joblib.delayed(inc)(x) for x in range(n_tasks))

    assert cy() == jl()
    t = interleaved({"cyjob": cy, "joblib": jl}, rounds=rounds)
    report.add(f"{n_tasks:,} tiny tasks: cyjob / joblib loky", t["cyjob"] / t["joblib"], 0.5)
    report.add(f"{n_tasks:,} tiny tasks: cyjob ns per task", t["cyjob"] / n_tasks * 1e9,
               unit=" ns")


def small_calls(report, rounds, n_calls=30):
    """Many calls of 10 tiny tasks (a library's inner loop): the issue asks
    for faster than joblib's ~12 ms per call."""
    def cy():
        for _ in range(n_calls):
            cyjob.Parallel(n_jobs=N_JOBS, backend="processes")(
                cyjob.delayed(inc)(x) for x in range(10))

    def jl():
        for _ in range(n_calls):
            joblib.Parallel(n_jobs=N_JOBS, backend="loky")(
                joblib.delayed(inc)(x) for x in range(10))

    t = interleaved({"cyjob": cy, "joblib": jl}, rounds=rounds)
    report.add("calls of 10 tiny tasks: cyjob / joblib loky", t["cyjob"] / t["joblib"], 1.0)
    report.add("calls of 10 tiny tasks: cyjob us per call", t["cyjob"] / n_calls * 1e6,
               unit=" us")


def big_array(report, rounds, nbytes=100 * 2**20):
    a = np.random.default_rng(0).random(nbytes // 8)

    def cy():
        return cyjob.Parallel(n_jobs=N_JOBS, backend="processes")(
            cyjob.delayed(total)(a) for _ in range(8))

    def jl():
        return joblib.Parallel(n_jobs=N_JOBS, backend="loky")(
            joblib.delayed(total)(a) for _ in range(8))

    assert np.allclose(cy(), jl())
    t = interleaved({"cyjob": cy, "joblib": jl}, rounds=rounds)
    report.add("8 tasks reading one 100 MB array: cyjob / joblib loky",
               t["cyjob"] / t["joblib"], 1.0)


# ---------------------------------------------------------------------------
# fresh interpreters

_PEAK_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    LIB = sys.argv[1]
    if LIB == "cyjob":
        from cyjob import Parallel, delayed
        backend = "processes"
    else:
        from joblib import Parallel, delayed
        backend = "loky"

    def total(a):
        return float(a.sum())

    def descendants(pid):
        children = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, ()))
        return out

    def hwm_kb(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    p = Parallel(n_jobs=2, backend=backend)
    p(delayed(total)(np.ones(10)) for _ in range(4))          # warm pool
    a = np.random.default_rng(0).random(100 * 2**20 // 8)
    procs = descendants(os.getpid())
    for pid in procs:                                         # reset VmHWM
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    for _ in range(3):
        p(delayed(total)(a) for _ in range(8))
    procs = descendants(os.getpid())
    print(sum(hwm_kb(pid) for pid in procs) / 1024)
""")

_COLD_SCRIPTS = {
    "cyjob": ("from cyjob import Parallel, delayed\n"
              "print(Parallel(n_jobs=2, backend='processes')(delayed(abs)(-i) for i in range(4)))"),
    "joblib": ("from joblib import Parallel, delayed\n"
               "print(Parallel(n_jobs=2, backend='loky')(delayed(abs)(-i) for i in range(4)))"),
}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return env


def peak_memory(report, rounds):
    env = _env()
    peaks = {"cyjob": [], "joblib": []}
    for _ in range(rounds):
        for lib in peaks:
            out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, lib], env=env,
                                 capture_output=True, text=True, check=True).stdout
            peaks[lib].append(float(out.split()[-1]))
    cy, jl = (statistics.median(peaks[k]) for k in ("cyjob", "joblib"))
    report.add("8 tasks reading one 100 MB array: peak MB, parent + workers: cyjob / joblib",
               cy / jl, 1.0)
    report.add("  peak MB cyjob", cy, unit=" MB")
    report.add("  peak MB joblib", jl, unit=" MB")


def cold_start(report, rounds):
    env = _env()
    times = {"cyjob": [], "joblib": []}
    for _ in range(rounds):
        for lib, code in _COLD_SCRIPTS.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            times[lib].append(time.perf_counter() - t0)
    cy, jl = (statistics.median(times[k]) for k in ("cyjob", "joblib"))
    report.add("cold start, import + first call of 4 tasks: cyjob / joblib", cy / jl, 1.0)
    report.add("  cold start cyjob", cy * 1e3, unit=" ms")
    report.add("  cold start joblib", jl * 1e3, unit=" ms")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    report = Report(f"cyjob processes vs joblib loky, n_jobs={N_JOBS} "
                    f"({cyjob.cpu_count()} CPUs)")
    gil_bound(report, rounds)
    tiny(report, rounds)
    small_calls(report, rounds)
    big_array(report, rounds)
    peak_memory(report, max(1, rounds // 2))
    cold_start(report, rounds + 2)
    report.print()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
