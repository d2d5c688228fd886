"""``python -m cyjob bench``: what cyjob does, shown on this machine.

Three kinds of work, each run as a plain loop, with cyjob and with joblib
(when installed), then storing an array (``dump``/``load`` against numpy's
own files) and a cache hit (``Memory`` against a plain call), with absolute
times and speed-ups in plain words, printed as they are measured.  It checks that every run returns the same results and
exits non-zero only then (or on an error): a slow figure on a busy machine
is not a failure.  Targets are checked by the scripts in ``benchmarks/``.
"""

import os
import sys
import tempfile
import time

__all__ = ["main"]


def _inc(x):
    return x + 1


def _sin_sum(a):
    import numpy as np

    return float(np.sin(a).sum())


def _python_work(n):
    """Pure-Python arithmetic: holds the GIL throughout."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _calibrate(target_s):
    """The n for which _python_work(n) takes about target_s here."""
    n = 10_000
    while True:
        t0 = time.perf_counter()
        _python_work(n)
        elapsed = time.perf_counter() - t0
        if elapsed > 0.02:
            return max(1, int(n * target_s / elapsed))
        n *= 2


def _best_of(fn, rounds):
    """(best wall time in seconds, result of the last run)."""
    best, result = float("inf"), None
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _seconds(t):
    return f"{t * 1e3:8.1f} ms" if t < 1 else f"{t:8.2f} s "


def _speed(t, loop, reference="the loop"):
    ratio = loop / t
    if ratio >= 1.05:
        return f"{ratio:.1f}x faster than {reference}"
    if ratio <= 0.95:
        return f"{1 / ratio:.1f}x slower than {reference}"
    return f"as fast as {reference}"


def _same(a, b):
    """Results compare equal (arrays element-wise)."""
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    return a == b


class _Demo:
    def __init__(self, out, rounds, n_jobs):
        self.out = out
        self.rounds = rounds
        self.n_jobs = n_jobs
        self.broken = []

    def say(self, text=""):
        print(text, file=self.out, flush=True)

    def case(self, title, why, loop, runs, reference=("plain loop", "the loop")):
        """Time ``loop`` and each of ``runs`` (name -> fn), print as it goes,
        and check they all return what the loop returns.  ``reference``: how
        the loop is named in its row and in the comparisons."""
        self.say(title)
        self.say(f"   ({why})")
        t_loop, expected = _best_of(loop, self.rounds)
        self.say(f"   {reference[0]:<15} {_seconds(t_loop)}")
        times = {}
        for name, fn in runs.items():
            t, result = _best_of(fn, self.rounds)
            times[name] = t
            ok = _same(result, expected)
            if not ok:
                self.broken.append(f"{title}: {name} returned other results than "
                                   f"{reference[1]}")
            note = _speed(t, t_loop, reference[1]) if ok else "WRONG RESULTS"
            self.say(f"   {name:<15} {_seconds(t)}   {note}")
        if "cyjob" in times and "joblib" in times:
            ratio = times["joblib"] / times["cyjob"]
            word = "faster" if ratio >= 1 else "slower"
            factor = ratio if ratio >= 1 else 1 / ratio
            self.say(f"   -> cyjob is {factor:.1f}x {word} than joblib here")
        self.say()


def run(quick=False, out=None):
    """Run the demo; return the exit status (0 unless something is broken)."""
    out = out if out is not None else sys.stdout
    import numpy as np

    import cyjob
    from cyjob import Parallel, delayed

    try:
        import joblib
    except ImportError:
        joblib = None

    n_jobs = min(cyjob.cpu_count(), 4) if cyjob.cpu_count() > 1 else 2
    rounds = 1 if quick else 3
    demo = _Demo(out, rounds, n_jobs)
    demo.say(f"cyjob {cyjob.__version__}: the same work run as a plain loop, with cyjob and "
             f"with joblib, n_jobs={n_jobs}")
    demo.say(f"on {cyjob.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
             f"times are the best of {rounds} run{'s' if rounds > 1 else ''} (lower is better).")
    if joblib is None:
        demo.say("joblib is not installed: its column is skipped (pip install joblib).")
    demo.say()

    def both(make):
        runs = {"cyjob": make(Parallel, delayed)}
        if joblib is not None:
            runs["joblib"] = make(joblib.Parallel, joblib.delayed)
        return runs

    # 1. tiny tasks: what scheduling one task costs.
    n_tiny = 2_000 if quick else 50_000
    demo.case(
        f"1. {n_tiny:,} tiny tasks, delayed(x + 1): the cost of scheduling a task",
        "no parallel speed-up is possible on tasks this small; less overhead is better",
        lambda: [_inc(x) for x in range(n_tiny)],
        both(lambda P, d: lambda: P(n_jobs=n_jobs)(d(_inc)(x) for x in range(n_tiny))))

    # 2. numpy on large arrays: releases the GIL, threads run in parallel.
    size = 100_000 if quick else 1_000_000
    n_arrays = 4 if quick else 16
    rng = np.random.default_rng(0)
    arrays = [rng.random(size) for _ in range(n_arrays)]
    demo.case(
        f"2. {n_arrays} x np.sin({size:,} floats).sum(): numpy releases the GIL",
        "cyjob keeps this on threads; joblib's default sends the arrays to processes",
        lambda: [_sin_sum(a) for a in arrays],
        both(lambda P, d: lambda: P(n_jobs=n_jobs)(d(_sin_sum)(a) for a in arrays)))

    # 3. pure Python: holds the GIL, needs processes.
    n = _calibrate(0.002 if quick else 0.01)
    n_tasks = 8 if quick else 80
    demo.case(
        f"3. {n_tasks} pure-Python tasks of ~{'2' if quick else '10'} ms: they hold the GIL",
        "cyjob measures the first tasks and moves the rest to worker processes",
        lambda: [_python_work(n) for _ in range(n_tasks)],
        both(lambda P, d: lambda: P(n_jobs=n_jobs)(d(_python_work)(n) for _ in range(n_tasks))))

    with tempfile.TemporaryDirectory(prefix="cyjob-demo-") as folder:
        _storage_cases(demo, folder, joblib, quick)

    if demo.broken:
        for problem in demo.broken:
            demo.say(f"BROKEN: {problem}")
        return 1
    demo.say("All results agree.  Targets are checked by benchmarks/ (python "
             "benchmarks/run_all.py); this demo only shows the figures.")
    return 0


def _square_plus(x):
    return x * x + 1


def _storage_cases(demo, folder, joblib, quick):
    """4. an array stored and read back; 5. a cache hit of a tiny function."""
    import numpy as np

    import cyjob

    n = 1_000_000 if quick else 12_500_000  # 8 MB or 100 MB of float64
    array = np.random.default_rng(1).random(n)
    names = iter(range(1 << 30))

    def round_trip(dump, load, suffix):
        # A new file each time, for every contender: replacing a file costs
        # what the file system charges for freeing the old one (on ext4 with
        # `discard`, as much as the write), which is not what is shown here.
        def run():
            path = os.path.join(folder, f"{next(names)}{suffix}")
            dump(array, path)
            return load(path)
        return run

    runs = {"cyjob": round_trip(cyjob.dump, cyjob.load, ".cyjob")}
    if joblib is not None:
        runs["joblib"] = round_trip(joblib.dump, joblib.load, ".joblib")
    demo.case(f"4. dump, then load, {array.nbytes / 1e6:.0f} MB of float64",
              "cyjob writes the array's memory as is, with checksums, and renames the "
              "file into place",
              round_trip(lambda a, path: np.save(path, a), np.load, ".npy"), runs,
              ("np.save+load", "numpy"))

    calls = 200 if quick else 2_000
    memories = {"cyjob": cyjob.Memory(os.path.join(folder, "cy"), verbose=0)}
    if joblib is not None:
        memories["joblib"] = joblib.Memory(os.path.join(folder, "jl"), verbose=0)
    cached = {name: memory.cache(_square_plus) for name, memory in memories.items()}
    for f in cached.values():
        f(3)  # computed and stored once; every call below is a hit

    def hits(f):
        return lambda: [f(3) for _ in range(calls)]

    demo.case(f"5. {calls:,} cache hits of a tiny function, Memory(...).cache(f)(3)",
              "each hit hashes the arguments and reads the stored result from disk",
              hits(_square_plus), {name: hits(f) for name, f in cached.items()},
              ("plain calls", "plain calls"))


def main(quick=False):
    try:
        return run(quick=quick)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a demo that crashes is broken: say so, exit 1
        import traceback

        traceback.print_exc()
        print(f"BROKEN: the demo failed with {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))
