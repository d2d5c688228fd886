"""Measure cyjob against its peers, fairly: contenders interleaved in one run.

Used by ``python -m cyjob bench`` and by the scripts in ``benchmarks/``.
Every figure is a ratio measured in the same run (the machine is shared and
noisy): contenders run A, B, C, A, B, C, ... and each keeps its median.
"""

import contextlib
import statistics
import sys
import time

__all__ = ["interleaved", "Report"]


def interleaved(contenders, rounds=5, warmup=1, repeat=1, between=None):
    """Run each ``name -> fn()`` in turn, ``rounds`` times (the order rotated
    every round); return the median time of each (s).

    Each fn is called ``warmup`` times first (warm pools against warm pools).
    With ``repeat``, a round times that many calls in a row and counts their
    mean: a single call of a few hundred microseconds is at the mercy of one
    timer interrupt or one preemption on a shared machine.

    ``between()``, if given, runs untimed after every timed stretch: work a
    contender left running in the background (a file being freed on a
    thread) must not land in the next contender's time.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        # Rotate the order each round: whoever runs right after another
        # contender starts on caches that one left cold.
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = contenders[name]
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn()
            times[name].append((time.perf_counter() - t0) / repeat)
            if between is not None:
                between()
    return {name: statistics.median(ts) for name, ts in times.items()}


class Report:
    """Collects measured figures and their targets; prints a table."""

    def __init__(self, title):
        self.title = title
        self.rows = []

    def add(self, name, value, target=None, unit="x", better="lower", digits=None):
        """Record a figure; ``target`` is the bound it must meet, if any;
        ``digits`` prints it with that many decimals (default: 3 significant
        digits, which shows 1.004x as "1x")."""
        ok = None
        if target is not None:
            ok = value <= target if better == "lower" else value >= target
        self.rows.append((name, value, target, unit, ok, digits))
        return ok

    @property
    def failed(self):
        return [row for row in self.rows if row[4] is False]

    def markdown(self):
        lines = [f"### {self.title}", "", "| measure | value | target | |",
                 "|---|---:|---:|---|"]
        for name, value, target, unit, ok, digits in self.rows:
            tgt = "" if target is None else f"<= {target:g}{unit}"
            mark = "" if ok is None else ("ok" if ok else "MISSED")
            shown = f"{value:.3g}" if digits is None else f"{value:.{digits}f}"
            lines.append(f"| {name} | {shown}{unit} | {tgt} | {mark} |")
        return "\n".join(lines)

    def print(self, file=None):
        print(self.markdown(), file=file or sys.stdout, flush=True)


# ---------------------------------------------------------------------------
# Workloads shared by ``python -m cyjob bench`` and benchmarks/

def inc(x):
    return x + 1


def sin_sum(a):
    import numpy as np

    return float(np.sin(a).sum())


def tiny_tasks(parallel_cls, delayed_fn, n_tasks, **kwargs):
    """n tiny tasks ``delayed(inc)(x) for x in range(n)``: overhead per task."""
    return lambda: parallel_cls(**kwargs)(delayed_fn(inc)(x) for x in range(n_tasks))


def plain_loop(delayed_fn, n_tasks):
    """The limit for GIL-bound tiny tasks: the delayed generator consumed in a
    list comprehension, in one thread."""
    return lambda: [f(*a, **k) for f, a, k in (delayed_fn(inc)(x) for x in range(n_tasks))]


def small_calls(parallel_cls, delayed_fn, n_calls, n_tasks=10, **kwargs):
    """Many calls of a few tiny tasks (a library's inner loop)."""
    def run():
        for _ in range(n_calls):
            parallel_cls(**kwargs)(delayed_fn(inc)(x) for x in range(n_tasks))
    return run


def numpy_tasks(parallel_cls, delayed_fn, arrays, **kwargs):
    return lambda: parallel_cls(**kwargs)(delayed_fn(sin_sum)(a) for a in arrays)


def numpy_sequential(arrays):
    return lambda: [sin_sum(a) for a in arrays]


def overhead_report(n_tiny=200_000, n_calls=300, n_arrays=16, array_size=1_000_000,
                    rounds=5, joblib_calls=30):
    """The foundation benchmark (issue 2): returns a Report."""
    import numpy as np

    import cyjob

    report = Report(f"cyjob overhead, n_jobs=2 ({cyjob.cpu_count()} CPUs)")
    try:
        import joblib
    except ImportError:
        joblib = None

    threads = dict(n_jobs=2, backend="threading")
    contenders = {
        "cyjob": tiny_tasks(cyjob.Parallel, cyjob.delayed, n_tiny, **threads),
        "loop": plain_loop(cyjob.delayed, n_tiny),
    }
    if joblib is not None:
        contenders["joblib"] = tiny_tasks(joblib.Parallel, joblib.delayed, n_tiny, n_jobs=2)
    t = interleaved(contenders, rounds=rounds)
    report.add(f"{n_tiny:,} tiny tasks: cyjob threads / plain loop", t["cyjob"] / t["loop"], 1.5)
    if joblib is not None:
        report.add(f"{n_tiny:,} tiny tasks: cyjob threads / joblib default (loky)",
                   t["cyjob"] / t["joblib"], 0.1)
    report.add(f"{n_tiny:,} tiny tasks: cyjob threads, ns per task", t["cyjob"] / n_tiny * 1e9,
               unit=" ns")

    contenders = {"cyjob": small_calls(cyjob.Parallel, cyjob.delayed, n_calls, **threads),
                  "cyjob default": small_calls(cyjob.Parallel, cyjob.delayed, n_calls, n_jobs=2)}
    if joblib is not None:
        contenders["joblib"] = small_calls(joblib.Parallel, joblib.delayed, joblib_calls, n_jobs=2)
    t = interleaved(contenders, rounds=rounds)
    per_call = t["cyjob"] / n_calls * 1e6
    report.add(f"{n_calls} calls x 10 tiny tasks: cyjob threads, us per call", per_call, 100,
               unit=" us")
    report.add(f"{n_calls} calls x 10 tiny tasks: cyjob default backend, us per call",
               t["cyjob default"] / n_calls * 1e6, 100, unit=" us")
    if joblib is not None:
        report.add("10 tiny tasks: joblib us per call", t["joblib"] / joblib_calls * 1e6, unit=" us")

    rng = np.random.default_rng(0)
    arrays = [rng.random(array_size) for _ in range(n_arrays)]
    contenders = {
        "cyjob": numpy_tasks(cyjob.Parallel, cyjob.delayed, arrays, **threads),
        "sequential": numpy_sequential(arrays),
    }
    if joblib is not None:
        contenders["joblib"] = numpy_tasks(joblib.Parallel, joblib.delayed, arrays, n_jobs=2)
    t = interleaved(contenders, rounds=rounds)
    report.add(f"{n_arrays} x np.sin(1M floats).sum(): cyjob threads / (sequential / 2)",
               t["cyjob"] / (t["sequential"] / 2), 1.2)
    if joblib is not None:
        report.add(f"{n_arrays} x np.sin(1M floats).sum(): joblib / (sequential / 2)",
                   t["joblib"] / (t["sequential"] / 2))
    return report


def gil_work(n=20_000):
    """Pure-Python arithmetic holding the GIL (~2 ms for the default n here)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def calibrate_gil_work(target_s=0.002):
    """The n for which gil_work(n) takes about target_s of CPU here.

    Timed on this thread's CPU clock: by the wall clock, another program
    taking the CPU during the calibration (one busy loop per core, as
    bench_routing's loaded half runs) made the tasks up to 25x shorter than
    asked, and such a workload is not the one the benchmark names."""
    n = 10_000
    while True:
        t0 = time.thread_time()
        gil_work(n)
        elapsed = time.thread_time() - t0
        if elapsed > 0.02:  # long enough for a stable figure
            return max(1, int(n * target_s / elapsed))
        n *= 2


def gil_work_many(n, k):
    """``k`` times ``gil_work(n)``: the same work as ``k`` tasks, in one."""
    return [gil_work(n) for _ in range(k)]


@contextlib.contextmanager
def process_ceiling(n, n_tasks, n_jobs=2):
    """A callable doing the work of ``n_tasks`` x ``gil_work(n)`` as
    ``n_jobs`` long tasks on a multiprocessing pool: no batching, no
    overhead to speak of, so what this machine gives GIL-bound work at best.
    A shared or SMT-sibling vCPU pair shows up as a ratio well above 1."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(n_jobs)
    share = [(n, n_tasks // n_jobs)] * n_jobs
    try:
        yield lambda: pool.starmap(gil_work_many, share, chunksize=1)
    finally:
        pool.terminate()
