"""Issue 14 targets: cyjob.Memory and cyjob.hash against joblib 1.6, measured
interleaved in one run (each round times joblib then cyjob on the same
workload; the median of the rounds is kept).

Prints a table of ratios; exits 1 if a target is missed.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import joblib
import numpy as np

import cyjob
from cyjob.bench import Report

ROUNDS = 7


def tiny(x):
    return x


def tiny_array_arg(a):
    return 1


def big_result(n):
    return np.ones(n)


def per_call(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def interleaved(jl, cy, rounds=ROUNDS):
    """Median seconds of joblib's and cyjob's thunks, alternated per round."""
    a, b = [], []
    for _ in range(rounds):
        a.append(jl())
        b.append(cy())
    return statistics.median(a), statistics.median(b)


def bench_hit_tiny(jmem, cmem):
    jf, cf = jmem.cache(tiny), cmem.cache(tiny)
    jf(1), cf(1)
    return interleaved(lambda: per_call(lambda: jf(1), 300),
                       lambda: per_call(lambda: cf(1), 3000))


def bench_miss_tiny(jmem, cmem):
    jf, cf = jmem.cache(tiny), cmem.cache(tiny)
    counter = iter(range(10 ** 9))

    def misses(f, n):
        keys = [("miss", next(counter)) for _ in range(n)]
        t0 = time.perf_counter()
        for k in keys:
            f(k)
        return (time.perf_counter() - t0) / n
    return interleaved(lambda: misses(jf, 100), lambda: misses(cf, 100))


def bench_hash(obj, number):
    return interleaved(lambda: per_call(lambda: joblib.hash(obj), number),
                       lambda: per_call(lambda: cyjob.hash(obj), number))


def bench_hit_big_arg(jmem, cmem, arr):
    jf, cf = jmem.cache(tiny_array_arg), cmem.cache(tiny_array_arg)
    jf(arr), cf(arr)
    return interleaved(lambda: per_call(lambda: jf(arr), 3),
                       lambda: per_call(lambda: cf(arr), 3), rounds=5)


def bench_hit_mmap(jdir, cdir, n):
    jf = joblib.Memory(jdir, mmap_mode="r", verbose=0).cache(big_result)
    cf = cyjob.Memory(cdir, mmap_mode="r", verbose=0).cache(big_result)
    jf(n), cf(n)
    return interleaved(lambda: per_call(lambda: jf(n), 20),
                       lambda: per_call(lambda: cf(n), 20))


_RACER = textwrap.dedent("""
    import os, sys, time
    lib, location, marks, start = sys.argv[1:5]
    if lib == "cyjob":
        import cyjob as lib_mod
    else:
        import joblib as lib_mod
    mem = lib_mod.Memory(location, verbose=0)

    def compute(key):
        open(os.path.join(marks, str(os.getpid())), "w").close()
        time.sleep(0.5)
        return key * 2

    compute = mem.cache(compute)
    while time.time() < float(start):
        time.sleep(0.001)
    assert compute(21) == 42
    print(time.time())
""")


def bench_single_flight(lib, root):
    """(computations, seconds from the common start to the last result)."""
    location = os.path.join(root, lib + "-race")
    marks = os.path.join(root, lib + "-marks")
    os.makedirs(marks)
    script = os.path.join(root, "racer.py")
    with open(script, "w") as f:
        f.write(_RACER)
    start = time.time() + 3.0  # every racer imported and waiting by then
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, script, lib, location, marks, str(start)],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    ends = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            raise RuntimeError("a racer failed")
        ends.append(float(out.strip()))
    return len(os.listdir(marks)), max(ends) - start


def main():
    report = Report("cyjob.Memory / cyjob.hash vs joblib 1.6 (medians of interleaved rounds)")
    failed = False
    with tempfile.TemporaryDirectory(prefix="cyjob-bench-memory-") as root:
        jmem = joblib.Memory(os.path.join(root, "jl"), verbose=0)
        cmem = cyjob.Memory(os.path.join(root, "cy"), verbose=0)

        j, c = bench_hit_tiny(jmem, cmem)
        print(f"hit f(1): joblib {j * 1e6:.1f} us, cyjob {c * 1e6:.1f} us")
        report.add("1. cache hit, tiny f(1) (cyjob/joblib)", c / j, 0.2)

        j, c = bench_miss_tiny(jmem, cmem)
        print(f"miss+store: joblib {j * 1e6:.0f} us, cyjob {c * 1e6:.0f} us")
        report.add("2. miss + store, tiny result", c / j, 0.33)

        arr = np.random.RandomState(0).random_sample(12_500_000)  # 100 MB
        j, c = bench_hash(arr, 3)
        print(f"hash 100 MB: joblib {j * 1e3:.1f} ms, cyjob {c * 1e3:.2f} ms")
        report.add("3. hash of a 100 MB float64 array", c / j, 0.1)

        lst = list(range(100_000))
        j, c = bench_hash(lst, 5)
        print(f"hash list(range(100_000)): joblib {j * 1e3:.1f} ms, cyjob {c * 1e3:.2f} ms")
        report.add("4. hash of list(range(100_000))", c / j, 0.05)

        j, c = bench_hit_big_arg(jmem, cmem, arr)
        print(f"hit with a 100 MB argument: joblib {j * 1e3:.1f} ms, cyjob {c * 1e3:.2f} ms")
        report.add("5. hit, 100 MB array argument", c / j, 0.1)
        del arr

        j, c = bench_hit_mmap(os.path.join(root, "jl-mm"), os.path.join(root, "cy-mm"),
                              12_500_000)
        print(f"hit returning 100 MB, mmap_mode='r': joblib {j * 1e3:.2f} ms, "
              f"cyjob {c * 1e3:.3f} ms")
        report.add("6. hit returning 100 MB, mmap_mode='r' (ms)", c * 1e3, 2.0, unit=" ms")

        n_cy, t_cy = bench_single_flight("cyjob", root)
        n_jl, t_jl = bench_single_flight("joblib", root)
        print(f"4 processes, one 0.5 s key: cyjob {n_cy} computation(s), last result "
              f"{t_cy:.3f} s; joblib {n_jl} computations, {t_jl:.3f} s")
        report.add("7a. 4 processes missing one key: computations", n_cy, 1, unit="")
        report.add("7b. ... last result / one computation (0.5 s)", t_cy / 0.5, 1.3)
    report.print()
    failed = bool(report.failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
